import numpy as np
import pytest

from mambacontrol.io import Grid
from mambacontrol.registration import RegionalVolumes, measure_regional_volumes
from mambacontrol.registration.standins import radial_warp


def centroid_mm(atlas, labels) -> tuple[float, float, float]:
    ijk = np.argwhere(np.isin(atlas.labels, labels)).mean(axis=0)
    return tuple(float(v) for v in (atlas.grid.affine @ np.r_[ijk, 1.0])[:3])


def true_change(jacobian: np.ndarray, atlas, labels) -> float:
    region = np.isin(atlas.labels, labels)
    return float(100.0 * (jacobian[region].mean() - 1.0))


def measured_change(result: RegionalVolumes, labels) -> float:
    base, other = result.groups({"g": labels})["g"]
    return 100.0 * (other / base - 1.0)


def measure(atlas, other, seed=0):
    return measure_regional_volumes(atlas.template, other, atlas.labels, atlas.grid,
                                    atlas.label_ids, seed=seed)


def test_identical_images_give_no_change(atlas4):
    result = measure(atlas4, atlas4.template)
    assert np.nanmax(np.abs(result.percent_change)) < 0.05
    np.testing.assert_allclose(result.jacobian, 1.0, atol=1e-3)
    counts = np.bincount(atlas4.labels.ravel(), minlength=max(atlas4.label_ids) + 1)
    np.testing.assert_allclose(result.baseline_mm3, counts[atlas4.label_ids] * 64.0)


def test_global_shrink_is_recovered(atlas4):
    other, jac = radial_warp(atlas4.template, atlas4.grid.affine, (0.0, -16.0, 6.0), 0.03)
    assert true_change(jac, atlas4, atlas4.key_groups["whole_brain"]) == pytest.approx(-8.73, abs=0.01)
    result = measure(atlas4, other)
    whole = measured_change(result, atlas4.key_groups["whole_brain"])
    assert whole == pytest.approx(-8.73, abs=1.0)  # 4 mm grid; 2 mm accuracy in docs/benchmarks.md


def test_local_hippocampal_shrink_is_recovered_and_stays_local(atlas4):
    left, right = atlas4.key_groups["hippocampus"]
    other, jac = radial_warp(atlas4.template, atlas4.grid.affine, centroid_mm(atlas4, [left]),
                             0.1, 12.0)
    truth_left = true_change(jac, atlas4, [left])
    assert truth_left < -10.0
    result = measure(atlas4, other)
    measured_left = measured_change(result, [left])
    assert measured_left == pytest.approx(truth_left, abs=0.35 * abs(truth_left))
    assert abs(measured_change(result, [right])) < 1.0
    np.testing.assert_array_equal(measure(atlas4, other, seed=0).jacobian, result.jacobian)


def test_regional_volumes_sums_and_percentages():
    r = RegionalVolumes((1, 2, 3), np.array([100.0, 50.0, 0.0]), np.array([90.0, 55.0, 0.0]),
                        np.ones((2, 2, 2), np.float32))
    np.testing.assert_allclose(r.percent_change[:2], [-10.0, 10.0])
    assert np.isnan(r.percent_change[2])
    assert r.groups({"a": [1, 2], "none": [9]}) == {"a": (150.0, 145.0), "none": (0.0, 0.0)}
    assert r.as_dict()[2] == (50.0, 55.0)


def test_bad_inputs(atlas4):
    grid = atlas4.grid
    t = atlas4.template
    with pytest.raises(ValueError, match="other shape"):
        measure_regional_volumes(t, t[1:], atlas4.labels, grid, [1])
    with pytest.raises(ValueError, match="integer label map"):
        measure_regional_volumes(t, t, atlas4.labels.astype(float), grid, [1])
    with pytest.raises(ValueError, match="grid"):
        measure_regional_volumes(t, t, atlas4.labels, Grid((2, 2, 2), np.eye(4)), [1])
