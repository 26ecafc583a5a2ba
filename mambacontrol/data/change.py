"""Percent change: the one formula for how much a volume (or any positive quantity) changed."""

from __future__ import annotations

import numpy as np


def percent_change(new: float | np.ndarray, base: float | np.ndarray = 1.0) -> float | np.ndarray:
    """``100 · (new / base − 1)``: the change from ``base`` to ``new`` in % of ``base``.

    With ``base`` left at 1, ``new`` is a ratio already (``percent_change(1.02)`` is 2 %).
    Computed in the inputs' dtype, elementwise for arrays of any (broadcastable) shape; a zero
    ``base`` gives inf/NaN (callers guard where that can happen).
    """
    return 100.0 * (new / base - 1.0)
