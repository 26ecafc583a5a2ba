import math

import numpy as np
import pytest
import torch

from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.metrics import (
    PSNR_CAP_DB,
    change_dice,
    change_mae,
    change_region,
    image_metrics,
    masked_mae,
    masked_mse,
    masked_psnr,
    masked_ssim,
    regional_change,
)

SHAPE = (6, 5, 4)


def three_voxel_case():
    """Three mask voxels with errors 0.1, 0.2, 0.3 and a huge error outside the mask."""
    target = np.zeros(SHAPE, np.float32)
    pred = np.zeros(SHAPE, np.float32)
    mask = np.zeros(SHAPE, bool)
    for idx, err in [((1, 1, 1), 0.1), ((2, 3, 1), -0.2), ((4, 0, 3), 0.3)]:
        mask[idx] = True
        target[idx] = 0.5
        pred[idx] = 0.5 + err
    pred[0, 0, 0] = 5.0  # outside the mask: must not count
    return pred, target, mask


def test_mae_mse_psnr_use_only_mask_voxels():
    pred, target, mask = three_voxel_case()
    assert masked_mae(pred, target, mask) == pytest.approx(0.2, abs=1e-6)
    mse = (0.01 + 0.04 + 0.09) / 3
    assert masked_mse(pred, target, mask) == pytest.approx(mse, rel=1e-5)
    assert masked_psnr(pred, target, mask) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_torch_and_numpy_agree_and_inputs_are_untouched():
    pred, target, mask = three_voxel_case()
    before = pred.copy()
    t = masked_mae(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    assert t == pytest.approx(masked_mae(pred, target, mask))
    np.testing.assert_array_equal(pred, before)


def test_psnr_of_identical_images_is_capped():
    _, target, mask = three_voxel_case()
    assert masked_psnr(target, target, mask) == PSNR_CAP_DB


def two_constant_halves(a_right=0.5, b_right=0.25):
    """Left half: both images 0.5; right half: constants a_right vs b_right."""
    shape = (20, 9, 9)
    x = np.full(shape, 0.5, np.float32)
    y = np.full(shape, 0.5, np.float32)
    x[10:] = a_right
    y[10:] = b_right
    return x, y


def test_ssim_of_constant_regions_matches_the_formula_and_respects_the_mask():
    x, y = two_constant_halves()
    left = np.zeros(x.shape, bool)
    left[2:7, 3:6, 3:6] = True  # window (5) stays inside the left half
    right = np.zeros(x.shape, bool)
    right[13:18, 3:6, 3:6] = True
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)  # σ = 0: only the luminance term
    assert masked_ssim(x, y, left, win_size=5) == pytest.approx(1.0, abs=1e-5)
    # MONAI computes SSIM in float32
    assert masked_ssim(x, y, right, win_size=5) == pytest.approx(expected, abs=1e-4)
    both = left | right
    assert masked_ssim(x, y, both, win_size=5) == pytest.approx((1 + expected) / 2, abs=1e-4)


def test_ssim_rejects_bad_windows_and_edge_only_masks():
    x, y = two_constant_halves()
    edge = np.zeros(x.shape, bool)
    edge[0, 0, 0] = True
    with pytest.raises(MambaControlError, match="inside the volume's edge"):
        masked_ssim(x, y, edge, win_size=5)
    with pytest.raises(ValueError, match="win_size=4"):
        masked_ssim(x, y, edge, win_size=4)
    with pytest.raises(MambaControlError, match="not longer than the SSIM window"):
        masked_ssim(x, y, edge, win_size=11)


def change_case():
    """Baseline 0.5 everywhere; truth changes A by −0.2; prediction changes A by −0.1 and B by
    +0.3; C changes in both but lies outside the mask."""
    base = np.full(SHAPE, 0.5, np.float32)
    truth, pred = base.copy(), base.copy()
    mask = np.ones(SHAPE, bool)
    a, b, c = (1, 1, 1), (3, 2, 2), (5, 4, 3)
    truth[a], pred[a] = 0.3, 0.4
    pred[b] = 0.8
    truth[c], pred[c] = 0.0, 1.0
    mask[c] = False
    return pred, base, truth, mask


