"""Regional trajectory head: each node's log volume ratio at age + Δt.

The head predicts an annual rate per node (% per year) and a curvature term, and scales them by
the horizon: ``log(V(t + Δt) / V(t)) = (Δt · rate + Δt² · curvature) / 100``. The rate is a
regional population prior (the mean annual change of each node per baseline diagnosis, fitted on
training pairs and stored in the config) plus a learned departure from it, read from the node
embedding (which carries the scan's features and the covariates). The learned part starts at
zero, so an untrained head predicts the regional population rate, and a zero horizon predicts no
change, exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from mambacontrol.data.covariates import NUM_COVARIATES
from mambacontrol.data.manifest import DIAGNOSES
from mambacontrol.errors import MambaControlError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.graph.encoder import GraphEncoder, check_graph_identity
from mambacontrol.nn.component import Component

_DX_COLUMNS = slice(3, 3 + len(DIAGNOSES))  # one-hot CN/MCI/AD in encode_covariates' output


class TrajectoryHead(Component):
    """Node embeddings (B, R, E), covariates (B, 6) and horizons (B,) → log volume ratios (B, R).

    Args:
        embed_dim: E.
        num_nodes: R.
        hidden: width of the per-node MLP.
        graph: the graph identity, as in :class:`GraphEncoder`.
        curvature: also predict a Δt² term (acceleration).
        prior_rate: (R, 3) annual % change of each node per baseline diagnosis (CN, MCI, AD)
            (None: zero, the head learns the whole rate).
    """

    @register_to_config
    def __init__(self, embed_dim: int, num_nodes: int, hidden: int = 64, graph: dict | None = None,
                 curvature: bool = True, prior_rate: list | None = None):
        super().__init__()
        if embed_dim < 1 or num_nodes < 1 or hidden < 1:
            raise ValueError(f"embed_dim {embed_dim}, num_nodes {num_nodes} and hidden {hidden} must be positive")
        prior = torch.zeros(num_nodes, len(DIAGNOSES)) if prior_rate is None else torch.tensor(prior_rate)
        if prior.shape != (num_nodes, len(DIAGNOSES)):
            raise ValueError(f"prior_rate must be ({num_nodes}, {len(DIAGNOSES)}); got {tuple(prior.shape)}")
        self.register_buffer("prior", prior.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 if curvature else 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def check_graph(self, graph: AnatomyGraph) -> None:
        """Raise :class:`ModelError` unless this head was built for ``graph``."""
        check_graph_identity(self.config.graph, graph, "this TrajectoryHead")

    def forward(self, node_embeddings: torch.Tensor, covariates: torch.Tensor, years: torch.Tensor) -> torch.Tensor:
        """Predict.

        Args:
            node_embeddings: (B, R, E).
            covariates: (B, 6) from :func:`encode_covariates` (the diagnosis selects the prior).
            years: (B,) horizons Δt in years.

        Returns:
            (B, R) predicted ``log(V(t + Δt) / V(t))`` per node.
        """
        r = self.prior.shape[0]
        if node_embeddings.dim() != 3 or node_embeddings.shape[1] != r:
            raise MambaControlError(f"node_embeddings of shape {tuple(node_embeddings.shape)} are not (B, {r}, E)")
        if covariates.shape != (node_embeddings.shape[0], NUM_COVARIATES):
            raise MambaControlError(f"covariates of shape {tuple(covariates.shape)} are not "
                                    f"({node_embeddings.shape[0]}, {NUM_COVARIATES})")
        out = self.mlp(node_embeddings)
        prior = covariates[:, _DX_COLUMNS].to(out.dtype) @ self.prior.T  # (B, R)
        t = years.to(out.dtype).reshape(-1, 1)
        log_ratio = t * (prior + out[..., 0])
        if out.shape[-1] == 2:
            log_ratio = log_ratio + t**2 * out[..., 1]
        return log_ratio / 100.0


@dataclass
class TrajectoryModel:
    """A graph encoder and trajectory head trained together.

    Saved as two component folders, ``encoder/`` and ``head/``.
    """

    encoder: GraphEncoder
    head: TrajectoryHead

    def save(self, directory: str | os.PathLike) -> Path:
        target = Path(directory)
        self.encoder.save(target / "encoder")
        self.head.save(target / "head")
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> TrajectoryModel:
        folder = Path(directory)
        return cls(GraphEncoder.load(folder / "encoder", device), TrajectoryHead.load(folder / "head", device))

    def check_graph(self, graph: AnatomyGraph) -> None:
        self.encoder.check_graph(graph)
        self.head.check_graph(graph)

    def parameters(self):
        yield from self.encoder.parameters()
        yield from self.head.parameters()

    def train(self, mode: bool = True) -> TrajectoryModel:
        self.encoder.train(mode)
        self.head.train(mode)
        return self

    def __call__(self, node_features: torch.Tensor, covariates: torch.Tensor, years: torch.Tensor) -> torch.Tensor:
        """(B, R, F) features, (B, 6) covariates, (B,) horizons → (B, R) log volume ratios."""
        emb, _ = self.encoder(node_features, covariates)
        return self.head(emb, covariates, years)

    @torch.no_grad()
    def predict(self, node_features, age, years, sex, diagnosis) -> np.ndarray:
        """Log volume ratio of every node for one or more scans.

        Args:
            node_features: (R, F) or (B, R, F) from :func:`node_features`.
            age, years, sex, diagnosis: as :func:`encode_covariates` (scalars or one per scan).

        Returns:
            (B, R) float64.
        """
        self.train(False)
        feats = torch.as_tensor(np.asarray(node_features), dtype=torch.float32, device=self.encoder.device)
        if feats.dim() == 2:
            feats = feats[None]
        cov = self.encoder.covariates(age, years, sex, diagnosis)
        if cov.shape[0] == 1 and feats.shape[0] > 1:
            cov = cov.expand(feats.shape[0], -1)
        yrs = torch.as_tensor(np.broadcast_to(np.asarray(years, dtype=np.float32), (feats.shape[0],)).copy(),
                              device=feats.device)
        return self(feats, cov, yrs).double().cpu().numpy()


def group_percent_change(graph: AnatomyGraph, log_ratio: np.ndarray, label_volumes: np.ndarray,
                         label_ids: Sequence[int], groups: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Predicted % volume change of label groups (e.g. the atlas's key groups).

    Each label's baseline volume is scaled by its node's predicted ratio, so any grouping works.

    Args:
        graph: the anatomy graph of the predictions.
        log_ratio: (N, R) predicted node log volume ratios.
        label_volumes: (N, L) baseline volume of each label, in the order of ``label_ids``.
        label_ids: the L labels.
        groups: name → labels.

    Returns:
        name → (N,) ``100 · (Σ predicted / Σ baseline − 1)``.
    """
    nodes = np.array([graph.label_to_node.get(int(lab), -1) for lab in label_ids])
    if (nodes < 0).any():
        missing = [int(lab) for lab, n in zip(label_ids, nodes) if n < 0][:5]
        raise MambaControlError(f"labels {missing} belong to no node of {graph!r}")
    col = {int(lab): i for i, lab in enumerate(label_ids)}
    ratio = np.exp(np.asarray(log_ratio, dtype=np.float64))[:, nodes]
    vols = np.asarray(label_volumes, dtype=np.float64)
    out = {}
    for name, labels in groups.items():
        idx = [col[int(lab)] for lab in labels]
        base = vols[:, idx].sum(axis=1)
        out[name] = 100.0 * ((vols[:, idx] * ratio[:, idx]).sum(axis=1) / base - 1.0)
    return out
