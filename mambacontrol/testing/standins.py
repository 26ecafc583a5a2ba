"""Stand-in scans for testing and calibrating the registration.

A *stand-in scan* is the atlas template made to look like a scan straight from a pipeline: LPS
voxel order, its own voxel size and field of view, scanner-like intensities with a bias field and
Rician-like noise, optionally a skull, scalp and neck around the brain, and placed in the scanner
by a known rigid motion (so the true atlas-to-scan map is known). *Non-brain images* (noise, a
smooth blob, a cube, the brain with inverted contrast) are what a registration must refuse.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mambacontrol.atlas import Atlas
from mambacontrol.io import Grid, Volume, resample

SKULL_LAYERS_MM = ((2.0, 0.10), (6.0, 0.03), (11.0, 0.75))
"""Shells around the brain (outer radius from the brain surface in mm, intensity relative to
white matter): CSF, bone, scalp."""
NECK_INTENSITY = 0.45


def lps_grid(atlas: Atlas, spacing: float = 1.0,
             crop_mm: tuple[tuple[float, float], ...] = ((10, 10), (12, 12), (8, 8))) -> Grid:
    """The atlas field of view on an LPS grid of ``spacing`` mm, cropped by ``crop_mm`` per side.

    Args:
        atlas: gives the field of view.
        spacing: voxel size in mm.
        crop_mm: ((left, right), (posterior, anterior), (inferior, superior)) mm removed from the
            atlas field of view; negative values extend it.
    """
    first = atlas.grid.affine[:3, 3]
    last = first + (np.asarray(atlas.grid.shape) - 1) * atlas.spacing
    lo = first + np.array([c[0] for c in crop_mm])
    hi = last - np.array([c[1] for c in crop_mm])
    shape = tuple(int(s) for s in np.floor((hi - lo) / spacing) + 1)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [hi[0], hi[1], lo[2]]
    return Grid(shape, affine)


def rigid_motion(rotation_deg: tuple[float, float, float], shift_mm: tuple[float, float, float],
                 centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """(4, 4) rigid map of world points: rotation (x, y, z Euler angles) about ``centre_mm``, then
    ``shift_mm``."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    c = np.asarray(centre_mm, dtype=np.float64)
    motion[:3, 3] = c - motion[:3, :3] @ c + np.asarray(shift_mm, dtype=np.float64)
    return motion


def _world(grid: Grid) -> np.ndarray:
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    return (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:]).reshape((3,) + tuple(grid.shape))


def standin_scan(atlas: Atlas, grid: Grid, *, brain: np.ndarray | None = None,
                 motion: np.ndarray | None = None, skull: bool = False, bias: float = 0.2,
                 noise: float = 0.02, seed: int = 0) -> Volume:
    """The atlas template as a native scan on ``grid``, moved in the scanner by ``motion``.

    Args:
        atlas: the template's source (use a fine grid, e.g. ``2mm``, for 1 mm scans).
        grid: the scan's grid before the motion (e.g. :func:`lps_grid`).
        brain: (X, Y, Z) brain-extracted image in [0, 1] on the atlas grid to use instead of the
            template (e.g. a warped template: another "subject").
        motion: (4, 4) rigid map applied to the scan's world coordinates: the returned affine is
            ``motion @ grid.affine``, so the true atlas-to-scan map is ``motion``.
        skull: add CSF, bone and scalp shells around the brain, and a neck below it (then give a
            grid that extends beyond the atlas field of view).
        bias: amplitude of a smooth multiplicative bias field.
        noise: noise level relative to white matter (magnitude of Gaussian noise: Rician-like).
        seed: seeds the noise.

    Returns:
        (X, Y, Z) float32 volume in scanner-like units (white matter about 1000).
    """
    rng = np.random.default_rng(seed)
    source = atlas.template if brain is None else brain
    values = resample(Volume(np.asarray(source, np.float32), atlas.grid.affine), grid,
                      order=1).data.astype(np.float64)
    image = values * 0.9 + 0.1 * (values > 0)
    if skull:
        inside = ndimage.binary_fill_holes(ndimage.binary_closing(values > 0.02, iterations=2))
        distance = ndimage.distance_transform_edt(~inside, sampling=grid.spacing)
        inner = 0.0
        for outer, value in SKULL_LAYERS_MM:
            image = np.where((distance > inner) & (distance <= outer), value, image)
            inner = outer
        world = _world(grid)
        low = atlas.grid.affine[2, 3] + 0.2 * atlas.grid.shape[2] * atlas.spacing
        neck = ((world[2] < low) & (world[0] ** 2 + (world[1] + 20.0) ** 2 < 45.0**2)
                & (distance > inner))
        image = np.where(neck, NECK_INTENSITY, image)
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, s) for s in grid.shape], indexing="ij")
    field = 1.0 + bias * (0.6 * axes[0] + 0.5 * axes[1] * axes[2] - 0.4 * axes[2] ** 2)
    image = image * field
    image = np.hypot(image + rng.normal(0.0, noise, image.shape),
                     rng.normal(0.0, noise, image.shape))
    affine = grid.affine if motion is None else np.asarray(motion) @ grid.affine
    return Volume((1000.0 * image).astype(np.float32), affine)


