"""Shared fixtures: tiny NIfTI files and manifests written to a temporary folder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture
def write_nifti(tmp_path):
    """Write an array as NIfTI and return its path: ``write_nifti(data, name, affine=None)``."""

    def _write(data, name="img.nii.gz", affine=None):
        path = tmp_path / name
        aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(np.asarray(data), aff), str(path))
        return path

    return _write


@pytest.fixture
def rng():
    return np.random.default_rng(0)
