"""Image, change and regional-volume metrics of one predicted follow-up, inside the brain mask.

Images are intensity-normalised to [0, 1] (``mambacontrol.data.normalize_intensity``), so every
intensity metric uses a data range of 1. Volumes are ``(X, Y, Z)`` numpy arrays or torch tensors
on one grid; the brain mask is a boolean ``(X, Y, Z)`` array of the same shape.

The arithmetic is MONAI's (``MAEMetric``, ``MSEMetric``, ``PSNRMetric``, ``compute_ssim_and_cs``,
``compute_dice``); this module only decides which voxels enter it:

* **MAE, MSE, PSNR** — over the voxels of the mask: MONAI's metric is applied to the two vectors
  of masked intensities, shape ``(1, 1, N)``. PSNR is ``10·log10(1 / MSE)`` from that masked MSE,
  capped at :data:`PSNR_CAP_DB` (identical images would give +∞, which no mean survives).
* **SSIM** — MONAI's local SSIM map (Gaussian window, ``win_size`` voxels, σ = 1.5, k1 = 0.01,
  k2 = 0.03) on the whole volume, averaged over the windows whose centre lies in the mask. The map
  is a valid convolution, ``win_size − 1`` voxels shorter per axis, so mask voxels closer than
  ``win_size // 2`` to the volume's edge have no window and are left out.
* **change MAE** — the predicted change ``x̂ − x_base`` against the true change
  ``x_follow − x_base``, averaged over the *true-change region* ``mask ∩ {|Δ_true| > τ}``.
  Over the whole mask this number would equal the image MAE exactly (the baseline cancels), so it
  is taken where the brain actually changed; the region is the same for every method on a pair,
  so methods stay comparable. A pair with an empty true-change region gives NaN.
* **change Dice** — Dice of ``mask ∩ {|Δ̂| > τ}`` against ``mask ∩ {|Δ_true| > τ}``: 1 when both
  are empty (nothing changed and nothing was predicted), 0 when exactly one is.

``τ`` (:data:`DEFAULT_CHANGE_THRESHOLD`, 0.05 of the intensity range) should sit above the
scan-to-scan noise of the data; pass another value when it does not.

Regional volume change error: see :func:`regional_change`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import MAEMetric, MSEMetric, PSNRMetric, compute_dice
from monai.metrics.regression import compute_ssim_and_cs

from mambacontrol.errors import MambaControlError

DATA_RANGE = 1.0
PSNR_CAP_DB = 100.0
DEFAULT_CHANGE_THRESHOLD = 0.05
DEFAULT_SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(name: str, array: ArrayLike, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A detached CPU tensor copy of a 3D array (the input is never modified)."""
    if isinstance(array, torch.Tensor):
        t = array.detach().to(device="cpu", dtype=dtype)
    else:
        t = torch.from_numpy(np.array(array)).to(dtype=dtype)
    if t.ndim != 3:
        raise MambaControlError(f"{name} has shape {tuple(t.shape)}; expected one (X, Y, Z) volume")
    return t


def _check_inputs(mask: ArrayLike,
                  **images: ArrayLike) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m = _as_tensor("mask", mask, torch.bool)
    if not bool(m.any()):
        raise MambaControlError("the brain mask is empty; pass the (X, Y, Z) mask of the brain")
    out = {}
    for name, img in images.items():
        t = _as_tensor(name, img)
        if t.shape != m.shape:
            raise MambaControlError(f"{name} has shape {tuple(t.shape)} but the mask has "
                                    f"{tuple(m.shape)}; resample both onto one grid")
        if not bool(torch.isfinite(t[m]).all()):
            raise MambaControlError(f"{name} has NaN or infinite values inside the brain mask")
        out[name] = t
    return m, out


def _masked_vectors(mask: torch.Tensor, *images: torch.Tensor) -> list[torch.Tensor]:
    """Each image's masked voxels as a ``(1, 1, N)`` batch for MONAI's regression metrics."""
    return [img[mask].reshape(1, 1, -1) for img in images]


def masked_mae(prediction: ArrayLike, target: ArrayLike, mask: ArrayLike) -> float:
    """Mean absolute error over the mask voxels (MONAI ``MAEMetric``). Arrays ``(X, Y, Z)``."""
    m, t = _check_inputs(mask, prediction=prediction, target=target)
    p, y = _masked_vectors(m, t["prediction"], t["target"])
    return float(MAEMetric(reduction="none")(p, y).item())


def masked_mse(prediction: ArrayLike, target: ArrayLike, mask: ArrayLike) -> float:
    """Mean squared error over the mask voxels (MONAI ``MSEMetric``). Arrays ``(X, Y, Z)``."""
    m, t = _check_inputs(mask, prediction=prediction, target=target)
    p, y = _masked_vectors(m, t["prediction"], t["target"])
    return float(MSEMetric(reduction="none")(p, y).item())


