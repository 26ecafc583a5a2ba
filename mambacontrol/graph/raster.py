"""Paint node embeddings back onto a voxel or latent grid through a label map.

This is the spatial form of the graph the ControlNet receives: each voxel (or each block of
``factor³`` voxels of a latent grid) carries the embedding of the region it belongs to, or the
mixture of the regions it overlaps, weighted by their voxel fractions.
"""

from __future__ import annotations

import numpy as np
import torch

from mambacontrol.errors import MambaControlError
from mambacontrol.graph.anatomy import AnatomyGraph


def _blocks(node_map: np.ndarray, factor: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Split a node map into ``factor³`` blocks.

    Returns:
        the coarse shape (x, y, z), and (factor³, x·y·z) node indices: row o holds the voxel at
        offset o inside every block.
    """
    if factor < 1:
        raise MambaControlError(f"downsampling factor {factor} must be a positive integer")
    shape = node_map.shape
    if any(s % factor for s in shape):
        raise MambaControlError(f"label map shape {shape} is not divisible by factor {factor}; "
                                "use a factor that divides every axis (the latent grid's stride)")
    x, y, z = (s // factor for s in shape)
    f = factor
    blocks = node_map.reshape(x, f, y, f, z, f).transpose(1, 3, 5, 0, 2, 4).reshape(f**3, x * y * z)
    return (x, y, z), blocks


def region_fractions(labels: np.ndarray, graph: AnatomyGraph, factor: int = 1) -> torch.Tensor:
    """Soft region membership on a grid downsampled by an integer factor.

    Args:
        labels: (X, Y, Z) integer label map on the graph's grid.
        graph: the anatomy graph (defines the nodes).
        factor: block size; 1 keeps the voxel grid (one-hot memberships).

    Returns:
        (R, X/factor, Y/factor, Z/factor) float32: the fraction of each block's voxels that belong
        to each node. Fractions of a block sum to its brain fraction (≤ 1).

    Raises:
        MambaControlError: when the shape is not divisible by ``factor``.
    """
    (x, y, z), blocks = _blocks(graph.node_map(labels), factor)
    r, nb = graph.num_nodes, x * y * z
    out = np.zeros((r, nb), dtype=np.float32)
    cols = np.arange(nb)
    weight = np.float32(1.0 / factor**3)
    for row in blocks:  # within one offset every block appears once: no repeated (node, block)
        inside = row >= 0
        out[row[inside], cols[inside]] += weight
    return torch.from_numpy(out.reshape(r, x, y, z))


def majority_nodes(labels: np.ndarray, graph: AnatomyGraph, factor: int = 1) -> torch.Tensor:
    """Hard assignment of each block to its most frequent node.

    Background counts as a class of its own and wins ties, so blocks that are mostly outside the
    brain stay empty.

    Args:
        labels: (X, Y, Z) integer label map on the graph's grid.
        graph: the anatomy graph.
        factor: block size; 1 keeps the voxel grid.

    Returns:
        (X/factor, Y/factor, Z/factor) int64 node index, −1 for background.
    """
    (x, y, z), blocks = _blocks(graph.node_map(labels), factor)
    counts = np.zeros((graph.num_nodes + 1, x * y * z), dtype=np.int32)
    cols = np.arange(x * y * z)
    for row in blocks:
        counts[row + 1, cols] += 1
    return torch.from_numpy(counts.argmax(axis=0).astype(np.int64).reshape(x, y, z) - 1)


def rasterize(node_embeddings: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Paint node embeddings onto a grid.

    Args:
        node_embeddings: (B, R, E).
        assignment: either soft fractions, float (R, x, y, z) or (B, R, x, y, z)
            (:func:`region_fractions`), or a hard node index map, integer (x, y, z) or
            (B, x, y, z) with −1 for background (:func:`majority_nodes`, ``graph.node_map``).

    Returns:
        (B, E, x, y, z): at each voxel the fraction-weighted sum of the embeddings of its nodes;
        zero on background.

    Raises:
        MambaControlError: when the number of nodes or the batch size disagree.
    """
    if node_embeddings.dim() != 3:
        raise MambaControlError(f"node_embeddings of shape {tuple(node_embeddings.shape)} are not "
                                "(B, R, E)")
    b, r, e = node_embeddings.shape
    if assignment.is_floating_point():
        if assignment.dim() not in (4, 5) or assignment.shape[-4] != r:
            raise MambaControlError(f"fractions of shape {tuple(assignment.shape)} are not "
                                    f"(R, x, y, z) or (B, R, x, y, z) with R = {r}")
        frac = assignment.to(node_embeddings.dtype)
        if frac.dim() == 4:
            return torch.einsum("bre,rxyz->bexyz", node_embeddings, frac)
        if frac.shape[0] != b:
            raise MambaControlError(f"fractions have batch {frac.shape[0]}, embeddings {b}")
        return torch.einsum("bre,brxyz->bexyz", node_embeddings, frac)
    if assignment.dim() not in (3, 4):
        raise MambaControlError(f"node index map of shape {tuple(assignment.shape)} is not "
                                "(x, y, z) or (B, x, y, z)")
    if assignment.numel() and (int(assignment.max()) >= r or int(assignment.min()) < -1):
        raise MambaControlError(f"node index map holds values outside −1…{r - 1}; build it with "
                                "the same graph")
    # row 0: background
    padded = torch.cat([node_embeddings.new_zeros(b, 1, e), node_embeddings], dim=1)
    idx = assignment.long() + 1
    if idx.dim() == 3:
        painted = padded[:, idx]  # (B, x, y, z, E)
    else:
        if idx.shape[0] != b:
            raise MambaControlError(f"node index map has batch {idx.shape[0]}, embeddings {b}")
        painted = padded[torch.arange(b, device=idx.device)[:, None, None, None], idx]
    return painted.permute(0, 4, 1, 2, 3)
