"""The anatomy graph of an atlas: regions as nodes, shared faces as weighted edges.

Nodes are atlas regions (``grouping="region"``, 134 for the default atlas) or coarser groupings
read from the region table. Two nodes are joined when their voxels touch face to face; the edge
weight is the contact area in mm². Optional homologue edges join the left and right copy of a
structure. The symmetric normalised Laplacian ``L = I − D^-1/2 W D^-1/2`` is diagonalised once, in
float64, with a fixed sign convention, so spectral features are the same on every run and machine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from mambacontrol.atlas import Atlas
from mambacontrol.errors import MambaControlError
from mambacontrol.io import Grid

log = logging.getLogger(__name__)

GROUPINGS = ("region", "group", "lobe", "lateral_lobe")
"""Node sets: every atlas region; hemisphere-free structures (``Region.group``); lobes
(``Region.lobe``); lobes split by hemisphere."""

_EIG_TOL = 1e-9  # eigenvalues closer than this form one (degenerate) eigenspace
_SIGN_TOL = 1e-12  # entries within this of the largest magnitude tie for the sign decision


@dataclass(frozen=True)
class GraphIdentity:
    """What a saved model must match: the atlas, its grid and the node set.

    Attributes:
        atlas_id: e.g. ``icbm152-2009a-nmm``.
        atlas_checksum: :attr:`Atlas.checksum` of that grid.
        grid: grid name, e.g. ``2mm``.
        grouping: one of :data:`GROUPINGS`.
        homologue_edges: whether left/right homologue edges were added.
        homologue_weight: their weight as asked for (None: the median contact area).
    """

    atlas_id: str
    atlas_checksum: str
    grid: str
    grouping: str
    homologue_edges: bool
    homologue_weight: float | None = None

    def to_dict(self) -> dict:
        return {"atlas_id": self.atlas_id, "atlas_checksum": self.atlas_checksum, "grid": self.grid,
                "grouping": self.grouping, "homologue_edges": self.homologue_edges,
                "homologue_weight": self.homologue_weight}

    def mismatch(self, other: dict) -> str | None:
        """The first field where ``other`` (a saved identity) differs, described; None if equal."""
        mine = self.to_dict()
        for key, value in mine.items():
            if other.get(key) != value:
                return f"{key} is {other.get(key)!r} in the model but {value!r} here"
        return None


def _node_key(region, grouping: str) -> str:
    if grouping == "region":
        return region.name
    if grouping == "group":
        return region.group
    if grouping == "lobe":
        return region.lobe
    return f"{region.hemisphere} {region.lobe}"


def _homologue_key(name: str, regions: list, grouping: str) -> tuple[str, str] | None:
    """(structure, hemisphere) of a node that has a left/right copy, else None."""
    if grouping == "region":
        (r,) = regions
        return (r.group, r.hemisphere) if r.hemisphere in ("left", "right") else None
    if grouping == "lateral_lobe":
        hemi, lobe = name.split(" ", 1)
        return (lobe, hemi) if hemi in ("left", "right") else None
    return None


def face_contacts(node_map: np.ndarray, num_nodes: int,
                  spacing: tuple[float, float, float]) -> np.ndarray:
    """Contact area between every pair of nodes.

    Args:
        node_map: (X, Y, Z) int node index per voxel, −1 outside every node.
        num_nodes: R.
        spacing: voxel size (mm) along X, Y, Z.

    Returns:
        (R, R) float64 symmetric matrix of shared face area in mm², zero diagonal.
    """
    area = np.zeros((num_nodes, num_nodes), dtype=np.float64)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = node_map[tuple(lo)].ravel(), node_map[tuple(hi)].ravel()
        keep = (a >= 0) & (b >= 0) & (a != b)
        codes = np.bincount(a[keep].astype(np.int64) * num_nodes + b[keep], minlength=num_nodes**2)
        face = float(np.prod([s for i, s in enumerate(spacing) if i != axis]))
        area += codes.reshape(num_nodes, num_nodes) * face
    return area + area.T


def normalized_laplacian(weights: np.ndarray) -> np.ndarray:
    """Symmetric normalised Laplacian ``I − D^-1/2 W D^-1/2`` of a weighted adjacency.

    An isolated node (degree 0) keeps its identity row, so its eigenvalue is 1.

    Args:
        weights: (R, R) symmetric non-negative adjacency.

    Returns:
        (R, R) float64.
    """
    deg = weights.sum(axis=1)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    return np.eye(len(weights)) - inv_sqrt[:, None] * weights * inv_sqrt[None, :]


def fixed_sign_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix with a reproducible basis.

    Convention: eigenvalues ascending. Within a degenerate eigenspace (eigenvalues closer than
    1e-9) the basis is rebuilt from the eigenspace's projector, whose columns are orthonormalised
    in node order, so it no longer depends on the LAPACK build. Then each eigenvector is signed so
    that its largest-magnitude entry (the lowest node index among ties) is positive.

    Args:
        matrix: (R, R) symmetric.

    Returns:
        eigenvalues (R,) float64 ascending, eigenvectors (R, R) float64 (columns).
    """
    vals, vecs = np.linalg.eigh(np.asarray(matrix, dtype=np.float64))
    start = 0
    while start < len(vals):
        stop = start + 1
        while stop < len(vals) and vals[stop] - vals[stop - 1] < _EIG_TOL:
            stop += 1
        if stop - start > 1:
            vecs[:, start:stop] = _canonical_basis(vecs[:, start:stop])
        start = stop
    for k in range(vecs.shape[1]):
        v = vecs[:, k]
        mag = np.abs(v)
        pivot = int(np.flatnonzero(mag >= mag.max() - _SIGN_TOL)[0])
        if v[pivot] < 0:
            vecs[:, k] = -v
    return vals, vecs


