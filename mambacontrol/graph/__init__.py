"""Anatomy graph of atlas regions with graph-Fourier (spectral) features, the graph encoder, the
rasterisation of node embeddings onto a grid, the regional trajectory head, and the visit pairs
and loss it learns from (torch-geometric; the training loop is in :mod:`mambacontrol.training`).

Imports torch and torch-geometric; ``import mambacontrol`` does not import this subpackage.
"""

from mambacontrol.graph.anatomy import GROUPINGS, AnatomyGraph, GraphIdentity, fixed_sign_eigh
from mambacontrol.graph.encoder import GraphEncoder
from mambacontrol.graph.features import FEATURE_NAMES, FeatureCache, FeatureNorm, node_features
from mambacontrol.graph.raster import majority_nodes, rasterize, region_fractions
from mambacontrol.graph.spectral import GraphFourierRefine, SpectralFilterBank
from mambacontrol.graph.trajectory import TrajectoryHead, TrajectoryModel, group_percent_change

__all__ = [
    "FEATURE_NAMES",
    "GROUPINGS",
    "AnatomyGraph",
    "FeatureCache",
    "FeatureNorm",
    "GraphEncoder",
    "GraphFourierRefine",
    "GraphIdentity",
    "SpectralFilterBank",
    "TrajectoryHead",
    "TrajectoryModel",
    "fixed_sign_eigh",
    "group_percent_change",
    "majority_nodes",
    "node_features",
    "rasterize",
    "region_fractions",
]
