"""Sub-voxel regional volumes: the Jacobian of a deformable registration integrated over regions.

A year of atrophy moves region boundaries by a fraction of a 2 mm voxel, so counting label
voxels does not see it. Instead the baseline is registered to the other image (SyN), and the
Jacobian determinant of the map (baseline points → other points), which is the local volume
ratio, is integrated over each baseline region: tensor-based morphometry. The same measurement
serves predictions and the truth, so its own error is measured too (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ants
import numpy as np

from mambacontrol.data.change import percent_change
from mambacontrol.io import Grid
from mambacontrol.registration.deformable import SyNDomain, SyNSettings, uncrop

log = logging.getLogger(__name__)

MEASUREMENT = SyNSettings(metric="mattes", iterations=(40, 20, 10))
"""SyN settings of the regional volume measurement. Mattes mutual information was as accurate as
mean squares on clean pairs, did not overshoot local changes in noisy ones, and ignores global
intensity differences between a prediction and a scan; shorter schedules lose local changes
(docs/benchmarks.md)."""


@dataclass(frozen=True, eq=False)
class RegionalVolumes:
    """Region volumes in a baseline and, measured through the Jacobian, in another image.

    Attributes:
        label_ids: the regions, in order.
        baseline_mm3: (R,) volume of each region in the baseline label map (mm³).
        other_mm3: (R,) volume of each region in the other image (mm³): the Jacobian
            determinant integrated over the baseline region.
        jacobian: (X, Y, Z) float32 Jacobian determinant of the map from the baseline to the
            other image, on the grid (1 outside the registered box).
    """

    label_ids: tuple[int, ...]
    baseline_mm3: np.ndarray
    other_mm3: np.ndarray
    jacobian: np.ndarray

    @property
    def percent_change(self) -> np.ndarray:
        """(R,) change from the baseline to the other image, in % of the baseline volume
        (NaN for a region absent from the baseline)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return percent_change(self.other_mm3, self.baseline_mm3)

    def as_dict(self) -> dict[int, tuple[float, float]]:
        """``{label: (baseline mm³, other mm³)}``."""
        return {int(i): (float(b), float(o))
                for i, b, o in zip(self.label_ids, self.baseline_mm3, self.other_mm3)}

    def groups(self, groups: Mapping[str, Iterable[int]]) -> dict[str, tuple[float, float]]:
        """``{name: (baseline mm³, other mm³)}`` summed over each group's labels (e.g.
        ``atlas.key_groups``)."""
        index = {int(i): k for k, i in enumerate(self.label_ids)}
        out: dict[str, tuple[float, float]] = {}
        for name, ids in groups.items():
            rows = [index[int(i)] for i in ids if int(i) in index]
            out[name] = (float(self.baseline_mm3[rows].sum()), float(self.other_mm3[rows].sum()))
        return out


def _check_shapes(grid: Grid, **arrays: np.ndarray) -> None:
    for name, arr in arrays.items():
        if tuple(np.shape(arr)) != tuple(grid.shape):
            raise ValueError(f"{name} shape {np.shape(arr)} differs from the grid {grid.shape}")


