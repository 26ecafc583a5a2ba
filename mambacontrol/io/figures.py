"""What the package's figures share: an off-screen matplotlib figure, PNG output, slice picking.

Figures are drawn on the Agg canvas through matplotlib's object interface, never pyplot: no
display is needed, no global backend is switched and no figure is left registered anywhere.
PNGs are written without a timestamp, so the same data give the same bytes; ``import
mambacontrol.io`` does not import this module (nor matplotlib).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from mambacontrol.io.atomic import write_bytes_atomic


def new_figure(figsize: tuple[float, float], dpi: float | None = None) -> Figure:
    """An empty figure of ``figsize`` inches on an Agg canvas (``dpi``: matplotlib's default)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, *, dpi: float | None = None, tight: bool = False,
              software_stamp: bool = False) -> bytes:
    """``fig`` rendered as PNG.

    Args:
        fig: the figure.
        dpi: resolution; None keeps the figure's own.
        tight: crop to the drawn content (``bbox_inches="tight"``).
        software_stamp: keep matplotlib's ``Software`` entry (its version) in the PNG metadata;
            without it the bytes do not depend on the matplotlib version.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi="figure" if dpi is None else dpi,
                bbox_inches="tight" if tight else None,
                metadata=None if software_stamp else {"Software": None})
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, *, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` atomically (no software stamp); returns the path."""
    return write_bytes_atomic(path, png_bytes(fig, dpi=dpi))


def mask_centre(mask: np.ndarray) -> np.ndarray | None:
    """The mean voxel index ``(3,)`` (float) of a bool ``(X, Y, Z)`` mask; None when it is empty."""
    idx = np.argwhere(mask)
    return idx.mean(0) if len(idx) else None


def show_plane(ax: Axes, plane: np.ndarray, **imshow_kwargs) -> AxesImage:
    """Show an ``(A, B)`` slice of an RAS volume with ``A`` across (increasing to the right) and
    ``B`` up, one pixel per voxel (e.g. a coronal ``(X, Z)`` slice: superior up, the subject's
    left on the left)."""
    return ax.imshow(np.asarray(plane).T, origin="lower", interpolation="nearest",
                     **imshow_kwargs)