def masked_psnr(prediction: ArrayLike, target: ArrayLike, mask: ArrayLike) -> float:
    """PSNR in dB from the masked MSE, data range 1 (MONAI ``PSNRMetric``), capped at
    :data:`PSNR_CAP_DB`. Arrays ``(X, Y, Z)``."""
    m, t = _check_inputs(mask, prediction=prediction, target=target)
    p, y = _masked_vectors(m, t["prediction"], t["target"])
    value = float(PSNRMetric(max_val=DATA_RANGE, reduction="none")(p, y).item())
    return min(value, PSNR_CAP_DB)


def masked_ssim(prediction: ArrayLike, target: ArrayLike, mask: ArrayLike,
                win_size: int = DEFAULT_SSIM_WINDOW) -> float:
    """SSIM map (MONAI's 3D Gaussian-window SSIM, data range 1) averaged over the mask.

    Args:
        prediction: ``(X, Y, Z)`` predicted image.
        target: ``(X, Y, Z)`` true image.
        mask: ``(X, Y, Z)`` bool brain mask.
        win_size: odd window size in voxels (MONAI's default 11); every axis must be longer.

    Returns:
        The mean SSIM over the windows centred on mask voxels (see the module docstring).
    """
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size={win_size}: the SSIM window must be an odd number ≥ 3")
    m, t = _check_inputs(mask, prediction=prediction, target=target)
    if min(m.shape) <= win_size:
        raise MambaControlError(f"volume shape {tuple(m.shape)} is not longer than the SSIM window "
                                f"({win_size}) on every axis; use a smaller win_size")
    ssim_map, _ = compute_ssim_and_cs(
        t["prediction"].float()[None, None], t["target"].float()[None, None], spatial_dims=3,
        kernel_size=(win_size,) * 3, kernel_sigma=(SSIM_SIGMA,) * 3, data_range=DATA_RANGE)
    h = win_size // 2
    centres = m[h:-h, h:-h, h:-h]
    if not bool(centres.any()):
        raise MambaControlError(f"no mask voxel lies {h} voxels inside the volume's edge; "
                                "SSIM has no window to average")
    return float(ssim_map[0, 0][centres].double().mean().item())


def _changed(image: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor,
             threshold: float) -> torch.Tensor:
    return ((image - baseline).abs() > threshold) & mask


def change_region(baseline: ArrayLike, image: ArrayLike, mask: ArrayLike,
                  threshold: float = DEFAULT_CHANGE_THRESHOLD) -> np.ndarray:
    """The voxels that changed: ``mask ∩ {|image − baseline| > threshold}``, bool ``(X, Y, Z)``."""
    m, t = _check_inputs(mask, baseline=baseline, image=image)
    return _changed(t["image"], t["baseline"], m, threshold).numpy()


def change_mae(prediction: ArrayLike, baseline: ArrayLike, target: ArrayLike, mask: ArrayLike,
               threshold: float = DEFAULT_CHANGE_THRESHOLD) -> float:
    """MAE of the predicted change ``x̂ − x_base`` against the true change ``x_follow − x_base``
    over the true-change region ``mask ∩ {|Δ_true| > threshold}``; NaN when that region is empty.

    Arrays are ``(X, Y, Z)``; see the module docstring for why the region is not the whole mask.
    """
    m, t = _check_inputs(mask, prediction=prediction, baseline=baseline, target=target)
    region = _changed(t["target"], t["baseline"], m, threshold)
    if not bool(region.any()):
        return math.nan
    p, y = _masked_vectors(region, t["prediction"] - t["baseline"], t["target"] - t["baseline"])
    return float(MAEMetric(reduction="none")(p, y).item())


def change_dice(prediction: ArrayLike, baseline: ArrayLike, target: ArrayLike, mask: ArrayLike,
                threshold: float = DEFAULT_CHANGE_THRESHOLD) -> float:
    """Dice (MONAI ``compute_dice``) of the predicted against the true change region.

    Regions are ``mask ∩ {|x − x_base| > threshold}``. Both empty gives 1 (agreement that
    nothing changed); exactly one empty gives 0. Arrays are ``(X, Y, Z)``.
    """
    m, t = _check_inputs(mask, prediction=prediction, baseline=baseline, target=target)
    predicted = _changed(t["prediction"], t["baseline"], m, threshold)
    true = _changed(t["target"], t["baseline"], m, threshold)
    dice = compute_dice(predicted[None, None].float(), true[None, None].float(), ignore_empty=False)
    return float(dice.item())


def image_metrics(prediction: ArrayLike, baseline: ArrayLike, target: ArrayLike, mask: ArrayLike, *,
                  threshold: float = DEFAULT_CHANGE_THRESHOLD,
                  ssim_window: int = DEFAULT_SSIM_WINDOW) -> dict[str, float]:
    """Every voxel metric of one predicted follow-up.

    Args:
        prediction: ``(X, Y, Z)`` predicted follow-up ``x̂``.
        baseline: ``(X, Y, Z)`` baseline scan ``x_base``.
        target: ``(X, Y, Z)`` true follow-up ``x_follow``.
        mask: ``(X, Y, Z)`` bool brain mask.
        threshold: the change threshold τ in intensity units.
        ssim_window: SSIM window in voxels.

    Returns:
        ``{"mae", "mse", "psnr", "ssim", "change_mae", "change_dice"}`` (see :data:`METRICS`).
    """
    return {
        "mae": masked_mae(prediction, target, mask),
        "mse": masked_mse(prediction, target, mask),
        "psnr": masked_psnr(prediction, target, mask),
        "ssim": masked_ssim(prediction, target, mask, ssim_window),
        "change_mae": change_mae(prediction, baseline, target, mask, threshold),
        "change_dice": change_dice(prediction, baseline, target, mask, threshold),
    }