def test_change_mae_is_taken_over_the_true_change_region():
    pred, base, truth, mask = change_case()
    # Only voxel A changed in truth inside the mask: |(-0.1) - (-0.2)| = 0.1.
    assert change_mae(pred, base, truth, mask, threshold=0.05) == pytest.approx(0.1, abs=1e-6)
    # No true change above the threshold: undefined.
    assert math.isnan(change_mae(pred, base, truth, mask, threshold=0.25))


def test_change_dice_counts_overlap_inside_the_mask():
    pred, base, truth, mask = change_case()
    # predicted {A, B}, true {A}: 2·1 / (2 + 1)
    assert change_dice(pred, base, truth, mask, threshold=0.05) == pytest.approx(2 / 3)
    # τ between 0.1 and 0.2: predicted {B}, true {A}: no overlap
    assert change_dice(pred, base, truth, mask, threshold=0.15) == 0.0
    # τ between 0.2 and 0.3: predicted {B}, true {}: one empty
    assert change_dice(pred, base, truth, mask, threshold=0.25) == 0.0
    # τ above everything: both empty counts as agreement
    assert change_dice(pred, base, truth, mask, threshold=0.5) == 1.0
    assert change_dice(base, base, truth, mask, threshold=0.25) == 1.0
    region = change_region(base, pred, mask, threshold=0.05)
    assert region.sum() == 2 and region[1, 1, 1] and region[3, 2, 2]


def test_image_metrics_of_the_copy_baseline():
    big = np.zeros((12, 12, 12), np.float32)
    m = np.zeros_like(big, bool)
    m[3:9, 3:9, 3:9] = True
    b = big + 0.5
    t = b.copy()
    t[5, 5, 5] = 0.3
    out = image_metrics(b, b, t, m, threshold=0.05, ssim_window=5)
    assert set(out) == {"mae", "mse", "psnr", "ssim", "change_mae", "change_dice"}
    assert out["change_mae"] == pytest.approx(0.2, abs=1e-6)  # copy predicts no change at all
    assert out["change_dice"] == 0.0
    assert out["mae"] == pytest.approx(0.2 / m.sum(), rel=1e-5)


@pytest.mark.parametrize("bad,pattern", [
    (np.zeros((6, 5)), r"shape \(6, 5\); expected one \(X, Y, Z\)"),
    (np.zeros((6, 5, 3)), r"shape \(6, 5, 3\) but the mask has \(6, 5, 4\)"),
    (np.full(SHAPE, np.nan), "NaN or infinite"),
])
def test_bad_images_are_refused(bad, pattern):
    _, target, mask = three_voxel_case()
    with pytest.raises(MambaControlError, match=pattern):
        masked_mae(bad, target, mask)


def test_empty_mask_is_refused():
    _, target, _ = three_voxel_case()
    with pytest.raises(MambaControlError, match="mask is empty"):
        masked_mae(target, target, np.zeros(SHAPE, bool))


def test_regional_change_in_percent_of_baseline():
    base = {1: 100.0, 2: 200.0, 3: 0.0}
    pred = {1: 90.0, 2: 210.0, 3: 0.0}
    true = {1: 95.0, 2: 200.0, 3: 0.0}
    regions, groups = regional_change(base, pred, true, {"g": [1, 2]})
    assert set(regions) == {1, 2}  # an empty region has no % change
    assert regions[1].true_pct == pytest.approx(-5.0)
    assert regions[1].pred_pct == pytest.approx(-10.0)
    assert regions[1].error_pct == pytest.approx(-5.0)
    assert regions[2].error_pct == pytest.approx(5.0)
    assert groups["g"].true_pct == pytest.approx(-5 / 3)
    assert groups["g"].pred_pct == pytest.approx(0.0)
    assert groups["g"].error_pct == pytest.approx(5 / 3)


def test_regional_change_needs_every_label():
    with pytest.raises(MambaControlError, match="label 2 has a baseline volume but no predicted"):
        regional_change({1: 1.0, 2: 1.0}, {1: 1.0}, {1: 1.0, 2: 1.0})
    with pytest.raises(MambaControlError, match=r"key group 'g' names label\(s\) \[9\]"):
        regional_change({1: 1.0}, {1: 1.0}, {1: 1.0}, {"g": [1, 9]})
