"""What steers the denoiser, built one way for training and for inference.

- the UNet's cross-attention context: a covariate token and the graph encoder's pooled tokens;
- the ControlNet's hint on the latent grid: the baseline latent ⊕ the graph's node embeddings
  painted onto the latent grid through the baseline's labels ⊕ the regional volume change
  expected at the horizon, painted the same way (:func:`change_map`; the ControlNet's
  ``change_hint``) ⊕ a constant Δt map.

The painting is the ControlNet's ``graph_painting``: ``soft`` weights each region by the fraction
of a latent voxel's image voxels it owns (every region with a voxel is present on any grid);
``majority`` gives a latent voxel its most frequent region's embedding (on the 12×14×12 latent
grids of the demo and of the 2 mm 8× autoencoder only 94 and 97 of the 134 regions survive, and
neither amygdala owns a latent voxel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mambacontrol.data.covariates import CovariateNorm
from mambacontrol.graph import majority_nodes, node_features, rasterize, region_fractions


@dataclass(eq=False)
class GraphScanInputs:
    """A scan's inputs to the graph encoder.

    Attributes:
        features: (R, F) raw node features (``mambacontrol.graph.node_features``).
        assignment: how nodes map to latent voxels (:func:`~mambacontrol.graph.rasterize`
            takes both): ``soft`` painting, (R, x, y, z) float16 region fractions of each
            latent voxel's block of image voxels (exact: multiples of 1/factor³; half the
            memory of a training set's scans); ``majority``, (x, y, z) int64 node index of
            its most frequent region (−1 background).
    """

    features: torch.Tensor
    assignment: torch.Tensor


def graph_scan_inputs(image: np.ndarray, labels: np.ndarray, graph, factor: int,
                      painting: str = "soft",
                      affine: np.ndarray | None = None) -> GraphScanInputs:
    """Node features and the latent-grid node assignment of one scan.

    Args:
        image: (X, Y, Z) normalised image on the graph's grid.
        labels: (X, Y, Z) atlas label ids.
        graph: the :class:`~mambacontrol.graph.AnatomyGraph`.
        factor: image grid size / latent grid size.
        painting: ``soft`` or ``majority`` (module docstring; the ControlNet's
            ``graph_painting``).
        affine: the image's affine (default: the graph's grid).
    """
    paint = {"soft": region_fractions, "majority": majority_nodes}.get(painting)
    if paint is None:
        raise ValueError(f"painting '{painting}' is not soft or majority")
    feats = node_features(image, labels, graph, affine)
    assignment = paint(labels, graph, factor)
    if assignment.is_floating_point():
        assignment = assignment.half()
    return GraphScanInputs(torch.from_numpy(np.asarray(feats, dtype=np.float32)), assignment)


def delta_t_map(years: torch.Tensor, norm: CovariateNorm, like: torch.Tensor) -> torch.Tensor:
    """(B,) horizons -> (B, 1, x, y, z) constant maps of the normalised horizon, shaped like
    ``like``."""
    b = like.shape[0]
    years = years.to(like.device, like.dtype).reshape(-1)
    if years.numel() == 1:
        years = years.expand(b)
    return (years / norm.years_scale).view(b, 1, 1, 1, 1).expand(b, 1, *like.shape[2:])


CHANGE_UNIT_PERCENT = 10.0
"""The change map's unit: a value of −1 is a log volume ratio of −10 %, so the map is of order 1,
as the hint's other channels are."""


def change_map(log_ratio: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Paint regional volume changes onto the latent grid, as the graph map is painted.

    Args:
        log_ratio: (B, R) log volume ratio of each graph node at the horizon (the trajectory
            head's prediction, or the pair's truth).
        assignment: the scan's node assignment (:class:`GraphScanInputs`; soft fractions or a
            majority index map, one per row or one for all).

    Returns:
        (B, 1, x, y, z) in units of :data:`CHANGE_UNIT_PERCENT` % (log ratio × 10); zero on
        background.
    """
    scaled = log_ratio * (100.0 / CHANGE_UNIT_PERCENT)
    return rasterize(scaled[..., None], assignment.to(log_ratio.device))


def hint_channels(latent_channels: int, graph_dim: int, change: bool = False) -> int:
    """Channels of the ControlNet hint: latent + graph embedding (0 without a graph) + the change
    map (``change``) + Δt."""
    return latent_channels + graph_dim + int(change) + 1


def hint_uses_graph(hint_channels_: int, latent_channels: int, change: bool = False) -> bool:
    """Whether a ControlNet with this many hint channels (and ``change_hint`` ``change``) expects
    the graph map."""
    return hint_channels_ > latent_channels + int(change) + 1


def build_hint(z_base: torch.Tensor, years: torch.Tensor, norm: CovariateNorm,
               graph_map: torch.Tensor | None,
               change: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C_z, x, y, z) baseline latent ⊕ (B, E, x, y, z) graph map ⊕ (B, 1, x, y, z) change map
    ⊕ Δt map -> the hint (the maps given as None are left out)."""
    parts = [z_base]
    for name, extra in (("graph map", graph_map), ("change map", change)):
        if extra is None:
            continue
        if extra.shape[2:] != z_base.shape[2:]:
            raise ValueError(f"{name} grid {tuple(extra.shape[2:])} differs from the latent "
                             f"grid {tuple(z_base.shape[2:])}")
        parts.append(extra.to(z_base.dtype))
    parts.append(delta_t_map(years, norm, z_base))
    return torch.cat(parts, dim=1)


def encode_graph(encoder, features: torch.Tensor, assignment: torch.Tensor,
                 covariates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the graph encoder and paint its node embeddings onto the latent grid.

    Args:
        encoder: a :class:`~mambacontrol.graph.GraphEncoder`.
        features: (B, R, F) raw node features.
        assignment: a :class:`GraphScanInputs` assignment, one per row or one for all (soft:
            (B, R, x, y, z) or (R, x, y, z); majority: (B, x, y, z) or (x, y, z)).
        covariates: (B, 6).

    Returns:
        node embeddings (B, R, E), pooled tokens (B, T, E), graph map (B, E, x, y, z).
    """
    nodes, tokens = encoder(features, covariates)
    return nodes, tokens, rasterize(nodes, assignment.to(nodes.device))