def _canonical_basis(space: np.ndarray) -> np.ndarray:
    """An orthonormal basis of span(``space``) that depends only on the span.

    Columns of the projector P = V Vᵀ are taken in node order and orthonormalised (Gram–Schmidt),
    skipping those already spanned.
    """
    dim = space.shape[1]
    proj = space @ space.T
    basis: list[np.ndarray] = []
    for col in proj.T:
        v = col - sum((b @ col) * b for b in basis) if basis else col.copy()
        norm = np.linalg.norm(v)
        if norm > 1e-6:
            basis.append(v / norm)
        if len(basis) == dim:
            break
    return np.stack(basis, axis=1)


class AnatomyGraph:
    """Atlas regions (or groupings of them) as a weighted graph with its Laplacian eigenbasis.

    Build with :meth:`from_atlas` (cached per atlas grid and options). Arrays are read-only.

    Attributes:
        identity: atlas, grid and node set, stored in every model that uses the graph.
        node_names: R names (region names, or group / lobe names).
        node_labels: the atlas labels that make up each node.
        label_to_node: atlas label → node index.
        weights: (R, R) float64 adjacency (contact area in mm², plus homologue edges).
        homologue_pairs: (H, 2) node index pairs joined as left/right homologues.
        eigenvalues: (R,) float64 in [0, 2], ascending.
        eigenvectors: (R, R) float64 orthonormal columns, fixed sign convention.
        node_centroids: (R, 3) float64 atlas centroid of each node, world mm (RAS).
        node_volumes: (R,) float64 atlas volume of each node, mm³.
        grid: the atlas grid the graph was built on (scans must be on it).
        label_tissue: atlas label → tissue class of its region (``gm``, ``wm``, ``csf``).
    """

    def __init__(self, identity: GraphIdentity, grid: Grid, node_names: list[str],
                 node_labels: list[list[int]], label_tissue: dict[int, str], weights: np.ndarray,
                 homologue_pairs: np.ndarray, node_centroids: np.ndarray, node_volumes: np.ndarray):
        self.identity = identity
        self.grid = grid
        self.label_tissue = dict(label_tissue)
        self.node_names = list(node_names)
        self.node_labels = [list(ls) for ls in node_labels]
        self.label_to_node = {lab: i for i, ls in enumerate(self.node_labels) for lab in ls}
        self.weights = _frozen(weights)
        self.homologue_pairs = _frozen(np.asarray(homologue_pairs, dtype=np.int64).reshape(-1, 2))
        self.node_centroids = _frozen(node_centroids)
        self.node_volumes = _frozen(node_volumes)
        vals, vecs = fixed_sign_eigh(normalized_laplacian(self.weights))
        self.eigenvalues = _frozen(np.clip(vals, 0.0, 2.0))
        self.eigenvectors = _frozen(vecs)

    _cache: dict[tuple, AnatomyGraph] = {}

    @classmethod
    def from_atlas(cls, atlas: Atlas, grouping: str = "region", homologue_edges: bool = True,
                   homologue_weight: float | None = None) -> AnatomyGraph:
        """The graph of an atlas on its grid (built once per atlas grid and options, then cached).

        Args:
            atlas: a loaded atlas.
            grouping: node set, one of :data:`GROUPINGS`.
            homologue_edges: join each left structure to its right copy (for ``region`` and
                ``lateral_lobe``; hemisphere-free groupings have none).
            homologue_weight: weight of a homologue edge; default the median contact area of
                the anatomical edges, so they count like a typical neighbour.

        Raises:
            MambaControlError: for an unknown grouping.
        """
        if grouping not in GROUPINGS:
            raise MambaControlError(f"grouping '{grouping}' is unknown; choose one of "
                                    f"{', '.join(GROUPINGS)}")
        key = (atlas.checksum, grouping, bool(homologue_edges), homologue_weight)
        if key not in cls._cache:
            cls._cache[key] = cls._build(atlas, grouping, bool(homologue_edges), homologue_weight)
        return cls._cache[key]

    @classmethod
    def from_identity(cls, atlas: Atlas, identity: Mapping[str, Any] | None) -> AnatomyGraph:
        """The graph a saved model was built for (``identity`` as :meth:`GraphIdentity.to_dict`
        wrote it; missing keys take :meth:`from_atlas`'s defaults), on ``atlas``.

        The caller still checks the model against it (``check_graph``): this only rebuilds.
        """
        ident = identity or {}
        return cls.from_atlas(atlas, grouping=ident.get("grouping", "region"),
                              homologue_edges=ident.get("homologue_edges", True),
                              homologue_weight=ident.get("homologue_weight"))

    @classmethod
    def _build(cls, atlas: Atlas, grouping: str, homologue_edges: bool,
               homologue_weight: float | None) -> AnatomyGraph:
        names: list[str] = []
        members: dict[str, list] = {}
        for region in atlas.regions:
            key = _node_key(region, grouping)
            if key not in members:
                names.append(key)
                members[key] = []
            members[key].append(region)
        node_labels = [[r.label for r in members[n]] for n in names]
        lut = label_lookup(node_labels, max(atlas.label_ids))
        node_map = lut[atlas.labels]
        spacing = atlas.grid.spacing
        weights = face_contacts(node_map, len(names), spacing)

        pairs: list[tuple[int, int]] = []
        if homologue_edges:
            sides: dict[tuple[str, str], int] = {}
            for i, n in enumerate(names):
                hk = _homologue_key(n, members[n], grouping)
                if hk is not None:
                    sides[hk] = i
            for (structure, hemi), i in sides.items():
                j = sides.get((structure, "right"))
                if hemi == "left" and j is not None:
                    pairs.append((i, j))
            anatomical = weights[np.triu_indices(len(names), 1)]
            w = homologue_weight if homologue_weight is not None else float(
                np.median(anatomical[anatomical > 0]))
            for i, j in pairs:
                weights[i, j] += w
                weights[j, i] += w

        voxel_volume = float(abs(np.linalg.det(atlas.grid.affine[:3, :3])))
        counts = np.bincount(node_map[node_map >= 0], minlength=len(names)).astype(np.float64)
        coords = np.nonzero(node_map >= 0)
        idx = node_map[coords]
        vox_centroid = np.stack([np.bincount(idx, weights=c, minlength=len(names))
                                 for c in coords], 1)
        vox_centroid /= np.maximum(counts, 1)[:, None]
        centroids = vox_centroid @ atlas.grid.affine[:3, :3].T + atlas.grid.affine[:3, 3]
        identity = GraphIdentity(atlas.id, atlas.checksum, atlas.grid_name, grouping,
                                 homologue_edges,
                                 None if homologue_weight is None else float(homologue_weight))
        tissue = {r.label: r.tissue for r in atlas.regions}
        graph = cls(identity, atlas.grid, names, node_labels, tissue, weights,
                    np.array(pairs, dtype=np.int64), centroids, counts * voxel_volume)
        log.info("anatomy graph %s/%s/%s: %d nodes, %d edges (%d homologue)", atlas.id,
                 atlas.grid_name, grouping, graph.num_nodes, graph.num_edges, len(pairs))
        return graph

    def __repr__(self) -> str:
        i = self.identity
        return (f"AnatomyGraph({i.atlas_id!r}, grid={i.grid!r}, grouping={i.grouping!r}, "
                f"nodes={self.num_nodes}, edges={self.num_edges})")

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    @property
    def num_edges(self) -> int:
        """Undirected edges."""
        return int(np.count_nonzero(np.triu(self.weights, 1)))

    @cached_property
    def label_lookup(self) -> np.ndarray:
        """(max label + 1,) int64 table: atlas label → node index, −1 for labels of no node."""
        lut = label_lookup(self.node_labels, max(self.label_to_node))
        lut.setflags(write=False)
        return lut

    def label_values(self, node_values) -> dict[int, float]:
        """(R,) one value per node (e.g. the trajectory head's log volume ratios) -> atlas label
        → the value of its node, for every label of every node."""
        return {int(label): float(node_values[node])
                for node, labels in enumerate(self.node_labels) for label in labels}

    def node_map(self, labels: np.ndarray) -> np.ndarray:
        """Node index per voxel.

        Args:
            labels: (X, Y, Z) integer label map in the atlas's label ids.

        Returns:
            (X, Y, Z) int64, −1 for background and labels that belong to no node.

        Raises:
            MambaControlError: for negative labels.
        """
        lab = np.asarray(labels)
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.all(np.mod(lab, 1) == 0):
                raise MambaControlError("label map holds non-integer values; pass an integer label "
                                        "map (load it with load_nifti(path, labels=True))")
            lab = lab.astype(np.int64)
        if lab.size and lab.min() < 0:
            raise MambaControlError(f"label map holds negative label {int(lab.min())}; labels are "
                                    "atlas label ids (0 = background)")
        lut = self.label_lookup
        if lab.size and lab.max() >= len(lut):
            lut = np.concatenate([lut, np.full(int(lab.max()) + 1 - len(lut), -1, dtype=np.int64)])
        return lut[lab]

    @cached_property
    def data(self):
        """``torch_geometric.data.Data`` with ``edge_index`` (2, 2E), ``edge_weight`` (2E,),
        ``homologue`` (2E,) bool and ``num_nodes``; both directions of every edge, sorted."""
        from torch_geometric.data import Data  # lazy: torch-geometric is slow to import

        src, dst = np.nonzero(self.weights)
        homologue = np.zeros(len(src), dtype=bool)
        if len(self.homologue_pairs):
            pair_set = {(int(a), int(b)) for a, b in self.homologue_pairs}
            pair_set |= {(b, a) for a, b in pair_set}
            homologue = np.array([(int(a), int(b)) in pair_set for a, b in zip(src, dst)])
        return Data(edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
                    edge_weight=torch.from_numpy(self.weights[src, dst].astype(np.float32)),
                    homologue=torch.from_numpy(homologue), num_nodes=self.num_nodes)

    def gft(self, x):
        """Graph Fourier transform ``Uᵀ x`` along the node axis.

        Args:
            x: (R,) signal or (..., R, F) node features, numpy array or torch tensor.

        Returns:
            Same shape and type: coefficients of each eigenvector (ascending frequency).
        """
        return _apply_basis(self.eigenvectors, x, transpose=True)

    def igft(self, x):
        """Inverse graph Fourier transform ``U x̂``: (R,) or (..., R, F) coefficients → signals."""
        return _apply_basis(self.eigenvectors, x, transpose=False)


def label_lookup(node_labels: list[list[int]], max_label: int) -> np.ndarray:
    """(max_label + 1,) int64 table mapping each label to its node index, −1 elsewhere."""
    lut = np.full(max_label + 1, -1, dtype=np.int64)
    for i, labels in enumerate(node_labels):
        lut[labels] = i
    return lut


def _frozen(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float64 if np.asarray(a).dtype.kind == "f" else None)
    out.setflags(write=False)
    return out


def _apply_basis(basis: np.ndarray, x, transpose: bool):
    """``Uᵀ x`` or ``U x`` along the node axis (axis 0 of a vector, −2 otherwise)."""
    n = x.shape[0] if x.ndim == 1 else x.shape[-2]
    if n != basis.shape[0]:
        raise MambaControlError(f"signal has {n} nodes on its node axis, the graph has "
                                f"{basis.shape[0]}; pass (R,) or (..., R, F) node signals")
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float64
        u = torch.tensor(basis, dtype=dtype, device=x.device)
        return (u.T if transpose else u) @ x.to(dtype)
    return (basis.T if transpose else basis) @ np.asarray(x)
