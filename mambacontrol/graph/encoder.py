"""Graph encoder: node features and covariates → node embeddings and pooled graph tokens.

Data flow (each spectral step can be switched off for ablation)::

    node features (B, R, F) ─ z-score with saved training statistics
      ├─ multi-scale spectral filter bank (graph wavelets)      [spectral_filters]
      ▼
    linear → + learned node identity + covariate embedding
      ▼  num_layers × (graph convolution → LayerNorm → FiLM(covariates) → GELU, residual)
      ▼  graph-Fourier refinement (GFT → learned gain → inverse GFT)   [fourier_refine]
    node embeddings (B, R, E) ── attention pooling with T learned queries ──▶ tokens (B, T, E)

Graph layers are torch-geometric's (GCNConv, ChebConv, GATv2Conv). The graph's edges and
Laplacian eigenbasis are saved with the weights, and its identity (atlas, checksum, grid,
grouping) in the config, so a model is never run on another atlas or grid by mistake.

``per_node=True`` is the same network with the graph's edges removed, the baseline that tells
what the graph adds: no edges, so every graph convolution only mixes a node with itself, and the
eigenbasis of the edgeless graph (Laplacian ``I``: every eigenvalue 1, eigenvectors the node
axes), so the spectral filters and the Fourier refinement act on each node alone. Each node then
sees only its own features, its identity embedding and the covariates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from mambacontrol.data.covariates import NUM_COVARIATES, CovariateNorm, encode_covariates
from mambacontrol.errors import MambaControlError, ModelError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.graph.features import NUM_FEATURES, FeatureNorm
from mambacontrol.graph.spectral import FILTER_KINDS, GraphFourierRefine, SpectralFilterBank
from mambacontrol.nn.component import Component

CONVS = ("gcn", "cheb", "gat")


def check_graph_identity(saved: dict | None, graph: AnatomyGraph, what: str) -> None:
    """Raise when a model's saved graph identity differs from ``graph``'s.

    Raises:
        ModelError: naming the first differing field.
    """
    if saved is None:
        raise ModelError(f"{what} records no graph identity; it cannot be checked against "
                         f"{graph!r}; rebuild it with from_graph")
    problem = graph.identity.mismatch(saved)
    if problem is not None:
        raise ModelError(f"{what} was built for another anatomy graph ({problem}); load the atlas, "
                         "grid and grouping it was trained with, or retrain")


class _GraphLayer(nn.Module):
    """One residual graph-convolution layer with covariate FiLM."""

    def __init__(self, conv: str, dim: int, cheb_k: int, heads: int, dropout: float):
        super().__init__()
        from torch_geometric.nn import ChebConv, GATv2Conv, GCNConv  # lazy: slow to import

        self.kind = conv
        if conv == "gcn":
            self.conv = GCNConv(dim, dim)
        elif conv == "cheb":
            self.conv = ChebConv(dim, dim, K=cheb_k, normalization="sym")
        else:
            self.conv = GATv2Conv(dim, dim // heads, heads=heads, edge_dim=1)
        self.norm = nn.LayerNorm(dim)
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        b, r, e = h.shape
        if self.kind == "gat":  # no static-graph support: run on the disjoint union of B copies
            offsets = torch.arange(b, device=h.device).repeat_interleave(edge_index.shape[1]) * r
            ei = edge_index.repeat(1, b) + offsets
            out = self.conv(h.reshape(b * r, e), ei,
                            edge_weight.repeat(b)[:, None]).reshape(b, r, e)
        elif self.kind == "cheb":
            out = self.conv(h, edge_index, edge_weight, lambda_max=2.0)
        else:
            out = self.conv(h, edge_index, edge_weight)
        scale, shift = self.film(cond)[:, None].chunk(2, dim=-1)
        return h + self.drop(self.act(self.norm(out) * (1 + scale) + shift))


class GraphEncoder(Component):
    """Node features + covariates → node embeddings (B, R, E) and graph tokens (B, T, E).

    Build for a graph with :meth:`from_graph`, which also stores the graph's edges, eigenbasis
    and identity; the constructor alone is what :meth:`Component.load` calls.

    Args:
        num_nodes: R.
        num_edges: directed edges of the graph (both directions counted).
        graph: the graph identity (:meth:`GraphIdentity.to_dict`).
        feature_mean: (R, F) training means of the node features (None: zero).
        feature_std: (R, F) training standard deviations (None: one).
        covariate_norm: :class:`CovariateNorm` as a dict, used by :meth:`covariates`.
        in_features: F.
        embed_dim: E.
        num_layers: graph-convolution layers.
        conv: ``gcn``, ``cheb`` (Chebyshev, ``cheb_k`` hops) or ``gat`` (GATv2, ``gat_heads``).
        cheb_k: Chebyshev order.
        gat_heads: attention heads (must divide ``embed_dim``).
        num_tokens: T pooled tokens.
        token_heads: attention heads of the pooling.
        spectral_filters: append multi-scale graph-filtered features to the input.
        filter_kind: ``wavelet`` or ``heat``.
        filter_scales: filter scales.
        fourier_refine: apply the graph-Fourier refinement after the graph layers.
        fourier_modes: lowest graph frequencies with a learned gain (None: all).
        dropout: dropout inside the layers.
        feature_dropout: dropout on the normalised input features (training only), so the model
            leans on the covariates and the graph rather than memorising individual scans.
        per_node: drop the graph's edges (the per-node ablation, see the module docstring);
            ``num_edges`` must then be 0.
    """

    @register_to_config
    def __init__(self, num_nodes: int, num_edges: int, graph: dict | None = None,
                 feature_mean: list | None = None, feature_std: list | None = None,
                 covariate_norm: dict | None = None, in_features: int = NUM_FEATURES,
                 embed_dim: int = 32, num_layers: int = 3,
                 conv: Literal["gcn", "cheb", "gat"] = "gcn", cheb_k: int = 3,
                 gat_heads: int = 4, num_tokens: int = 8, token_heads: int = 4,
                 spectral_filters: bool = True, filter_kind: Literal["wavelet", "heat"] = "wavelet",
                 filter_scales: list | tuple = (0.5, 1.0, 2.0, 4.0, 8.0),
                 fourier_refine: bool = True, fourier_modes: int | None = None,
                 dropout: float = 0.1, feature_dropout: float = 0.1, per_node: bool = False):
        super().__init__()
        if num_nodes < 1 or num_edges < 0:
            raise ValueError(f"num_nodes {num_nodes} must be ≥ 1 and num_edges {num_edges} ≥ 0")
        if per_node and num_edges:
            raise ValueError(f"a per-node encoder has no edges; got num_edges {num_edges}")
        if conv not in CONVS:
            raise ValueError(f"conv '{conv}' is not one of {', '.join(CONVS)}")
        if filter_kind not in FILTER_KINDS:
            raise ValueError(f"filter_kind '{filter_kind}' is not one of {', '.join(FILTER_KINDS)}")
        if embed_dim % token_heads or (conv == "gat" and embed_dim % gat_heads):
            raise ValueError(f"embed_dim {embed_dim} must be divisible by token_heads {token_heads}"
                             + (f" and gat_heads {gat_heads}" if conv == "gat" else ""))
        if num_layers < 0 or num_tokens < 1:
            raise ValueError(f"num_layers {num_layers} must be ≥ 0 and num_tokens {num_tokens} ≥ 1")
        modes = num_nodes if fourier_modes is None else int(fourier_modes)
        if not 1 <= modes <= num_nodes:
            raise ValueError(f"fourier_modes {fourier_modes} must lie in 1…{num_nodes}")
        # checked in numpy, so that the module also builds on the meta device
        mean = (np.zeros((num_nodes, in_features)) if feature_mean is None
                else np.asarray(feature_mean))
        std = np.ones((num_nodes, in_features)) if feature_std is None else np.asarray(feature_std)
        if mean.shape != (num_nodes, in_features) or std.shape != (num_nodes, in_features):
            raise ValueError(f"feature_mean/feature_std must be ({num_nodes}, {in_features}); got "
                             f"{tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("feature_std must be positive")
        self.covariate_norm = CovariateNorm.from_dict(covariate_norm)

        # The graph travels with the weights; from_graph fills these.
        self.register_buffer("edge_index", torch.zeros(2, num_edges, dtype=torch.long))
        self.register_buffer("edge_weight", torch.zeros(num_edges))
        self.register_buffer("eigenvalues", torch.zeros(num_nodes))
        self.register_buffer("eigenvectors", torch.zeros(num_nodes, num_nodes))
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32), persistent=False)

        self.feature_drop = nn.Dropout(feature_dropout)
        self.filter_bank = (SpectralFilterBank(list(filter_scales), filter_kind)
                            if spectral_filters else None)
        width = in_features * (1 + (self.filter_bank.num_filters if self.filter_bank else 0))
        self.input_proj = nn.Linear(width, embed_dim)
        self.node_identity = nn.Parameter(torch.randn(num_nodes, embed_dim) * 0.02)
        self.covariate_proj = nn.Sequential(nn.Linear(NUM_COVARIATES, embed_dim), nn.GELU(),
                                            nn.Linear(embed_dim, embed_dim))
        self.layers = nn.ModuleList(_GraphLayer(conv, embed_dim, cheb_k, gat_heads, dropout)
                                    for _ in range(num_layers))
        self.refine = GraphFourierRefine(embed_dim, modes) if fourier_refine else None
        self.out_norm = nn.LayerNorm(embed_dim)
        self.token_queries = nn.Parameter(torch.randn(num_tokens, embed_dim) * 0.02)
        self.pool = nn.MultiheadAttention(embed_dim, token_heads, batch_first=True)

    @classmethod
    def from_graph(cls, graph: AnatomyGraph, feature_norm: FeatureNorm | None = None,
                   covariate_norm: CovariateNorm | None = None, **kwargs) -> GraphEncoder:
        """An encoder for ``graph``, with its edges, eigenbasis and identity stored.

        Args:
            graph: the anatomy graph.
            feature_norm: training statistics of the node features (None: identity).
            covariate_norm: covariate normalisation (None: the defaults).
            **kwargs: architecture arguments of the constructor (``per_node=True``: store no
                edges and the edgeless graph's eigenbasis instead of ``graph``'s).
        """
        data = graph.data
        norm = feature_norm or FeatureNorm.identity(graph.num_nodes)
        per_node = bool(kwargs.get("per_node", False))
        model = cls(num_nodes=graph.num_nodes,
                    num_edges=0 if per_node else int(data.edge_index.shape[1]),
                    graph=graph.identity.to_dict(), feature_mean=norm.mean, feature_std=norm.std,
                    covariate_norm=(covariate_norm or CovariateNorm()).to_dict(), **kwargs)
        with torch.no_grad():
            if per_node:
                model.eigenvalues.fill_(1.0)
                model.eigenvectors.copy_(torch.eye(graph.num_nodes))
            else:
                model.edge_index.copy_(data.edge_index)
                model.edge_weight.copy_(data.edge_weight / data.edge_weight.mean())
                model.eigenvalues.copy_(torch.tensor(graph.eigenvalues))
                model.eigenvectors.copy_(torch.tensor(graph.eigenvectors))
        return model

    def check_graph(self, graph: AnatomyGraph) -> None:
        """Raise :class:`ModelError` unless this encoder was built for ``graph``."""
        check_graph_identity(self.config.graph, graph, "this GraphEncoder")

    def covariates(self, age, years, sex, diagnosis) -> torch.Tensor:
        """(B, 6) covariates encoded with this model's saved :class:`CovariateNorm`."""
        return encode_covariates(age, years, sex, diagnosis, self.covariate_norm).to(self.device)

    def forward(self, node_features: torch.Tensor,
                covariates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode.

        Args:
            node_features: (B, R, F) raw features (:func:`node_features`), unnormalised.
            covariates: (B, 6) from :func:`encode_covariates` with this model's norm.

        Returns:
            node embeddings (B, R, E) and graph tokens (B, T, E).

        Raises:
            MambaControlError: for wrong shapes.
        """
        r, f = self.norm_mean.shape
        if node_features.dim() != 3 or tuple(node_features.shape[1:]) != (r, f):
            raise MambaControlError(f"node_features of shape {tuple(node_features.shape)} are not "
                                    f"(B, {r}, {f}); compute them with the graph this model was "
                                    "built for")
        if covariates.shape != (node_features.shape[0], NUM_COVARIATES):
            raise MambaControlError(f"covariates of shape {tuple(covariates.shape)} are not "
                                    f"({node_features.shape[0]}, {NUM_COVARIATES})")
        x = self.feature_drop(
            (node_features.to(self.norm_mean.dtype) - self.norm_mean) / self.norm_std)
        parts = [x]
        if self.filter_bank is not None:
            parts.append(self.filter_bank(x, self.eigenvalues, self.eigenvectors))
        cond = self.covariate_proj(covariates.to(x.dtype))
        h = self.input_proj(torch.cat(parts, dim=-1)) + self.node_identity + cond[:, None]
        for layer in self.layers:
            h = layer(h, self.edge_index, self.edge_weight, cond)
        if self.refine is not None:
            h = self.refine(h, self.eigenvectors)
        h = self.out_norm(h)
        queries = self.token_queries.expand(h.shape[0], -1, -1)
        tokens, _ = self.pool(queries, h, h, need_weights=False)
        return h, tokens
