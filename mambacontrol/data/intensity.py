"""Intensity normalisation shared by the atlas, training and inference."""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalize_intensity(image: np.ndarray, mask: np.ndarray, low: float = LOW_PERCENTILE,
                        high: float = HIGH_PERCENTILE) -> np.ndarray:
    """Map brain intensities to [0, 1] by robust percentiles; zero outside the brain.

    Args:
        image: (X, Y, Z) intensities in any scanner units.
        mask: (X, Y, Z) brain mask (bool or 0/1).
        low, high: percentiles (inside the mask) mapped to 0 and 1.

    Returns:
        (X, Y, Z) float32 image, clipped to [0, 1], zero outside the mask.
    """
    mask = np.asarray(mask) > 0
    lo, hi = intensity_range(image, mask, low, high)
    out = np.clip((np.asarray(image, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.where(mask, out, 0.0).astype(np.float32)


def intensity_range(image: np.ndarray, mask: np.ndarray, low: float = LOW_PERCENTILE,
                    high: float = HIGH_PERCENTILE) -> tuple[float, float]:
    """The intensities that :func:`normalize_intensity` maps to 0 and 1 (``hi − lo`` converts a
    change of normalised intensity back into the image's units).

    Raises:
        ValueError: for an empty mask or an image constant inside it.
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        raise ValueError("brain mask is empty: cannot normalise intensities")
    lo, hi = np.percentile(np.asarray(image, dtype=np.float64)[mask], [low, high])
    if hi <= lo:
        raise ValueError("image is constant inside the brain mask: cannot normalise intensities")
    return float(lo), float(hi)
