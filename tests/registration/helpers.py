"""Shared constants and checks for the registration tests."""

from __future__ import annotations

import numpy as np

from mambacontrol.testing.standins import rigid_motion

MOTION = rigid_motion((6.0, -4.0, 8.0), (5.0, -7.0, 9.0), centre_mm=(0.0, -16.0, 6.0))
"""The stand-in scan's placement in the scanner: the true atlas-to-scan map."""


def transform_error_mm(matrix: np.ndarray, truth: np.ndarray, atlas) -> np.ndarray:
    """Distance (mm) between where two atlas-to-scan maps send each atlas brain voxel."""
    ijk = np.argwhere(atlas.mask).T.astype(np.float64)
    pts = atlas.grid.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    return np.linalg.norm((matrix @ pts - truth @ pts)[:3], axis=0)
