"""Scan orders: the sequences in which a 3D block reads the voxels of an (X, Y, Z) grid.

Direction ``"x+"`` reads the grid as a raster in which x varies fastest, so neighbours along x
are neighbours in the sequence; of the two other axes the earlier one varies slowest (``"x+"``:
y, z, x; ``"y+"``: x, z, y; ``"z+"``: x, y, z). ``"x-"`` is the ``"x+"`` sequence reversed.
Tokens are numbered in C order of (X, Y, Z), as ``volume.flatten(2)`` gives them, so ``"z+"`` is
the identity.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

#: Every direction name: the axis that varies fastest, and forward (+) or reverse (-).
DIRECTIONS = ("x+", "x-", "y+", "y-", "z+", "z-")


def check_directions(directions) -> tuple[str, ...]:
    """Return ``directions`` as a tuple, or raise ``ValueError`` naming the bad entry."""
    if isinstance(directions, str) or not directions:
        raise ValueError(f"directions={directions!r} must be a non-empty sequence of names from "
                         f"{DIRECTIONS}")
    for name in directions:
        if name not in DIRECTIONS:
            raise ValueError(f"direction {name!r} is not one of {DIRECTIONS}")
    if len(set(directions)) != len(directions):
        raise ValueError(f"directions={tuple(directions)!r} repeats a direction; list each once")
    return tuple(directions)


def scan_order(shape: tuple[int, int, int], direction: str) -> Tensor:
    """Token numbers (C order of ``shape``) in the order ``direction`` reads them.

    Returns:
        (X * Y * Z,) int64 permutation: ``sequence = tokens[:, order]`` for (B, L, C) tokens.
    """
    check_directions((direction,))
    axis = "xyz".index(direction[0])
    others = [a for a in (0, 1, 2) if a != axis]  # the slowest axis first
    grid = torch.arange(shape[0] * shape[1] * shape[2]).view(*shape)
    order = grid.permute(*others, axis).reshape(-1)
    return order.flip(0) if direction[1] == "-" else order


@functools.lru_cache(maxsize=64)
def stacked_orders(shape: tuple[int, int, int], directions: tuple[str, ...],
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """The gather and merge indices of several directions, computed once per grid and device.

    Returns:
        ``(gather, merge)``, both (K * L,) int64 for K directions and L tokens:
        ``tokens.index_select(1, gather).view(B, K, L, C)`` holds the K sequences, and for
        ``seqs`` (B, K * L, C), ``seqs.index_select(1, merge).view(B, K, L, C)`` puts every
        sequence back in token order (the exact inverse permutations).
    """
    length = shape[0] * shape[1] * shape[2]
    orders = [scan_order(shape, d) for d in directions]
    gather = torch.cat(orders)
    merge = torch.cat([torch.argsort(o) + k * length for k, o in enumerate(orders)])
    return gather.to(device), merge.to(device)
