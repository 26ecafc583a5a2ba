"""Padding a latent grid up to what a multi-level network can halve, and cropping back.

A UNet of L levels halves the grid L − 1 times, so every axis must be a multiple of
``2 ** (L - 1)``. An 8× autoencoder on BrLP's 1.5 mm grid (120×144×120) gives a 15×18×15 latent;
BrLP pads its latent to 16×20×16. Here the UNet and the ControlNet pad their input the same way
(at the high end of each axis, replicating the border) and the UNet crops its output back, so the
rest of the package only ever sees the latent grid itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padding_for(shape: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Voxels to add at the high end of each spatial axis of ``shape`` to reach a multiple."""
    return tuple(-s % multiple for s in shape)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, C, x, y, z) -> (B, C, x', y', z'), each axis padded at its high end to a multiple of
    ``multiple`` by replicating the border voxels (unchanged when it already is one)."""
    extra = padding_for(tuple(x.shape[2:]), multiple)
    if not any(extra):
        return x
    # F.pad lists the last axis first: (z_low, z_high, y_low, y_high, x_low, x_high)
    pads = [p for e in reversed(extra) for p in (0, e)]
    return F.pad(x, pads, mode="replicate")


def crop_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, C, x', y', z') -> (B, C, *shape): the low corner, undoing :func:`pad_to_multiple`."""
    return x[(..., *(slice(0, s) for s in shape))]
