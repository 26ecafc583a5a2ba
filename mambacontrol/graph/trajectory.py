"""Regional trajectory head: each node's log volume ratio at age + Δt.

The head predicts an annual rate per node (% per year) and a curvature term, and scales them by
the horizon: ``log(V(t + Δt) / V(t)) = (Δt · rate + Δt² · curvature) / 100``.

The rate is a regional population prior plus a learned departure from it. The prior is linear in
the covariates, per node: for the baseline diagnosis d, ``a_d + b_d · age`` by default
(:func:`prior_design`; optional terms in sex and in Δt, the latter letting the rate grow over long
horizons as conversions do), fitted by least squares on the training pairs' annual log volume
change and stored in the config. The
departure is read from the node embedding (the scan's features, the graph and the covariates). It
starts at zero, so an untrained head predicts the prior, and a zero horizon predicts no change,
exactly. Why a prior: with a few dozen training subjects whose rates differ by ±25 % for reasons
no scan shows, a flexible network memorises subjects (even from their ages alone); the prior
carries what generalises, and the network adds only what validation confirms.
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

from mambacontrol.data.change import percent_change
from mambacontrol.data.covariates import NUM_COVARIATES
from mambacontrol.data.manifest import DIAGNOSES
from mambacontrol.errors import MambaControlError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.graph.encoder import GraphEncoder, check_graph_identity
from mambacontrol.nn.component import Component

_DX_COLUMNS = slice(3, 3 + len(DIAGNOSES))  # one-hot CN/MCI/AD in encode_covariates' output
PRIOR_TERMS = ("age", "sex", "years")
"""Optional terms of the regional prior, each multiplied by the diagnosis one-hot: normalised age,
female (0/1), horizon Δt in years."""
DEFAULT_PRIOR_TERMS = ("age",)


def num_prior_columns(terms: Sequence[str]) -> int:
    """Columns of :func:`prior_design` for these terms."""
    return len(DIAGNOSES) * (1 + len(terms))


def prior_design(covariates: torch.Tensor, years: torch.Tensor,
                 terms: Sequence[str] = DEFAULT_PRIOR_TERMS) -> torch.Tensor:
    """Design matrix of the regional prior.

    Args:
        covariates: (B, 6) from :func:`encode_covariates` (age is already normalised).
        years: (B,) horizons in years.
        terms: optional terms, a subset of :data:`PRIOR_TERMS`, in that order.

    Returns:
        (B, 3 · (1 + len(terms))): the diagnosis one-hot, then its product with each term.
    """
    unknown = [t for t in terms if t not in PRIOR_TERMS]
    if unknown:
        raise ValueError(f"prior terms {unknown} are not among {', '.join(PRIOR_TERMS)}")
    dx = covariates[:, _DX_COLUMNS]
    columns = {"age": covariates[:, :1], "sex": covariates[:, 2:3],
               "years": years.to(covariates.dtype).reshape(-1, 1)}
    return torch.cat([dx] + [dx * columns[t] for t in PRIOR_TERMS if t in terms], dim=1)


def fit_prior(covariates: torch.Tensor, years: torch.Tensor, log_ratio: torch.Tensor,
              mask: torch.Tensor, terms: Sequence[str] = DEFAULT_PRIOR_TERMS,
              ridge: float = 1e-3) -> np.ndarray:
    """Least-squares coefficients of the regional prior.

    Each node's annual change ``100 · log_ratio / Δt`` is regressed on :func:`prior_design`, with a
    ridge of ``ridge`` × the mean diagonal of the normal matrix (so a diagnosis without training
    pairs gets zero coefficients instead of a singular system).

    Args:
        covariates: (N, 6).
        years: (N,) horizons, all > 0.
        log_ratio: (N, R) true node log volume ratios.
        mask: (N, R) bool, which targets are valid.
        terms: optional terms of the design.
        ridge: relative ridge.

    Returns:
        (R, K) float64 coefficients, % per year, K = :func:`num_prior_columns`.
    """
    x = prior_design(covariates.double(), years.double(), terms).numpy()
    y = 100.0 * log_ratio.double().numpy() / years.double().numpy()[:, None]
    w = mask.numpy().astype(np.float64)
    normal = np.einsum("nk,nr,nl->rkl", x, w, x)
    rhs = np.einsum("nk,nr->rk", x, w * y)
    scale = np.trace(normal, axis1=1, axis2=2)[:, None, None] / x.shape[1]
    normal += (ridge * np.maximum(scale, 1e-12)) * np.eye(x.shape[1])[None]
    return np.linalg.solve(normal, rhs[..., None])[..., 0]


class TrajectoryHead(Component):
    """Node embeddings (B, R, E), covariates (B, 6) and horizons (B,) → log volume ratios (B, R).

    Args:
        embed_dim: E.
        num_nodes: R.
        hidden: width of the per-node MLP.
        graph: the graph identity, as in :class:`GraphEncoder`.
        curvature: also predict a Δt² term (acceleration).
        prior_terms: optional terms of the regional prior (:data:`PRIOR_TERMS`).
        prior_coef: (R, K) coefficients of the regional prior (:func:`fit_prior`; None: zero, the
            head learns the whole rate).
    """

    @register_to_config
    def __init__(self, embed_dim: int, num_nodes: int, hidden: int = 64, graph: dict | None = None,
                 curvature: bool = True, prior_terms: list | tuple = DEFAULT_PRIOR_TERMS,
                 prior_coef: list | None = None):
        super().__init__()
        if embed_dim < 1 or num_nodes < 1 or hidden < 1:
            raise ValueError(f"embed_dim {embed_dim}, num_nodes {num_nodes} and hidden {hidden} "
                             "must be positive")
        self.prior_terms = tuple(prior_terms)
        prior_design(torch.zeros(1, NUM_COVARIATES), torch.zeros(1), self.prior_terms)  # validates
        k = num_prior_columns(self.prior_terms)
        prior = torch.zeros(num_nodes, k) if prior_coef is None else torch.tensor(prior_coef)
        if prior.shape != (num_nodes, k):
            raise ValueError(f"prior_coef must be ({num_nodes}, {k}); got {tuple(prior.shape)}")
        self.register_buffer("prior", prior.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2 if curvature else 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def check_graph(self, graph: AnatomyGraph) -> None:
        """Raise :class:`ModelError` unless this head was built for ``graph``."""
        check_graph_identity(self.config.graph, graph, "this TrajectoryHead")

    def forward(self, node_embeddings: torch.Tensor, covariates: torch.Tensor,
                years: torch.Tensor) -> torch.Tensor:
        """Predict.

        Args:
            node_embeddings: (B, R, E).
            covariates: (B, 6) from :func:`encode_covariates` (they drive the prior).
            years: (B,) horizons Δt in years.

        Returns:
            (B, R) predicted ``log(V(t + Δt) / V(t))`` per node.
        """
        r = self.prior.shape[0]
        if node_embeddings.dim() != 3 or node_embeddings.shape[1] != r:
            raise MambaControlError(f"node_embeddings of shape {tuple(node_embeddings.shape)} "
                                    f"are not (B, {r}, E)")
        if covariates.shape != (node_embeddings.shape[0], NUM_COVARIATES):
            raise MambaControlError(f"covariates of shape {tuple(covariates.shape)} are not "
                                    f"({node_embeddings.shape[0]}, {NUM_COVARIATES})")
        out = self.mlp(node_embeddings)
        prior = (prior_design(covariates.to(out.dtype), years, self.prior_terms)
                 @ self.prior.T)  # (B, R)
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
    def load(cls, directory: str | os.PathLike,
             device: str | torch.device = "cpu") -> TrajectoryModel:
        folder = Path(directory)
        return cls(GraphEncoder.load(folder / "encoder", device),
                   TrajectoryHead.load(folder / "head", device))

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

    def __call__(self, node_features: torch.Tensor, covariates: torch.Tensor,
                 years: torch.Tensor) -> torch.Tensor:
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
        feats = torch.as_tensor(np.asarray(node_features), dtype=torch.float32,
                                device=self.encoder.device)
        if feats.dim() == 2:
            feats = feats[None]
        cov = self.encoder.covariates(age, years, sex, diagnosis)
        if cov.shape[0] == 1 and feats.shape[0] > 1:
            cov = cov.expand(feats.shape[0], -1)
        yrs = torch.as_tensor(np.broadcast_to(np.asarray(years, dtype=np.float32),
                                              (feats.shape[0],)).copy(),
                              device=feats.device)
        return self(feats, cov, yrs).double().cpu().numpy()


def group_percent_change(graph: AnatomyGraph, log_ratio: np.ndarray, label_volumes: np.ndarray,
                         label_ids: Sequence[int],
                         groups: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
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
        out[name] = percent_change((vols[:, idx] * ratio[:, idx]).sum(axis=1), base)
    return out
