"""A residual 3D Mamba block: multi-directional scans over the voxels of a feature volume."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mambacontrol.errors import MambaControlError
from mambacontrol.nn.mamba import Mamba
from mambacontrol.nn.scan_order import DIRECTIONS, check_directions, stacked_orders


class MambaBlock3d(nn.Module):
    """``x + mean_k unscan_k(Mamba_k(scan_k(LayerNorm(x))))`` on (B, C, X, Y, Z) volumes.

    Each scan direction k reads the voxels as a sequence (:mod:`mambacontrol.nn.scan_order`); the
    Mamba outputs go back to their voxels through the exact inverse permutation and are averaged.
    With ``share_weights`` one mixer serves every direction: its input projection then runs once
    and its (affine) output projection once on the average, which is the same as averaging full
    mixer outputs, at a fraction of the cost. The block runs in float32 (float64 for float64
    inputs) whatever the autocast setting, and returns the input's dtype.

    Args:
        channels: C, the token width (``d_model`` of the mixer).
        d_state, d_conv, expand: mixer settings (:class:`mambacontrol.nn.Mamba`).
        directions: scan directions, names from :data:`DIRECTIONS`.
        share_weights: one mixer for every direction, or one per direction.
        backend: selective-scan backend.
    """

    def __init__(self, channels: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 directions: Sequence[str] = DIRECTIONS, share_weights: bool = True,
                 backend: str = "auto"):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels={channels!r} must be a positive integer")
        self.channels = channels
        self.directions = check_directions(directions)
        self.share_weights = share_weights
        self.norm = nn.LayerNorm(channels)
        self.mixers = nn.ModuleList(
            Mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
            for _ in range(1 if share_weights else len(self.directions)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, C, X, Y, Z).

        Raises:
            MambaControlError: ``x`` is not 5-D with ``channels`` channels.
        """
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise MambaControlError(f"MambaBlock3d got shape {tuple(x.shape)}; needs "
                                    f"(B, C, X, Y, Z) with C = {self.channels}")
        batch, channels, *grid = x.shape
        length, count = grid[0] * grid[1] * grid[2], len(self.directions)
        gather, merge = stacked_orders(tuple(grid), self.directions, x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            volume = x.to(torch.promote_types(x.dtype, torch.float32))
            tokens = self.norm(volume.flatten(2).transpose(1, 2))  # (B, L, C)
            if self.share_weights:
                mixer = self.mixers[0]
                xz = mixer.in_proj(tokens).index_select(1, gather)  # (B, K * L, 2E)
                xz = xz.view(batch * count, length, -1).transpose(1, 2)
                y = mixer.mix(xz).transpose(1, 2).reshape(batch, count * length, -1)
                y = y.index_select(1, merge).view(batch, count, length, -1).mean(1)
                out = mixer.out_proj(y)
            else:
                out = 0
                for k, mixer in enumerate(self.mixers):
                    window = slice(k * length, (k + 1) * length)
                    seq = mixer(tokens.index_select(1, gather[window]))
                    out = out + seq.index_select(1, merge[window] - k * length)
                out = out / count
            result = volume + out.transpose(1, 2).reshape(batch, channels, *grid)
        return result.to(x.dtype)
