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
from mambacontrol.registration.deformable import SyNSettings, syn_registration, uncrop

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


def measure_regional_volumes(baseline: np.ndarray, other: np.ndarray,
                             baseline_labels: np.ndarray, grid: Grid,
                             label_ids: Sequence[int], *, seed: int = 0,
                             settings: SyNSettings = MEASUREMENT) -> RegionalVolumes:
    """Volume of every baseline region in ``other``, sub-voxel, by Jacobian integration.

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
    for name, arr in (("baseline", baseline), ("other", other),
                      ("baseline_labels", baseline_labels)):
        if tuple(np.shape(arr)) != tuple(grid.shape):
            raise ValueError(f"{name} shape {np.shape(arr)} differs from the grid {grid.shape}")
    labels = np.asarray(baseline_labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"baseline_labels must be an integer label map, not {labels.dtype}")
    start = time.perf_counter()
    region = (labels > 0) | (np.asarray(baseline) != 0) | (np.asarray(other) != 0)
    with syn_registration(np.asarray(baseline), np.asarray(other), grid.affine, region, settings,
                          seed) as syn:
        jac = ants.create_jacobian_determinant_image(syn.domain, syn.transforms[0]).numpy()
    jacobian = uncrop(jac.astype(np.float32), tuple(grid.shape), syn.box, 1.0)
    voxel = float(abs(np.linalg.det(grid.affine[:3, :3])))
    ids = np.asarray([int(i) for i in label_ids])
    size = max(int(labels.max()), int(ids.max())) + 1
    flat = labels.ravel()
    base = np.bincount(flat, minlength=size)[ids] * voxel
    warped = np.bincount(flat, weights=jacobian.ravel().astype(np.float64),
                         minlength=size)[ids] * voxel
    log.info("measured %d regional volumes in %.1f s", len(ids), time.perf_counter() - start)
    return RegionalVolumes(tuple(int(i) for i in ids), base.astype(np.float64), warped, jacobian)
