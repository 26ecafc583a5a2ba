"""Affine alignment of a native scan to the atlas template, brain extraction, and the way back.

A scan in any orientation, voxel size and field of view, skull on or off, is reoriented to RAS,
registered to the atlas template (rigid, then affine; ANTs, centre-of-mass initialisation,
global-correlation metric restricted to a dilated template brain mask), resampled onto the atlas
grid (anti-aliased when the scan is finer), brain-extracted with the atlas mask and
intensity-normalised as in training. The similarity of the result to the template decides
whether the registration is trusted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ants
import numpy as np
from scipy import ndimage

from mambacontrol.atlas import Atlas
from mambacontrol.data.intensity import intensity_range, normalize_intensity
from mambacontrol.errors import RegistrationError
from mambacontrol.io import Grid, Volume, to_ras
from mambacontrol.registration._ants import (
    registration_scope,
    resample_with_matrix,
    to_ants,
    transform_to_ras_matrix,
)

log = logging.getLogger(__name__)

MIN_SIMILARITY = 0.65
"""Default threshold on :func:`template_similarity`; below it a registration is refused
(calibration: ``benchmarks/bench_registration.py calibrate``, figures in docs/benchmarks.md)."""
SIMILARITY_SMOOTHING_MM = 2.0
"""Gaussian σ (mm) applied to the image and the template before they are correlated."""

LEVELS_MM = (8.0, 4.0, 2.0)
"""Voxel size (mm) of each multi-resolution level of the affine registration, coarse to fine."""


@dataclass(frozen=True)
class AlignmentSettings:
    """Schedule of the rigid-then-affine registration of a scan to the atlas template.

    Attributes:
        rigid_iterations: iterations of the rigid stage at each level of ``LEVELS_MM``.
        affine_iterations: iterations of the affine stage at each level of ``LEVELS_MM``.
        sampling_rate: fraction of the template's voxels (regular grid, randomly perturbed, seeded)
            that the metric samples.
    """

    rigid_iterations: tuple[int, int, int] = (100, 50, 0)
    affine_iterations: tuple[int, int, int] = (100, 50, 10)
    sampling_rate: float = 0.1

    def __post_init__(self):
        for name in ("rigid_iterations", "affine_iterations"):
            its = getattr(self, name)
            if len(its) != len(LEVELS_MM) or min(its) < 0:
                raise ValueError(f"{name} {its} must be {len(LEVELS_MM)} counts >= 0, one per "
                                 f"level of {LEVELS_MM} mm")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate {self.sampling_rate} must be in (0, 1]")

    def ants_kwargs(self, spacing: float, stage: str) -> dict:
        """``ants.registration`` keyword arguments of the ``rigid`` or ``affine`` stage on a grid
        of ``spacing`` mm."""
        its = self.rigid_iterations if stage == "rigid" else self.affine_iterations
        shrink, sigmas, its = _shrink_schedule(spacing, its)
        return {"aff_metric": "GC", "aff_random_sampling_rate": self.sampling_rate,
                "aff_iterations": its, "aff_shrink_factors": shrink,
                "aff_smoothing_sigmas": sigmas}


ALIGNMENT = AlignmentSettings()
"""Settings of :func:`align_to_atlas`: a quarter of the CPU time of the earlier 500/250/0,
500/250/50 at a 0.25 sampling rate, for the same affine error (docs/benchmarks.md)."""
METRIC_MASK_DILATION_MM = 6.0
"""The template brain mask is dilated by this much to form the metric mask: the brain and its
border count, a skull or neck far from the brain does not."""


def _shrink_schedule(spacing: float, iterations: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(shrink factors, smoothing sigmas in voxels, iterations) for the levels of ``LEVELS_MM``
    on a grid of ``spacing`` mm; levels that collapse onto the same shrink factor are merged."""
    shrink: list[int] = []
    its: list[int] = []
    for level, n in zip(LEVELS_MM, iterations):
        f = max(1, int(round(level / spacing)))
        if shrink and shrink[-1] == f:
            its[-1] = max(its[-1], n)
            continue
        shrink.append(f)
        its.append(n)
    sigmas = [f // 2 for f in shrink]
    return tuple(shrink), tuple(sigmas), tuple(its)


def antialias(volume: Volume, spacing: float) -> np.ndarray:
    """Smooth a volume before it is sampled on a coarser grid of ``spacing`` mm.

    The Gaussian has the variance that turns a box average over the volume's voxel into a box
    average over the coarser voxel, ``(spacing² − voxel²) / 12`` per axis (the atlas itself was
    built by box averaging). Axes already as coarse as ``spacing`` are left alone.

    Returns:
        (X, Y, Z) float32 array.
    """
    voxel = np.asarray(volume.spacing)
    sigma_mm = np.sqrt(np.maximum(spacing**2 - voxel**2, 0.0) / 12.0)
    data = np.asarray(volume.data, dtype=np.float32)
    if not np.any(sigma_mm > 0):
        return data.copy()
    return ndimage.gaussian_filter(data, sigma_mm / voxel, mode="nearest")


def template_similarity(image: np.ndarray, atlas: Atlas) -> float:
    """Pearson correlation of an image on the atlas grid with the template, inside the brain mask,
    both smoothed by a Gaussian of ``SIMILARITY_SMOOTHING_MM``.

    The smoothing makes the score tolerate the anatomical differences between people that an
    affine registration leaves, more than it helps images that are not brains (calibration in
    docs/benchmarks.md): about 0.98 for the template as a scan, 0.73–0.92 for subjects warped by
    9–3 mm, at most 0.55 for noise, blobs, cubes, inverted contrast or a slab of brain.

    Args:
        image: (X, Y, Z) on ``atlas.grid``.
    """
    if tuple(image.shape) != tuple(atlas.grid.shape):
        raise ValueError(
            f"image shape {image.shape} differs from the atlas grid {atlas.grid.shape}")
    sigma = SIMILARITY_SMOOTHING_MM / atlas.spacing
    a = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma)[atlas.mask]
    b = ndimage.gaussian_filter(np.asarray(atlas.template, dtype=np.float32), sigma)[atlas.mask]
    if a.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True, eq=False)
