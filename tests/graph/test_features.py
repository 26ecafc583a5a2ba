import os

import numpy as np
import pytest

from mambacontrol.errors import InputFileError, MambaControlError
from mambacontrol.graph import FEATURE_NAMES, AnatomyGraph, FeatureCache, FeatureNorm, node_features
from tests.graph.conftest import make_cohort

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


@pytest.fixture(scope="module")
def graph4(atlas4):
    return AnatomyGraph.from_atlas(atlas4)


def test_features_on_a_hand_made_scan(graph4):
    labels = np.zeros((6, 4, 4), dtype=np.int32)
    labels[0:2] = 47  # right hippocampus: 2×4×4 = 32 voxels
    labels[2:6, :2] = 44  # right cerebral white matter: 4×2×4 = 32 voxels
    labels[2:6, 2:] = 4  # third ventricle (csf)
    image = np.zeros(labels.shape, dtype=np.float32)
    image[labels == 47] = np.tile([0.4, 0.6], 16)
    image[labels == 44] = 0.9
    image[labels == 4] = 0.1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    before = (image.copy(), labels.copy())
    f = node_features(image, labels, graph4, affine)
    assert f.shape == (134, len(FEATURE_NAMES)) and f.dtype == np.float32
    h, w = graph4.label_to_node[47], graph4.label_to_node[44]
    assert f[h, COL["log_volume"]] == pytest.approx(np.log1p(32 * 8.0))
    assert f[h, COL["volume_fraction"]] == pytest.approx(32 / 96)
    assert f[h, COL["intensity_mean"]] == pytest.approx(0.5)
    assert f[h, COL["intensity_std"]] == pytest.approx(0.1, rel=1e-4)
    np.testing.assert_allclose(f[h, 4:7], [-10 + 2 * 0.5, 2 * 1.5, 5 + 2 * 1.5])
    np.testing.assert_allclose(f[:, 7:10][[h, w]].sum(axis=1), 1.0, rtol=1e-5)
    assert f[w, COL["wm"]] > 0.99 and f[h, COL["gm"]] > 0.99
    absent = graph4.label_to_node[31]
    assert f[absent, 0] == 0 and f[absent, 2] == 0
    np.testing.assert_allclose(f[absent, 4:7], graph4.node_centroids[absent], rtol=1e-5)
    assert np.array_equal(image, before[0]) and np.array_equal(labels, before[1])


def test_atlas_features_match_atlas_volumes(atlas4, graph4):
    f = node_features(atlas4.template, atlas4.labels, graph4)
    np.testing.assert_allclose(np.expm1(f[:, 0].astype(np.float64)), graph4.node_volumes, rtol=1e-5)
    np.testing.assert_allclose(f[:, 4:7], graph4.node_centroids, atol=1e-3)
    assert f[:, 1].sum() == pytest.approx(1.0, abs=1e-5)


def test_bad_scans_raise(graph4):
    labels = np.ones((4, 4, 4), dtype=np.int32) * 47
    with pytest.raises(MambaControlError, match="differs from label map"):
        node_features(np.zeros((4, 4, 3)), labels, graph4)
    with pytest.raises(MambaControlError, match="empty"):
        node_features(np.zeros((4, 4, 4)), labels * 0, graph4)
    img = np.zeros((4, 4, 4))
    img[0, 0, 0] = np.nan
    with pytest.raises(MambaControlError, match="NaN"):
        node_features(img, labels, graph4)


def test_feature_norm_standardises_and_floors(rng):
    x = rng.normal(3.0, 2.0, size=(50, 4, 2))
    x[:, 0, 1] = 7.0  # a constant feature of one node
    norm = FeatureNorm.fit(x)
    mean, std = np.array(norm.mean), np.array(norm.std)
    z = (x - mean) / std
    np.testing.assert_allclose(z[:, 1:].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, 1:].std(axis=0), 1, atol=1e-12)
    assert std[0, 1] == pytest.approx(0.05 * np.median(x.std(axis=0)[:, 1]))
    with pytest.raises(MambaControlError):
        FeatureNorm.fit(x[0])


def test_feature_cache_memory_disk_and_invalidation(tmp_path, atlas4, graph4, monkeypatch):
    m = make_cohort(tmp_path / "c", atlas4, n_subjects=1, visits=(0.0, 1.0))
    v = m.visits[0]
    cache = FeatureCache(graph4, tmp_path / "cache")
    f1 = cache(v.image_path, v.segm_path)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    calls = []
    monkeypatch.setattr(FeatureCache, "_compute", lambda self, *a: calls.append(a))
    assert cache(v.image_path, v.segm_path) is f1  # memory
    fresh = FeatureCache(graph4, tmp_path / "cache")
    assert np.array_equal(fresh(v.image_path, v.segm_path), f1) and not calls  # disk
    monkeypatch.undo()
    st = os.stat(v.image_path)
    os.utime(v.image_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh(v.image_path, v.segm_path)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # an edited file is recomputed


def test_feature_cache_refuses_other_grids(tmp_path, graph4, write_nifti):
    img = write_nifti(np.random.default_rng(0).random((8, 8, 8), dtype=np.float32), "img.nii.gz")
    lab = write_nifti(np.ones((8, 8, 8), dtype=np.int16), "lab.nii.gz")
    with pytest.raises(InputFileError, match="differs from the atlas grid"):
        FeatureCache(graph4)(img, lab)
    with pytest.raises(InputFileError, match="not found"):
        FeatureCache(graph4)(tmp_path / "nope.nii.gz", lab)
