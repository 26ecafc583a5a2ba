import nibabel as nib
import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.io import Grid, Volume, resample, to_ras


def lps_grid_1mm(atlas, crop=((10, 10), (12, 12), (8, 8))):
    """The atlas field of view at 1 mm in LPS voxel order, cropped by ``crop`` mm per side."""
    lo = atlas.grid.affine[:3, 3] + np.array([c[0] for c in crop])
    hi = atlas.grid.affine[:3, 3] + (np.array(atlas.grid.shape) - 1) * atlas.spacing - np.array(
        [c[1] for c in crop])
    shape = tuple(int(s) for s in np.floor(hi - lo) + 1)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[:3, 3] = [hi[0], hi[1], lo[2]]
    return Grid(shape, aff)


def test_to_ras_reorders_without_resampling(rng):
    data = rng.normal(size=(4, 5, 6)).astype(np.float32)
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    lps[:3, 3] = [10, 20, -5]
    ras = to_ras(Volume(data, lps))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    # the same world point has the same value in both
    ijk = np.array([1, 2, 3, 1.0])
    world = lps @ ijk
    ijk_ras = np.rint(np.linalg.inv(ras.affine) @ world).astype(int)
    assert ras.data[tuple(ijk_ras[:3])] == data[1, 2, 3]


def test_resample_round_trip_on_real_template():
    atlas = load_atlas(grid="2mm")
    template = atlas.volume("t1")
    native = lps_grid_1mm(atlas)
    scan = resample(template, native, order=1)
    assert scan.shape == native.shape
    np.testing.assert_allclose(scan.affine, native.affine)
    back = resample(scan, atlas.grid, order=1)
    assert back.shape == atlas.grid.shape
    np.testing.assert_allclose(back.affine, atlas.grid.affine)
    # compare where the cropped native field of view covered the template (away from its edge)
    inside = resample(Volume(np.ones(native.shape, np.float32), native.affine), atlas.grid, order=0)
    core = (inside.data > 0.5) & atlas.mask
    err = np.abs(back.data[core] - template.data[core])
    assert err.mean() < 0.01
    assert np.corrcoef(back.data[core], template.data[core])[0, 1] > 0.995


def test_resample_back_restores_input_grid_exactly(rng):
    data = rng.random((30, 31, 32)).astype(np.float32)
    aff = np.array([[0, 0, -1.1, 60], [1.05, 0, 0, -80], [0, 0.95, 0, -40], [0, 0, 0, 1]])
    src = Volume(data, aff)
    atlas_grid = load_atlas().grid
    model = resample(src, atlas_grid)
    back = resample(model, Grid.of(src))
    assert back.shape == src.shape
    np.testing.assert_array_equal(back.affine, src.affine)


def test_nearest_keeps_label_dtype_and_values():
    atlas = load_atlas(grid="2mm")
    labels = atlas.volume("labels")
    native = lps_grid_1mm(atlas)
    res = resample(labels, native, order=0)
    assert res.data.dtype == labels.data.dtype
    assert set(np.unique(res.data)) <= set(np.unique(labels.data))


def test_grid_dict_round_trip():
    g = load_atlas().grid
    g2 = Grid.from_dict(g.to_dict())
    assert g2.same_as(g)
    assert not g2.same_as(Grid(g.shape, g.affine + 0.5))
    assert g.spacing == pytest.approx((2.0, 2.0, 2.0))
