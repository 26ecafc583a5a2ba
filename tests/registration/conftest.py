"""Shared fixtures: the atlas on its 4 mm and 2 mm grids, and a 1 mm LPS stand-in scan."""

from __future__ import annotations

import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.testing.standins import lps_grid, standin_scan
from tests.registration.helpers import MOTION


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
