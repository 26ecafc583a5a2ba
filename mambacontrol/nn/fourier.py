"""Fourier refinement: a learned filter on the lowest spatial frequencies, added as a residual."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mambacontrol.errors import MambaControlError


class FourierRefine(nn.Module):
    """``x + irfftn(W * rfftn(x))`` with one complex weight per channel and low-frequency mode.

    ``W`` covers the ``modes[i]`` lowest frequencies of each axis, positive and negative (except
    along the last axis, where the real FFT keeps only non-negative ones), and is zero elsewhere.
    It starts at zero, so the block starts as the identity. Works on (B, C, *spatial) tensors
    with ``len(modes)`` spatial axes, in float32 whatever the autocast setting.

    Args:
        channels: C.
        modes: number of frequencies kept per spatial axis. A grid needs at least
            ``2 * modes[i]`` voxels along each axis but the last, and ``2 * modes[-1] - 2`` along
            the last.
    """

    def __init__(self, channels: int, modes: Sequence[int]):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels={channels!r} must be a positive integer")
        modes = tuple(modes)
        if not 1 <= len(modes) <= 3 or not all(isinstance(m, int) and m >= 1 for m in modes):
            raise ValueError(f"modes={modes!r} must hold 1 to 3 positive integers, one per axis")
        self.channels, self.modes = channels, modes
        corners = 2 ** (len(modes) - 1)  # sign combinations of the frequencies on the full axes
        self.weight = nn.Parameter(torch.zeros(corners, channels, *modes, 2))  # (real, imaginary)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, *spatial) -> same shape and dtype.

        Raises:
            MambaControlError: the wrong number of axes or channels, or a grid too small for
                ``modes``.
        """
        dims = len(self.modes)
        if x.dim() != dims + 2 or x.shape[1] != self.channels:
            raise MambaControlError(f"{type(self).__name__} got shape {tuple(x.shape)}; needs "
                                    f"(B, C, {dims} spatial axes) with C = {self.channels}")
        grid = tuple(x.shape[2:])
        needed = tuple(2 * m for m in self.modes[:-1]) + (max(1, 2 * self.modes[-1] - 2),)
        if any(n < k for n, k in zip(grid, needed)):
            raise MambaControlError(f"grid {grid} is too small for modes {self.modes} (needs at "
                                    f"least {needed}); use fewer modes")
        axes = tuple(range(-dims, 0))
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfftn(x.float(), dim=axes)
            filtered = torch.zeros_like(spectrum)
            weight = torch.view_as_complex(self.weight)
            for corner, signs in enumerate(itertools.product((1, -1), repeat=dims - 1)):
                window = [slice(0, m) if s > 0 else slice(n - m, n)
                          for s, m, n in zip(signs, self.modes, grid)]
                window = (..., *window, slice(0, self.modes[-1]))
                filtered[window] = spectrum[window] * weight[corner]
            update = torch.fft.irfftn(filtered, s=grid, dim=axes)
        return x + update.to(x.dtype)


class FourierRefine3d(FourierRefine):
    """:class:`FourierRefine` on (B, C, X, Y, Z) volumes, ``modes = (mx, my, mz)``."""

    def __init__(self, channels: int, modes: Sequence[int] = (8, 8, 8)):
        if len(tuple(modes)) != 3:
            raise ValueError(f"modes={tuple(modes)!r} must give 3 numbers (mx, my, mz)")
        super().__init__(channels, modes)
