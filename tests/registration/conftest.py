"""Shared fixtures: the atlas on its small grid, and a 1 mm LPS stand-in scan with a known motion."""

from __future__ import annotations

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.registration.standins import lps_grid, rigid_motion, standin_scan

MOTION = rigid_motion((6.0, -4.0, 8.0), (5.0, -7.0, 9.0), centre_mm=(0.0, -16.0, 6.0))


@pytest.fixture(scope="session")
def atlas4():
    return load_atlas(grid="4mm")


@pytest.fixture(scope="session")
def atlas2():
    return load_atlas(grid="2mm")


@pytest.fixture(scope="session")
def standin_1mm(atlas2):
    """The 2 mm template resampled to 1 mm in LPS, cropped, with bias and noise, moved by MOTION."""
    return standin_scan(atlas2, lps_grid(atlas2, 1.0), motion=MOTION)


def brain_points(atlas) -> np.ndarray:
    """(4, N) homogeneous world coordinates of the atlas brain voxels."""
    ijk = np.argwhere(atlas.mask).T.astype(np.float64)
    return atlas.grid.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])


def transform_error_mm(matrix: np.ndarray, truth: np.ndarray, atlas) -> np.ndarray:
    """Distance (mm) between where two atlas-to-scan maps send each brain voxel."""
    pts = brain_points(atlas)
    return np.linalg.norm((matrix @ pts - truth @ pts)[:3], axis=0)
