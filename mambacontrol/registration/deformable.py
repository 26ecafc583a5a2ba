"""Deformable (SyN) registration of two images on the same grid, cropped to the brain for speed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import ants
import numpy as np

from mambacontrol.registration._ants import registration_scope, to_ants

CROP_MARGIN_VOXELS = 4


@dataclass(frozen=True)
class SyNSettings:
    """Settings of ANTs' symmetric normalisation (SyN) without a linear stage.

    Attributes:
        metric: ANTs similarity metric (``meansquares``, ``mattes``, ``CC``).
        iterations: iterations per level, coarse to fine; level k is shrunk by 2^(levels−1−k)
            and smoothed by (levels−1−k) voxels.
        grad_step: gradient step.
        flow_sigma: variance (voxels²) of the Gaussian smoothing of each update field, the
            fluid-like regularisation (ANTs' ``updateFieldVarianceInVoxelSpace``).
        total_sigma: variance (voxels²) of the smoothing of the total field, the elastic-like
            regularisation.
    """

    metric: str
    iterations: tuple[int, ...]
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0

    def __post_init__(self):
        if self.metric not in ("meansquares", "mattes", "CC"):
            raise ValueError(f"metric '{self.metric}' is not one of meansquares, mattes, CC")
        if not self.iterations or min(self.iterations) < 0:
            raise ValueError(
                f"iterations {self.iterations} must be a non-empty list of counts >= 0")

    def ants_kwargs(self) -> dict:
        sampling = {"meansquares": 0, "mattes": 32, "CC": 2}[self.metric]
        return {"syn_metric": self.metric, "syn_sampling": sampling,
                "reg_iterations": tuple(self.iterations), "grad_step": self.grad_step,
                "flow_sigma": self.flow_sigma, "total_sigma": self.total_sigma}


def crop_box(region: np.ndarray, margin: int = CROP_MARGIN_VOXELS) -> tuple[slice, slice, slice]:
    """The bounding box of ``region`` grown by ``margin`` voxels, clipped to the array.

    Raises:
        ValueError: when ``region`` is empty.
    """
    idx = np.argwhere(region)
    if idx.size == 0:
        raise ValueError("region is empty: nothing to register")
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, region.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def cropped_affine(affine: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """The voxel-to-world affine of ``array[box]``."""
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    return np.asarray(affine, dtype=np.float64) @ shift


class SyNResult(NamedTuple):
    """A SyN registration's outputs, valid inside its ``with`` block.

    Attributes:
        domain: the cropped fixed image, the domain of the transforms.
        transforms: ANTs' forward transform files (fixed points → moving points), as
            ``ants.apply_transforms`` and ``ants.create_jacobian_determinant_image`` expect.
        box: the crop, as slices of the full grid.
    """

    domain: ants.ANTsImage
    transforms: list[str]
    box: tuple[slice, slice, slice]


@dataclass(frozen=True, eq=False)
class SyNDomain:
    """The fixed side of SyN registrations, cropped once and reused for every moving image.

    Attributes:
        fixed: the fixed image cropped to ``box`` (an ANTs image).
        box: the crop, as slices of the full grid.
        shape: (X, Y, Z) shape of the full grid.
    """

    fixed: ants.ANTsImage
    box: tuple[slice, slice, slice]
    shape: tuple[int, int, int]

    @classmethod
    def around(cls, fixed: np.ndarray, affine: np.ndarray, region: np.ndarray) -> SyNDomain:
        """The domain of ``fixed`` (X, Y, Z) on a grid with RAS ``affine`` (4, 4): the bounding box
        of ``region`` (X, Y, Z bool) plus a margin of ``CROP_MARGIN_VOXELS``."""
        box = crop_box(region)
        return cls(to_ants(np.asarray(fixed)[box], cropped_affine(affine, box)), box,
                   tuple(int(s) for s in np.shape(fixed)))  # type: ignore[arg-type]

    @contextlib.contextmanager
    def register(self, moving: np.ndarray, settings: SyNSettings,
                 seed: int) -> Iterator[SyNResult]:
        """Register ``moving`` (X, Y, Z, on the full grid) to the fixed image by SyN inside the box.

        Yields:
            The transforms and their domain; the transform files exist inside the ``with`` block.
        """
        if tuple(np.shape(moving)) != self.shape:
            raise ValueError(f"moving shape {np.shape(moving)} differs from the grid {self.shape}")
        moving_img = self.fixed.new_image_like(
            np.ascontiguousarray(np.asarray(moving)[self.box], dtype=np.float32))
        with registration_scope(seed) as tmp:
            result = ants.registration(self.fixed, moving_img, "SyNOnly",
                                       outprefix=str(tmp / "syn_"), **settings.ants_kwargs())
            yield SyNResult(self.fixed, list(result["fwdtransforms"]), self.box)


@contextlib.contextmanager
def syn_registration(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray,
                     region: np.ndarray, settings: SyNSettings,
                     seed: int) -> Iterator[SyNResult]:
    """Register ``moving`` to ``fixed`` (same grid) by SyN inside the bounding box of ``region``.

    Args:
        fixed, moving: (X, Y, Z) images on one grid.
        affine: (4, 4) voxel-to-world matrix of that grid (RAS).
        region: (X, Y, Z) bool; the registration runs on its bounding box plus a margin.
        settings: the SyN settings.
        seed: seeds ANTs (see ``registration_scope``).

    Yields:
        The transforms and their domain; the transform files exist inside the ``with`` block only.
    """
    with SyNDomain.around(fixed, affine, region).register(moving, settings, seed) as syn:
        yield syn


def uncrop(values: np.ndarray, shape: tuple[int, ...], box: tuple[slice, slice, slice],
           fill: float) -> np.ndarray:
    """Place an array computed on ``box`` back into a full array of ``shape`` filled with
    ``fill``."""
    out = np.full(shape, fill, dtype=values.dtype)
    out[box] = values
    return out