def non_brain_images(grid: Grid, atlas: Atlas, seed: int = 0) -> dict[str, Volume]:
    """Images a registration to the template must refuse, on ``grid``.

    Returns:
        ``noise`` (pure noise), ``blob`` (a smooth head-sized ellipsoid), ``cube`` (a bright cube),
        ``inverted`` (the brain with inverted contrast, T2-like), ``top_slab`` (only the top 4 cm
        of the brain in the field of view, the rest blank).
    """
    rng = np.random.default_rng(seed)
    world = _world(grid)
    centre = np.array([0.0, -16.0, 6.0])[:, None, None, None]
    r = np.sqrt((((world - centre) / np.array([70.0, 90.0, 70.0])[:, None, None, None]) ** 2)
                .sum(axis=0))
    blob = 1000.0 / (1.0 + np.exp((r - 1.0) / 0.08)) * (0.8 + 0.2 * np.cos(3.0 * r))
    cube = np.where(np.all(np.abs(world - centre) < 50.0, axis=0), 800.0, 20.0)
    brain = standin_scan(atlas, grid, seed=seed)
    inside = brain.data > 150.0
    inverted = np.where(inside, 1100.0 - brain.data, brain.data)
    out = {
        "noise": rng.gamma(2.0, 100.0, grid.shape),
        "blob": blob + rng.normal(0.0, 10.0, grid.shape),
        "cube": cube + rng.normal(0.0, 10.0, grid.shape),
        "inverted": inverted,
        "top_slab": np.where(world[2] > 40.0, brain.data, brain.data.min()),
    }
    return {k: Volume(v.astype(np.float32), grid.affine.copy()) for k, v in out.items()}


def _sample(data: np.ndarray, voxels: np.ndarray, order: int) -> np.ndarray:
    return ndimage.map_coordinates(np.asarray(data, dtype=np.float32 if order else data.dtype),
                                   voxels, order=order, mode="nearest")


def _world_to_voxels(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(affine)
    flat = points.reshape(3, -1)
    return (inv[:3, :3] @ flat + inv[:3, 3:]).reshape(points.shape)


def radial_warp(image: np.ndarray, affine: np.ndarray, centre_mm: tuple[float, float, float],
                amplitude: float, sigma_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shrink (``amplitude`` > 0) or grow an image radially about a point; the Jacobian is exact.

    The map of baseline points to warped points is ``φ(x) = c + f(ρ) (x − c) / ρ`` with
    ``ρ = |x − c|`` and ``f(ρ) = ρ (1 − a exp(−ρ² / 2σ²))``; its Jacobian determinant is
    ``f'(ρ) (f(ρ) / ρ)²``. Without ``sigma_mm`` it is a global scaling by ``1 − a`` (determinant
    ``(1 − a)³``).

    Args:
        image: (X, Y, Z) baseline image.
        affine: (4, 4) its voxel-to-world matrix.
        centre_mm: c, world coordinates (RAS mm).
        amplitude: a, in (−1, 1).
        sigma_mm: σ, the reach of a local change; ``None`` for a global scaling.

    Returns:
        The warped image (cubic interpolation, values clipped to the image's range) and the
        Jacobian determinant of φ at each baseline voxel, both (X, Y, Z) float32 on the
        image's grid. The warped volume of a baseline region R is the sum of the determinant
        over R times the voxel volume.
    """
    if not -1.0 < amplitude < 1.0:
        raise ValueError(f"amplitude {amplitude} must lie in (-1, 1)")
    c = np.asarray(centre_mm, dtype=np.float64)[:, None, None, None]
    world = _world(Grid(tuple(image.shape), np.asarray(affine, dtype=np.float64))) - c
    rho = np.sqrt((world**2).sum(axis=0))
    if sigma_mm is None:
        ratio = np.full_like(rho, 1.0 - amplitude)
        jacobian = ratio**3
        source_ratio = 1.0 / ratio
    else:
        g = amplitude * np.exp(-(rho**2) / (2.0 * sigma_mm**2))
        ratio = 1.0 - g
        jacobian = (1.0 - g * (1.0 - rho**2 / sigma_mm**2)) * ratio**2
        # invert the monotone radial profile f on a fine table to pull the image back
        table = np.linspace(0.0, rho.max() * 1.05 + 1.0, 20001)
        f_table = table * (1.0 - amplitude * np.exp(-(table**2) / (2.0 * sigma_mm**2)))
        source_rho = np.interp(rho, f_table, table)
        source_ratio = np.divide(source_rho, rho, out=np.full_like(rho, 1.0 / (1.0 - amplitude)),
                                 where=rho > 1e-9)
    source = world * source_ratio + c
    warped = _sample(image, _world_to_voxels(source, affine), order=3)
    warped = np.clip(warped, float(np.min(image)), float(np.max(image)))
    return warped.astype(np.float32), jacobian.astype(np.float32)


def random_smooth_warp(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, *,
                       amplitude_mm: float = 3.0, smoothness_mm: float = 20.0,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Warp an image and its labels by the same random smooth displacement (a new "subject").

    Args:
        image: (X, Y, Z) image.
        labels: (X, Y, Z) integer label map on the same grid.
        affine: (4, 4) voxel-to-world matrix of the grid.
        amplitude_mm: root-mean-square displacement.
        smoothness_mm: Gaussian smoothing (σ) of the white-noise displacement.
        seed: seeds the displacement.

    Returns:
        The warped image (cubic) and labels (nearest neighbour).
    """
    rng = np.random.default_rng(seed)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=image.shape), smoothness_mm / spacing,
                                              mode="wrap") for _ in range(3)])
    field *= amplitude_mm / np.sqrt((field**2).sum(axis=0).mean())
    voxels = np.indices(image.shape, dtype=np.float64) + field / spacing[:, None, None, None]
    warped = np.clip(_sample(image, voxels, order=3), float(np.min(image)), float(np.max(image)))
    return warped.astype(np.float32), _sample(labels, voxels, order=0)
