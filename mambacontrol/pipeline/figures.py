"""Figures for people: a montage of a baseline, its prediction and the predicted change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mambacontrol.io.figures import mask_centre, new_figure, save_png


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of an (X, Y, Z) RAS volume, oriented for display."""
    x, y, z = centre
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def prediction_montage(baseline: np.ndarray, prediction: np.ndarray, mask: np.ndarray,
                       path: str | Path, title: str = "") -> Path:
    """Write a PNG: rows axial/coronal/sagittal; columns baseline, prediction, change.

    Args:
        baseline, prediction: (X, Y, Z) images on the model grid (RAS), intensities in [0, 1].
        mask: (X, Y, Z) brain mask (sets the slice centre).
        path: output PNG.
        title: figure title.
    """
    centre = mask_centre(mask)
    centre = tuple(int(v) for v in (np.array(baseline.shape) // 2 if centre is None else centre))
    change = np.where(mask, prediction - baseline, 0.0)
    lim = float(np.percentile(np.abs(change[mask]), 99.5)) if mask.any() else 1.0
    lim = lim if lim > 0 else 1e-3
    fig = new_figure((9, 9))
    axes = fig.subplots(3, 3)
    for row, (b, p, c) in enumerate(zip(_planes(baseline, centre), _planes(prediction, centre),
                                        _planes(change, centre))):
        axes[row, 0].imshow(b, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].imshow(p, cmap="gray", vmin=0, vmax=1)
        im = axes[row, 2].imshow(c, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for ax, name in zip(axes[0], ("baseline", "prediction", "predicted change")):
        ax.set_title(name)
    for ax in axes.ravel():
        ax.axis("off")
    fig.colorbar(im, ax=axes[:, 2], shrink=0.6, label="intensity change")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi=90)