class BaselineMeasurement:
    """Regional volumes relative to one baseline, its side prepared once for any number of images.

    Everything that depends on the baseline alone (the checks, the crop and its ANTs image, the
    label map's regions and their volumes) is built here once; :meth:`measure` then registers
    each image (a prediction per horizon, a true follow-up) to it by SyN and integrates the
    Jacobian, the only per-image work.

    Args:
        baseline: (X, Y, Z) baseline image on ``grid`` (brain-extracted, normalised).
        baseline_labels: (X, Y, Z) integer region labels of the baseline.
        grid: the images' grid (its affine gives the voxel size and orientation).
        label_ids: the regions to report, in order.
        seed: seeds ANTs. The measurement is deterministic for a given seed on a given machine.
        settings: the SyN settings.
        region: (X, Y, Z) bool region to register (its bounding box plus a margin); default: the
            labelled or non-zero baseline voxels. Images measured later are read inside it only.
    """

    def __init__(self, baseline: np.ndarray, baseline_labels: np.ndarray, grid: Grid,
                 label_ids: Sequence[int], *, seed: int = 0,
                 settings: SyNSettings = MEASUREMENT, region: np.ndarray | None = None):
        _check_shapes(grid, baseline=baseline, baseline_labels=baseline_labels)
        labels = np.asarray(baseline_labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"baseline_labels must be an integer label map, not {labels.dtype}")
        if region is None:
            region = (labels > 0) | (np.asarray(baseline) != 0)
        self.grid, self.seed, self.settings = grid, seed, settings
        self.label_ids = tuple(int(i) for i in label_ids)
        self._domain = SyNDomain.around(np.asarray(baseline), grid.affine, region)
        self._voxel = float(abs(np.linalg.det(grid.affine[:3, :3])))
        self._ids = np.asarray(self.label_ids)
        self._size = max(int(labels.max()), int(self._ids.max())) + 1
        self._flat = labels.ravel()
        base = np.bincount(self._flat, minlength=self._size)[self._ids] * self._voxel
        self.baseline_mm3 = base.astype(np.float64)

    def measure(self, other: np.ndarray) -> RegionalVolumes:
        """Volume of every baseline region in ``other``, sub-voxel, by Jacobian integration.

        Args:
            other: (X, Y, Z) the image to measure (a prediction or a true follow-up), on the grid
                and normalised as the baseline.

        Returns:
            Baseline and other volumes per region, and the Jacobian map.
        """
        _check_shapes(self.grid, other=other)
        start = time.perf_counter()
        with self._domain.register(other, self.settings, self.seed) as syn:
            jac = ants.create_jacobian_determinant_image(syn.domain, syn.transforms[0]).numpy()
        jacobian = uncrop(jac.astype(np.float32), tuple(self.grid.shape), syn.box, 1.0)
        warped = np.bincount(self._flat, weights=jacobian.ravel().astype(np.float64),
                             minlength=self._size)[self._ids] * self._voxel
        log.info("measured %d regional volumes in %.1f s", len(self._ids),
                 time.perf_counter() - start)
        return RegionalVolumes(self.label_ids, self.baseline_mm3.copy(), warped, jacobian)


def measure_regional_volumes(baseline: np.ndarray, other: np.ndarray,
                             baseline_labels: np.ndarray, grid: Grid,
                             label_ids: Sequence[int], *, seed: int = 0,
                             settings: SyNSettings = MEASUREMENT) -> RegionalVolumes:
    """Volume of every baseline region in ``other``, sub-voxel, by Jacobian integration.

    One image against one baseline; to measure several against the same baseline (horizons),
    build a :class:`BaselineMeasurement` once. The registered box covers the baseline's and
    ``other``'s non-zero voxels.

    Args:
        baseline: (X, Y, Z) baseline image on ``grid`` (brain-extracted, normalised).
        other: (X, Y, Z) the image to measure (a prediction or a true follow-up), same grid and
            same normalisation.
        baseline_labels: (X, Y, Z) integer region labels of the baseline.
        grid: the images' grid (its affine gives the voxel size and orientation).
        label_ids: the regions to report, in order.
        seed: seeds ANTs. The measurement is deterministic for a given seed on a given machine.
        settings: the SyN settings.

    Returns:
        Baseline and other volumes per region, and the Jacobian map.
    """
    _check_shapes(grid, baseline=baseline, other=other, baseline_labels=baseline_labels)
    region = (np.asarray(baseline_labels) > 0) | (np.asarray(baseline) != 0) \
        | (np.asarray(other) != 0)
    measurer = BaselineMeasurement(baseline, baseline_labels, grid, label_ids, seed=seed,
                                   settings=settings, region=region)
    return measurer.measure(other)
