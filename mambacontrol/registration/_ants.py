"""The bridge to ANTsPy: arrays and affines in and out, seeds, temporary transform files.

NIfTI affines map voxels to RAS millimetres; ANTs (ITK) works in LPS millimetres. The two differ
by ``diag(-1, -1, 1)`` on world coordinates. Every conversion between them happens here, so the
rest of the package only sees RAS affines and numpy arrays.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ants
import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
INTERPOLATORS = {0: "nearestNeighbor", 1: "linear", 3: "bSpline"}
SEED_ENV = "ANTS_RANDOM_SEED"


def to_ants(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """An ANTs image (float32) of a numpy volume with a RAS voxel-to-world affine.

    Args:
        data: (X, Y, Z) array.
        affine: (4, 4) voxel-to-world matrix, RAS mm (as in NIfTI).
    """
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           origin=tuple(float(v) for v in lps[:3, 3]),
                           spacing=tuple(float(v) for v in spacing), direction=direction)


def ras_affine(image: ants.ANTsImage) -> np.ndarray:
    """The (4, 4) RAS voxel-to-world affine of an ANTs image."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)[None, :]
    lps[:3, 3] = image.origin
    return RAS_TO_LPS @ lps


def ras_matrix_to_transform(matrix: np.ndarray) -> ants.ANTsTransform:
    """An ANTs affine transform doing, in LPS, what ``matrix`` does to RAS world points.

    Args:
        matrix: (4, 4) map of world points, RAS mm → RAS mm.
    """
    lps = RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64) @ RAS_TO_LPS
    return ants.create_ants_transform(transform_type="AffineTransform", precision="double",
                                      dimension=3, matrix=lps[:3, :3], translation=lps[:3, 3],
                                      center=(0.0, 0.0, 0.0))


def transform_to_ras_matrix(transform: ants.ANTsTransform) -> np.ndarray:
    """The (4, 4) RAS world-point map of an ANTs affine transform (``y = A (x - c) + c + t``)."""
    params = np.asarray(transform.parameters, dtype=np.float64)
    center = np.asarray(transform.fixed_parameters, dtype=np.float64)
    a = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = center + params[9:12] - a @ center
    return RAS_TO_LPS @ lps @ RAS_TO_LPS


def resample_with_matrix(moving: ants.ANTsImage, reference: ants.ANTsImage, matrix: np.ndarray,
                         order: int) -> np.ndarray:
    """Values of ``moving`` at ``matrix`` (RAS → RAS) applied to each voxel centre of ``reference``.

    Args:
        moving: the image to sample.
        reference: the output grid.
        matrix: (4, 4) map from reference world points to moving world points.
        order: 0 nearest neighbour, 1 linear, 3 B-spline.

    Returns:
        (X, Y, Z) float32 array on the reference grid; zero outside ``moving``.
    """
    if order not in INTERPOLATORS:
        raise ValueError(f"order {order} is not one of {sorted(INTERPOLATORS)}")
    transform = ras_matrix_to_transform(matrix)
    out = transform.apply_to_image(moving, reference, interpolation=INTERPOLATORS[order].lower())
    return out.numpy().astype(np.float32, copy=False)


def ants_seed(seed: int) -> int:
    """The ANTs random seed for a package seed (ANTs reads 0 as "seed from the clock")."""
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    return seed + 1


@contextlib.contextmanager
def registration_scope(seed: int) -> Iterator[Path]:
    """Seed ANTs' random sampling and give a temporary folder for its transform files.

    ANTs reads its seed from ``ANTS_RANDOM_SEED`` when a registration starts; the variable is
    restored afterwards, and the folder (ANTs writes transforms to files) is removed.
    """
    previous = os.environ.get(SEED_ENV)
    os.environ[SEED_ENV] = str(ants_seed(seed))
    try:
        with tempfile.TemporaryDirectory(prefix="mambacontrol-ants-") as tmp:
            yield Path(tmp)
    finally:
        if previous is None:
            os.environ.pop(SEED_ENV, None)
        else:
            os.environ[SEED_ENV] = previous