class AtlasTransform:
    """The affine map between a scan's space and the atlas grid, both ways.

    Attributes:
        atlas_to_scan: (4, 4) map of world points (RAS mm) from atlas space to the scan's space;
            it pulls the scan onto the atlas grid.
        atlas_grid: the atlas grid.
        native_grid: the scan's grid, in its own voxel order (not reoriented).
    """

    atlas_to_scan: np.ndarray
    atlas_grid: Grid
    native_grid: Grid

    @property
    def scan_to_atlas(self) -> np.ndarray:
        """(4, 4) map of world points (RAS mm) from the scan's space to atlas space."""
        return np.linalg.inv(self.atlas_to_scan)

    @property
    def volume_scale(self) -> float:
        """Native mm³ per atlas mm³: multiply volumes measured on the atlas grid by this to
        report them in the scan's own space (the affine registration scales heads to the
        template)."""
        return float(abs(np.linalg.det(self.atlas_to_scan[:3, :3])))

    def to_native(self, array: np.ndarray, order: int = 1) -> Volume:
        """Map an array on the atlas grid back to the scan's grid.

        Args:
            array: (X, Y, Z) on the atlas grid (a prediction, an uncertainty map, labels).
            order: 0 nearest neighbour (labels; integer dtypes are kept), 1 linear, 3 B-spline.

        Returns:
            A volume with exactly the scan's shape and affine (its own orientation); zero where
            the atlas grid does not reach.
        """
        data = np.asarray(array)
        if tuple(data.shape) != tuple(self.atlas_grid.shape):
            raise ValueError(f"array shape {data.shape} differs from the atlas grid "
                             f"{self.atlas_grid.shape}")
        reference = to_ants(np.zeros(self.native_grid.shape, np.float32), self.native_grid.affine)
        out = resample_with_matrix(to_ants(data, self.atlas_grid.affine), reference,
                                   self.scan_to_atlas, order)
        return Volume(_like(out, data.dtype, order), self.native_grid.affine.copy())

    def to_atlas(self, volume: Volume, order: int = 1) -> np.ndarray:
        """Map a volume in the scan's space (any grid, e.g. a segmentation) onto the atlas grid.

        Args:
            volume: (X, Y, Z) volume whose affine places it in the scan's world space.
            order: 0 nearest neighbour (labels; integer dtypes are kept), 1 linear (anti-aliased
                when the volume is finer than the atlas grid), 3 B-spline.

        Returns:
            (X, Y, Z) array on the atlas grid.
        """
        data = volume.data if order == 0 else antialias(volume, min(self.atlas_grid.spacing))
        reference = to_ants(np.zeros(self.atlas_grid.shape, np.float32), self.atlas_grid.affine)
        out = resample_with_matrix(to_ants(data, volume.affine), reference, self.atlas_to_scan,
                                   order)
        return _like(out, volume.data.dtype, order)

    def to_dict(self) -> dict:
        """JSON-able form (``from_dict`` inverts it)."""
        return {"atlas_to_scan": np.asarray(self.atlas_to_scan).tolist(),
                "atlas_grid": self.atlas_grid.to_dict(), "native_grid": self.native_grid.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> AtlasTransform:
        return cls(np.asarray(d["atlas_to_scan"], dtype=np.float64),
                   Grid.from_dict(d["atlas_grid"]), Grid.from_dict(d["native_grid"]))


@dataclass(frozen=True, eq=False)
class AtlasAlignment:
    """A scan aligned to the atlas: its image on the atlas grid and the transform.

    Attributes:
        image: (X, Y, Z) float32 on the atlas grid, brain-extracted and intensity-normalised
            (``normalize_intensity``), as the models expect.
        mask: (X, Y, Z) bool brain mask on the atlas grid (the atlas mask, or the user's own
            brain mask carried onto the grid).
        similarity: :func:`template_similarity` of ``image``.
        bias_field: (X, Y, Z) float32 N4 bias field on the atlas grid (the resampled scan divided
            by it is the corrected scan), or None without bias correction.
        intensity_range: the corrected intensities mapped to 0 and 1 (``intensity_range``), so a
            change of normalised intensity ``d`` is ``d · (hi − lo) · bias_field`` in the scan's
            units.
        transform: the map between the scan's space and the atlas grid.
    """

    image: np.ndarray
    mask: np.ndarray
    similarity: float
    transform: AtlasTransform
    bias_field: np.ndarray | None = None
    intensity_range: tuple[float, float] = (0.0, 1.0)

    def to_native(self, array: np.ndarray, order: int = 1) -> Volume:
        """``transform.to_native``: an array on the atlas grid on the scan's own grid."""
        return self.transform.to_native(array, order)


def _like(out: np.ndarray, dtype: np.dtype, order: int) -> np.ndarray:
    if order == 0 and (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        return np.rint(out).astype(dtype)
    return out


def align_to_atlas(scan: Volume, atlas: Atlas, *, seed: int = 0,
                   min_similarity: float = MIN_SIMILARITY, bias_correction: bool = True,
                   brain_mask: Volume | None = None,
                   settings: AlignmentSettings = ALIGNMENT) -> AtlasAlignment:
    """Register a native T1 scan to the atlas template and bring it onto the atlas grid.

    On the grid, the scan is corrected for its bias field (ANTs' N4, inside the brain mask)
    before its intensities are normalised.

    Args:
        scan: the scan as loaded (any orientation, voxel size and field of view, skull on or off).
        atlas: defines the template, the mask and the output grid.
        seed: seeds ANTs' metric sampling; the same seed gives the same result on the same
            machine with the same number of threads.
        min_similarity: refuse the result when :func:`template_similarity` is below this.
        bias_correction: N4 bias-field correction before normalisation.
        brain_mask: the scan's own brain mask (e.g. from SynthStrip), in the scan's space; by
            default the atlas's brain mask after the affine registration.
        settings: the registration's schedule.

    Returns:
        The alignment (image and mask on the atlas grid, transform, similarity).

    Raises:
        RegistrationError: one line with the similarity, the threshold and the likely cause,
            when the registration fails or its result does not look like the template.
    """
    start = time.perf_counter()
    where = f"{scan.path}: " if scan.path else ""
    ras = to_ras(scan)
    smoothed = antialias(ras, atlas.spacing)
    moving_full = to_ants(smoothed, ras.affine)
    moving = moving_full
    if min(ras.spacing) < atlas.spacing:
        moving = ants.resample_image(moving_full, (atlas.spacing,) * 3, use_voxels=False,
                                     interp_type=0)
    fixed = to_ants(atlas.template, atlas.grid.affine)
    dilation = max(1, int(round(METRIC_MASK_DILATION_MM / atlas.spacing)))
    metric_mask = to_ants(ndimage.binary_dilation(atlas.mask, iterations=dilation)
                          .astype(np.float32), atlas.grid.affine)
    try:
        with registration_scope(seed) as tmp:
            rigid = ants.registration(fixed, moving, "Rigid", outprefix=str(tmp / "rigid_"),
                                      mask=metric_mask,
                                      **settings.ants_kwargs(atlas.spacing, "rigid"))
            affine = ants.registration(fixed, moving, "Affine", outprefix=str(tmp / "affine_"),
                                       initial_transform=rigid["fwdtransforms"], mask=metric_mask,
                                       **settings.ants_kwargs(atlas.spacing, "affine"))
            matrix = transform_to_ras_matrix(ants.read_transform(affine["fwdtransforms"][0]))
    except RuntimeError as exc:
        raise RegistrationError(f"{where}affine registration to the atlas template failed ({exc}); "
                                "check that the file is a T1-weighted brain MRI") from None
    uncovered = RegistrationError(f"{where}after registration the scan does not cover the "
                                  "template brain; check that the file is a brain MRI with the "
                                  "whole head in its field of view")
    if not np.isfinite(matrix).all():
        raise uncovered
    on_grid = resample_with_matrix(moving_full, fixed, matrix, order=1)
    transform = AtlasTransform(matrix, atlas.grid, Grid.of(scan))
    mask = np.array(atlas.mask, dtype=bool)
    if brain_mask is not None:
        mask = _user_mask_on_grid(brain_mask, transform, atlas, where)
    bias = n4_bias_field(on_grid, mask, atlas.grid.affine) if bias_correction else None
    corrected = on_grid / bias if bias is not None else on_grid
    try:
        lo, hi = intensity_range(corrected, mask)
    except ValueError:  # constant inside the brain mask: nothing of the scan landed there
        raise uncovered from None
    image = normalize_intensity(corrected, mask)
    similarity = template_similarity(image, atlas)
    log.info("aligned %s to %s: similarity %.3f in %.1f s", scan.path or "scan", atlas.id,
             similarity, time.perf_counter() - start)
    if similarity < min_similarity:
        raise RegistrationError(
            f"{where}registration to the atlas failed: similarity to the template {similarity:.3f} "
            f"is below {min_similarity:.2f}; the image is probably not a T1-weighted brain MRI "
            "(other contrast, not a head, or most of the brain outside the field of view)")
    return AtlasAlignment(image=image, mask=mask, similarity=similarity, transform=transform,
                          bias_field=bias, intensity_range=(lo, hi))


N4_VOXEL_MM = 8.0
"""N4 fits the (smooth) bias field on the atlas grid shrunk to about this voxel size: on the 2 mm
grid 2.2 CPU s, against 15 CPU s at 4 mm voxels (docs/benchmarks.md)."""
N4_ITERATIONS = (10, 10, 10)
"""Iterations per fitting level (one level per entry, each doubling the field's control points):
as much of the bias field removed as 50/50/30, in 30 % of the time (docs/benchmarks.md)."""


def n4_bias_field(image: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The N4 bias field (Tustison et al. 2010, ANTs) of an image, fitted inside ``mask``.

    Args:
        image: (X, Y, Z) intensities (scanner units, positive inside the mask).
        mask: (X, Y, Z) bool region to fit.
        affine: (4, 4) RAS voxel-to-world matrix.

    Returns:
        (X, Y, Z) float32 multiplicative field (``image / field`` is the corrected image), 1 where
        the mask is empty.
    """
    data = np.asarray(image, dtype=np.float32)
    floor = max(float(np.percentile(data[mask], 1)), 1e-3) if mask.any() else 1e-3
    positive = np.maximum(data, floor)  # N4 works on log intensities
    field = ants.n4_bias_field_correction(
        to_ants(positive, affine), mask=to_ants(mask.astype(np.float32), affine),
        shrink_factor=max(1, int(round(N4_VOXEL_MM / _spacing(affine)))),
        convergence={"iters": list(N4_ITERATIONS), "tol": 1e-7},
        return_bias_field=True)
    out = np.asarray(field.numpy(), dtype=np.float32)
    if not np.isfinite(out).all() or (out <= 0).any():
        raise RegistrationError("N4 bias-field correction failed (non-finite field); run with "
                                "bias correction off (--no-bias-correction)")
    return out


def _spacing(affine: np.ndarray) -> float:
    return float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)).min())


MIN_MASK_DICE = 0.5
"""A user's brain mask must overlap the registered atlas brain by at least this Dice."""


def _user_mask_on_grid(mask: Volume, transform: AtlasTransform, atlas: Atlas,
                       where: str) -> np.ndarray:
    """A brain mask in the scan's space carried onto the atlas grid, checked against the brain."""
    on_grid = transform.to_atlas(Volume((np.asarray(mask.data) > 0).astype(np.uint8),
                                        mask.affine), order=0) > 0
    overlap = 2.0 * (on_grid & atlas.mask).sum() / max(on_grid.sum() + atlas.mask.sum(), 1)
    if overlap < MIN_MASK_DICE:
        raise RegistrationError(
            f"{where}the brain mask does not overlay the registered brain (Dice {overlap:.2f} with "
            f"the atlas brain, below {MIN_MASK_DICE}); give this scan's own brain mask, in its "
            "space")
    return on_grid


