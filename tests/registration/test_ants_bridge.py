import os
import subprocess
import sys

import ants
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mambacontrol.registration._ants import (
    SEED_ENV,
    ras_affine,
    ras_matrix_to_transform,
    registration_scope,
    resample_with_matrix,
    to_ants,
    transform_to_ras_matrix,
)
from mambacontrol.testing.standins import rigid_motion

OBLIQUE = np.array([[0.0, 0.0, -1.1, 60.0], [1.05, 0.0, 0.0, -80.0], [0.0, 0.95, 0.0, -40.0],
                    [0.0, 0.0, 0.0, 1.0]])
OBLIQUE = rigid_motion((0.0, 0.0, 6.0), (0.0, 0.0, 0.0)) @ OBLIQUE


def test_import_mambacontrol_does_not_import_ants():
    code = ("import sys, mambacontrol, mambacontrol.io, mambacontrol.atlas; "
            "print('ants' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_to_ants_matches_ants_reading_the_nifti(tmp_path, rng):
    data = rng.random((7, 8, 9)).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, OBLIQUE), str(path))
    read = ants.image_read(str(path))
    mine = to_ants(data, OBLIQUE)
    np.testing.assert_allclose(mine.origin, read.origin, atol=1e-4)
    np.testing.assert_allclose(mine.spacing, read.spacing, atol=1e-5)
    np.testing.assert_allclose(mine.direction, read.direction, atol=1e-6)
    np.testing.assert_array_equal(mine.numpy(), read.numpy())
    np.testing.assert_allclose(ras_affine(mine), OBLIQUE, atol=1e-9)


def test_matrix_round_trip_and_point_mapping():
    matrix = rigid_motion((10.0, -5.0, 20.0), (3.0, -4.0, 5.0), centre_mm=(1.0, 2.0, 3.0))
    matrix[:3, :3] *= np.array([1.02, 0.97, 1.0])  # make it a general affine
    tx = ras_matrix_to_transform(matrix)
    np.testing.assert_allclose(transform_to_ras_matrix(tx), matrix, atol=1e-6)
    ras_point = np.array([10.0, -20.0, 30.0, 1.0])
    flip = np.array([-1.0, -1.0, 1.0])
    lps_out = np.asarray(tx.apply_to_point(tuple(flip * ras_point[:3])))
    np.testing.assert_allclose(flip * lps_out, (matrix @ ras_point)[:3], atol=1e-4)


@pytest.mark.parametrize("order", [0, 1])
def test_resample_with_matrix_matches_scipy(rng, order):
    data = ndimage.gaussian_filter(rng.random((20, 22, 18)), 2).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -22.0, -18.0]
    matrix = rigid_motion((0.0, 0.0, 15.0), (1.5, -2.0, 0.5))
    out = resample_with_matrix(to_ants(data, affine), to_ants(np.zeros_like(data), affine), matrix,
                               order)
    vox = np.linalg.inv(affine) @ matrix @ affine
    ref = ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], order=order, mode="constant")
    core = (slice(4, -4),) * 3
    if order == 1:
        np.testing.assert_allclose(out[core], ref[core], atol=1e-4)
    else:  # nearest neighbour: ties may round differently, nearly every voxel agrees
        assert np.mean(out[core] == ref[core]) > 0.99


def test_resample_with_matrix_rejects_unknown_order(rng):
    img = to_ants(rng.random((4, 4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="order 2"):
        resample_with_matrix(img, img, np.eye(4), 2)


def test_registration_scope_sets_and_restores_seed():
    before = os.environ.get(SEED_ENV)
    with registration_scope(41) as tmp:
        assert os.environ[SEED_ENV] == "42"
        assert tmp.is_dir()
    assert os.environ.get(SEED_ENV) == before
    assert not tmp.exists()
    with pytest.raises(ValueError, match="seed -1"), registration_scope(-1):
        pass
