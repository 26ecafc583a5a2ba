"""Voxel grids, reorientation to RAS and resampling between grids (nibabel.processing)."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from mambacontrol.io.nifti import Volume


@dataclass(eq=False, frozen=True)
class Grid:
    """A voxel grid: shape and voxel-to-world affine (RAS mm).

    Attributes:
        shape: (X, Y, Z).
        affine: (4, 4).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(volume.shape, np.asarray(volume.affine, dtype=np.float64))

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        return cls(tuple(int(s) for s in d["shape"]), np.asarray(d["affine"], dtype=np.float64))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "affine": np.asarray(self.affine).tolist(),
                "spacing_mm": list(self.spacing)}

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    def same_as(self, other: Grid, atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and (within ``atol`` mm) the same affine."""
        return tuple(self.shape) == tuple(other.shape) and bool(
            np.allclose(self.affine, other.affine, atol=atol))


def to_ras(volume: Volume) -> Volume:
    """Reorient to the closest canonical (RAS+) voxel order; data are permuted/flipped, not
    resampled."""
    img = nib.as_closest_canonical(nib.Nifti1Image(volume.data, volume.affine))
    return Volume(np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64), volume.path)


def resample(volume: Volume, grid: Grid, order: int = 1, cval: float = 0.0) -> Volume:
    """Resample a volume onto ``grid`` through world coordinates.

    Args:
        volume: source (X, Y, Z) volume with its affine.
        grid: target shape and affine.
        order: spline order: 0 nearest (labels), 1 linear (images), 3 cubic.
        cval: value outside the source field of view.

    Returns:
        A volume with exactly ``grid.shape`` and ``grid.affine``.
    """
    data = volume.data
    src_dtype = data.dtype
    src = nib.Nifti1Image(data.astype(np.float32, copy=False), volume.affine)
    out = resample_from_to(src, (tuple(grid.shape), grid.affine), order=order, mode="constant",
                           cval=cval)
    res = np.asarray(out.dataobj)
    if order == 0 and np.issubdtype(src_dtype, np.integer):
        res = np.rint(res).astype(src_dtype)
    return Volume(res, np.asarray(grid.affine, dtype=np.float64).copy(), None)
