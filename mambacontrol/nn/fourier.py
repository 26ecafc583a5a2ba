"""Fourier refinement: a learned filter on the lowest spatial frequencies, added as a residual."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mambacontrol.errors import MambaControlError


class FourierRefine(nn.Module):
    """``x + irfftn(W * rfftn(x))`` with one complex weight per channel and low-frequency mode.

    ``W`` covers the frequencies ``|k| < modes[i]`` of each axis (along the last axis, where the
    real FFT keeps only ``k >= 0``, the frequencies ``0 <= k < modes[-1]``) and is zero elsewhere.
    The kept set is symmetric, so a Hermitian ``W`` (for instance a real, even one) gives exactly
    the filter it describes. ``W`` starts at zero: the block starts as the identity. Works on
    (B, C, *spatial) tensors with ``len(modes)`` spatial axes, in float32 (float64 for float64
    inputs) whatever the autocast setting.

    Args:
        channels: C.
        modes: frequencies kept per spatial axis. A grid needs at least ``2 * modes[i] - 1``
            voxels along each axis but the last, and ``2 * modes[-1] - 2`` along the last.
    """

    def __init__(self, channels: int, modes: Sequence[int]):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels={channels!r} must be a positive integer")
        modes = tuple(modes)
        if not 1 <= len(modes) <= 3 or not all(isinstance(m, int) and m >= 1 for m in modes):
            raise ValueError(f"modes={modes!r} must hold 1 to 3 positive integers, one per axis")
        self.channels, self.modes = channels, modes
        kept = [2 * m - 1 for m in modes[:-1]] + [modes[-1]]
        # W as (real, imaginary) pairs; frequencies in FFT order: 0, 1, .., m-1, -(m-1), .., -1
        self.weight = nn.Parameter(torch.zeros(channels, *kept, 2))

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
        needed = tuple(2 * m - 1 for m in self.modes[:-1]) + (max(1, 2 * self.modes[-1] - 2),)
        if any(n < k for n, k in zip(grid, needed)):
            raise MambaControlError(f"grid {grid} is too small for modes {self.modes} (needs at "
                                    f"least {needed}); use fewer modes")
        axes = tuple(range(-dims, 0))
        kept = [torch.cat([torch.arange(m), torch.arange(n - m + 1, n)])
                for m, n in zip(self.modes[:-1], grid)] + [torch.arange(self.modes[-1])]
        window = (..., *torch.meshgrid(*[k.to(x.device) for k in kept], indexing="ij"))
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfftn(x.to(torch.promote_types(x.dtype, torch.float32)), dim=axes)
            filtered = torch.zeros_like(spectrum)
            weight = torch.view_as_complex(self.weight.to(spectrum.real.dtype))
            filtered[window] = spectrum[window] * weight
            update = torch.fft.irfftn(filtered, s=grid, dim=axes)
        return x + update.to(x.dtype)


class FourierRefine3d(FourierRefine):
    """:class:`FourierRefine` on (B, C, X, Y, Z) volumes, ``modes = (mx, my, mz)``."""

    def __init__(self, channels: int, modes: Sequence[int] = (8, 8, 8)):
        if len(tuple(modes)) != 3:
            raise ValueError(f"modes={tuple(modes)!r} must give 3 numbers (mx, my, mz)")
        super().__init__(channels, modes)
