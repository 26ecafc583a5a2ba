"""Load, validate and save NIfTI volumes with nibabel, keeping their affines."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from mambacontrol.errors import InputFileError
from mambacontrol.io.atomic import atomic_path
from mambacontrol.io.limits import check_limit

MIN_VOXEL_MM = 0.1
MAX_VOXEL_MM = 10.0


@dataclass(eq=False)
class Volume:
    """A 3D volume and its voxel-to-world (RAS mm) affine.

    Attributes:
        data: (X, Y, Z) array.
        affine: (4, 4) voxel-to-world matrix.
        path: the file it came from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def with_data(self, data: np.ndarray) -> Volume:
        """Same space, new data."""
        if data.shape != self.data.shape:
            raise ValueError(f"new data shape {data.shape} differs from {self.data.shape}")
        return Volume(data, self.affine.copy(), None)


def _fail(path: Path, problem: str, fix: str) -> InputFileError:
    return InputFileError(f"{path}: {problem}; {fix}")


def _open_image(path: Path):
    """The nibabel image of ``path``, its header checked; no voxel data is read yet."""
    if not path.exists():
        raise _fail(path, "file not found", "check the path")
    if path.is_dir():
        raise _fail(path, "is a folder, not a NIfTI file", "give a .nii or .nii.gz file")
    if path.stat().st_size == 0:
        raise _fail(path, "empty file (0 bytes)", "re-export or re-copy the scan")
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError as exc:
        raise _fail(path, f"not a NIfTI file ({exc})", "give a .nii or .nii.gz file") from None
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated file ({exc})",
                    "re-export or re-copy the scan") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _fail(path, f"is a {type(img).__name__}, not a NIfTI image", "convert it to NIfTI")
    shape = tuple(int(s) for s in img.shape)
    check_limit("max_voxels", float(np.prod(shape, dtype=np.float64)),
                f"{path}: header declares {'×'.join(map(str, shape))} voxels")
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = "an RGB (colour) image" if dtype.fields is not None else f"of data type {dtype}"
        raise _fail(path, f"is {kind}, not a greyscale scan", "give a single-channel T1 scan")
    _as_3d(path, shape)
    return img


def inspect_nifti(path: str | os.PathLike, *, labels: bool = False) -> tuple[int, int, int]:
    """Check a NIfTI file's header without reading its voxels (cheap: run it before long work).

    Returns:
        The 3D shape.

    Raises:
        InputFileError: as :func:`load_nifti` for everything a header shows (missing, empty,
            non-NIfTI, corrupt header, non-3D, colour or complex data, implausible voxel size,
            singular affine); ResourceLimitError: a declared size over the ``max_voxels`` limit.
    """
    p = Path(path)
    img = _open_image(p)
    _check_geometry(p, _as_3d(p, tuple(int(s) for s in img.shape)),
                    tuple(float(z) for z in img.header.get_zooms()[:3]),
                    np.asarray(img.affine, dtype=np.float64))
    return tuple(int(s) for s in img.shape[:3])  # type: ignore[return-value]


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    img = _open_image(path)
    try:
        data = np.asarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise _fail(path, f"corrupt or truncated file ({exc})",
                    "re-export or re-copy the scan") from None
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, np.asarray(img.affine, dtype=np.float64), zooms


def _check_geometry(path: Path, shape: tuple[int, ...], zooms: tuple[float, ...],
                    affine: np.ndarray) -> None:
    if min(shape) < 2:
        raise _fail(path, f"has a degenerate shape {shape}", "give a 3D scan")
    if not all(MIN_VOXEL_MM <= z <= MAX_VOXEL_MM for z in zooms):
        raise _fail(path, f"implausible voxel size {'×'.join(f'{z:g}' for z in zooms)} mm",
                    f"voxel sizes must lie in [{MIN_VOXEL_MM}, {MAX_VOXEL_MM}] mm: check pixdim "
                    "and units")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise _fail(path, "has a singular or non-finite affine", "fix the header's qform/sform")


def _as_3d(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape of an image of ``shape`` (trailing singleton axes dropped), or an error."""
    ndim = len(shape)
    if ndim in (4, 5) and all(s == 1 for s in shape[3:]):
        return shape[:3]  # type: ignore[return-value]
    if ndim > 3:
        raise _fail(path, f"is {ndim}D with shape {shape}, not a 3D volume",
                    "extract one 3D volume first")
    if ndim < 3:
        raise _fail(path, f"is {ndim}D with shape {shape}, not a 3D volume", "give a 3D scan")
    return shape  # type: ignore[return-value]


def load_nifti(path: str | os.PathLike, *, labels: bool = False) -> Volume:
    """Load and validate a 3D NIfTI volume.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        labels: validate as an integer label map (returns int32 data) instead of an image
            (returns float32 data that must not be constant).

    The header is checked before any voxel is read (:func:`inspect_nifti`), so a header that
    declares more voxels than the ``max_voxels`` limit is refused without decompressing anything,
    and nibabel then reads only the bytes the header declares (a compressed file's trailing data,
    however large, is never decompressed).

    Raises:
        InputFileError: one line naming the file, the problem and the fix, for a missing, empty,
            non-NIfTI, corrupt or truncated file, a non-3D volume, colour or complex data,
            non-finite values, an all-constant image, non-integer labels, or an implausible voxel
            size. ResourceLimitError: a declared size over the ``max_voxels`` limit.
    """
    p = Path(path)
    raw, affine, zooms = _read_image(p)
    data = raw.reshape(_as_3d(p, raw.shape))
    _check_geometry(p, data.shape, zooms, affine)
    data = data.astype(np.float64 if labels else np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        n = int((~finite).sum())
        raise _fail(p, f"contains {n} non-finite values (NaN or inf)", "replace them before use")
    if labels:
        if not np.all(data == np.round(data)):
            raise _fail(p, "is not a label map (non-integer values)",
                        "give an integer segmentation (atlas label ids)")
        return Volume(data.astype(np.int32), affine, p)
    if data.min() == data.max():
        raise _fail(p, f"is constant (every voxel is {data.min():g})", "give a real scan")
    return Volume(data, affine, p)


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *,
               dtype: np.dtype | type = np.float32,
               inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a volume atomically (temporary file + rename); never onto one of ``inputs``.

    Args:
        path: destination ``.nii`` or ``.nii.gz``.
        data: (X, Y, Z) array.
        affine: (4, 4) voxel-to-world matrix; written to both qform and sform.
        dtype: on-disk data type.
        inputs: files this output must not overwrite.
    """
    img = nib.Nifti1Image(np.asarray(data).astype(dtype, copy=False),
                          np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, inputs) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