@dataclass(frozen=True)
class VolumeChange:
    """A region's volume change in % of its baseline volume, true and predicted.

    Attributes:
        true_pct: ``100 · (V_true − V_base) / V_base``.
        pred_pct: ``100 · (V̂ − V_base) / V_base``.
    """

    true_pct: float
    pred_pct: float

    @property
    def error_pct(self) -> float:
        """Signed error ``100 · (V̂ − V_true) / V_base``: negative when the prediction shrinks the
        region more than the truth."""
        return self.pred_pct - self.true_pct


def _change_pct(base: float, other: float) -> float:
    # Not data.change.percent_change: ``(other - base) / base`` is how every published
    # metrics.json was computed, and it differs from ``other / base - 1`` in the last bits.
    return 100.0 * (other - base) / base


def regional_change(baseline_volumes: Mapping[int, float], predicted_volumes: Mapping[int, float],
                    true_volumes: Mapping[int, float],
                    key_groups: Mapping[str, Sequence[int]] | None = None,
                    ) -> tuple[dict[int, VolumeChange], dict[str, VolumeChange]]:
    """Regional volume change, true and predicted, in % of the baseline volume.

    The three volume maps (label → mm³) must come from one measurement, e.g. the sub-voxel
    Jacobian integral of ``mambacontrol.registration.measure_regional_volumes`` applied from the
    baseline to the prediction and to the true follow-up. A key group's volume is the sum over
    its labels (``Atlas.key_groups``), so its change is volume-weighted.

    Args:
        baseline_volumes: label → baseline volume in mm³.
        predicted_volumes: label → predicted follow-up volume in mm³.
        true_volumes: label → true follow-up volume in mm³.
        key_groups: group name → labels; ``None`` gives no groups.

    Returns:
        ``(per_region, per_group)``: label → :class:`VolumeChange` for every label of the baseline
        with a positive volume, and group name → :class:`VolumeChange`.

    Raises:
        MambaControlError: when a label is missing from the predicted or true volumes, or a group
            names a label with no baseline volume.
    """
    per_region: dict[int, VolumeChange] = {}
    for label, base in baseline_volumes.items():
        for name, vols in (("predicted", predicted_volumes), ("true", true_volumes)):
            if label not in vols:
                raise MambaControlError(f"label {label} has a baseline volume but no {name} "
                                        "volume; measure every region of the baseline")
        if base > 0:
            per_region[int(label)] = VolumeChange(_change_pct(base, true_volumes[label]),
                                                  _change_pct(base, predicted_volumes[label]))
    per_group: dict[str, VolumeChange] = {}
    for group, labels in (key_groups or {}).items():
        missing = [lab for lab in labels if lab not in baseline_volumes]
        if missing:
            raise MambaControlError(f"key group '{group}' names label(s) {missing} with no "
                                    "baseline volume; measure every region of the atlas")
        base = sum(baseline_volumes[lab] for lab in labels)
        if base > 0:
            per_group[group] = VolumeChange(
                _change_pct(base, sum(true_volumes[lab] for lab in labels)),
                _change_pct(base, sum(predicted_volumes[lab] for lab in labels)))
    return per_region, per_group


@dataclass(frozen=True)
class MetricSpec:
    """How to show and rank a metric.

    Attributes:
        label: column heading in plain words.
        unit: unit shown beside values ("" when unitless).
        higher_is_better: ranking direction.
        description: one sentence for the reader.
        digits: decimals shown.
    """

    label: str
    unit: str
    higher_is_better: bool
    description: str
    digits: int = 3


METRICS: dict[str, MetricSpec] = {
    "mae": MetricSpec("MAE", "", False, "Mean absolute intensity error inside the brain "
                      "(intensities scaled to 0–1)."),
    "mse": MetricSpec("MSE", "", False, "Mean squared intensity error inside the brain.", 4),
    "psnr": MetricSpec("PSNR", "dB", True, "Peak signal-to-noise ratio from the brain MSE; "
                       "copying the baseline already scores high here.", 2),
    "ssim": MetricSpec("SSIM", "", True, "Structural similarity, averaged over the brain."),
    "change_mae": MetricSpec("Change MAE", "", False, "Error of the predicted change image "
                             "against the true change, where the brain truly changed."),
    "change_dice": MetricSpec("Change Dice", "", True, "Overlap of where the prediction changed "
                              "with where the brain truly changed (0–1)."),
}
"""Voxel metrics of :func:`image_metrics`, in display order."""

VOLUME_ERROR = MetricSpec("volume change error", "%", False,
                          "Absolute error of the predicted regional volume change, in % of the "
                          "baseline volume.", 2)
"""How regional volume change errors are shown (absolute value of
:attr:`VolumeChange.error_pct`)."""
