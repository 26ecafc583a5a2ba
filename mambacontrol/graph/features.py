"""Node features of one scan: what each region of an image and its label map looks like.

Per node: volume (log mm³ and fraction of the intracranial volume), mean and spread of intensity,
centroid (world mm), and tissue composition (mean grey/white/CSF membership of its voxels, from
a three-class intensity model fitted to the scan through the atlas's tissue labels). Every sum is
one ``np.bincount`` over the labelled voxels, so a 2 mm scan takes a few tens of milliseconds.

Normalisation statistics (:class:`FeatureNorm`) are fitted once on training scans and saved in
the graph encoder's config; inference never recomputes them.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambacontrol.errors import InputFileError, MambaControlError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.io import Grid, load_nifti, write_bytes_atomic

FEATURE_NAMES = ("log_volume", "volume_fraction", "intensity_mean", "intensity_std",
                 "centroid_x", "centroid_y", "centroid_z", "gm", "wm", "csf")
"""Columns of :func:`node_features`: log(1 + mm³), volume / intracranial volume, intensity mean and
standard deviation, centroid (RAS mm), mean tissue membership."""
NUM_FEATURES = len(FEATURE_NAMES)
TISSUES = ("gm", "wm", "csf")


def _tissue_membership(values: np.ndarray, tissue_class: np.ndarray) -> np.ndarray:
    """Soft three-class membership of each voxel from a Gaussian per tissue.

    Args:
        values: (N,) intensities of the labelled voxels.
        tissue_class: (N,) int 0/1/2 (gm/wm/csf) from the region table, −1 unknown.

    Returns:
        (N, 3) memberships summing to 1 (equal priors).
    """
    means, stds = np.zeros(3), np.ones(3)
    overall = float(values.std()) or 1.0
    for c in range(3):
        sel = values[tissue_class == c]
        if sel.size >= 2:
            means[c], stds[c] = sel.mean(), max(float(sel.std()), 0.05 * overall)
        else:
            means[c], stds[c] = values.mean(), overall
    z = (values[:, None] - means[None]) / stds[None]
    loglik = -0.5 * z**2 - np.log(stds)[None]
    loglik -= loglik.max(axis=1, keepdims=True)
    lik = np.exp(loglik)
    return lik / lik.sum(axis=1, keepdims=True)


def node_features(image: np.ndarray, labels: np.ndarray, graph: AnatomyGraph,
                  affine: np.ndarray | None = None) -> np.ndarray:
    """Features of every graph node in one scan.

    Args:
        image: (X, Y, Z) intensity-normalised image (``normalize_intensity``).
        labels: (X, Y, Z) integer label map in the atlas's label ids, same grid.
        graph: the anatomy graph (defines the nodes).
        affine: (4, 4) voxel-to-world matrix; default the graph's atlas grid.

    Returns:
        (R, F) float32, columns :data:`FEATURE_NAMES`. A node with no voxels gets volume 0,
        intensity 0, tissue 0 and its atlas centroid.

    Raises:
        MambaControlError: when shapes differ, the image is not finite, or the label map is empty.
    """
    img = np.asarray(image)
    if img.shape != np.shape(labels):
        raise MambaControlError(f"image shape {img.shape} differs from label map shape "
                                f"{np.shape(labels)}; both must be on the same grid")
    aff = graph.grid.affine if affine is None else np.asarray(affine, dtype=np.float64)
    node_map = graph.node_map(labels)
    inside = np.flatnonzero(np.asarray(labels).ravel() > 0)
    if inside.size == 0:
        raise MambaControlError("label map is empty (no voxel > 0); pass the scan's segmentation")
    values = img.ravel()[inside].astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise MambaControlError(
            "image holds NaN or infinite values inside the labels; fix the scan")
    nodes = node_map.ravel()[inside]
    keep = nodes >= 0
    nodes, vals, vox = nodes[keep], values[keep], inside[keep]
    r = graph.num_nodes
    voxel_volume = float(abs(np.linalg.det(aff[:3, :3])))

    counts = np.bincount(nodes, minlength=r).astype(np.float64)
    present = counts > 0
    safe = np.maximum(counts, 1.0)
    volume = counts * voxel_volume
    mean = np.bincount(nodes, weights=vals, minlength=r) / safe
    var = np.bincount(nodes, weights=vals**2, minlength=r) / safe - mean**2
    ijk = np.stack(np.unravel_index(vox, img.shape), axis=1).astype(np.float64)
    vox_centroid = np.stack([np.bincount(nodes, weights=ijk[:, a], minlength=r)
                             for a in range(3)], 1) / safe[:, None]
    centroid = vox_centroid @ aff[:3, :3].T + aff[:3, 3]
    centroid[~present] = graph.node_centroids[~present]

    lab_in = np.asarray(labels).ravel()[inside]
    tissue_lut = np.full(int(lab_in.max()) + 1, -1, dtype=np.int64)
    for label, tissue in graph.label_tissue.items():
        if label < len(tissue_lut) and tissue in TISSUES:
            tissue_lut[label] = TISSUES.index(tissue)
    membership = _tissue_membership(values, tissue_lut[lab_in])[keep]
    tissue = np.stack([np.bincount(nodes, weights=membership[:, c], minlength=r)
                       for c in range(3)], 1) / safe[:, None]

    icv = inside.size * voxel_volume
    out = np.column_stack([np.log1p(volume), volume / icv, mean, np.sqrt(np.maximum(var, 0.0)),
                           centroid, tissue])
    out[~present, 2:4] = 0.0
    return out.astype(np.float32)


@dataclass(frozen=True)
class FeatureNorm:
    """Per-node, per-feature z-scoring fitted on training scans.

    Attributes:
        mean: (R, F) nested lists.
        std: (R, F) nested lists, all positive.
    """

    mean: list
    std: list

    @classmethod
    def fit(cls, features: np.ndarray, floor: float = 0.05) -> FeatureNorm:
        """Fit on training features.

        A node's spread is floored at ``floor`` × the median spread of that feature over nodes,
        so a feature that barely varies in training (a tiny region) cannot blow up at inference.

        Args:
            features: (N, R, F) features of N training scans.
            floor: relative floor of the standard deviation.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 3 or x.shape[0] < 1:
            raise MambaControlError(f"features of shape {x.shape} are not (N, R, F) with N ≥ 1")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        typical = np.median(std, axis=0)
        typical = np.where(typical > 0, typical, 1.0)
        std = np.maximum(std, floor * typical[None, :])
        return cls(mean.tolist(), std.tolist())

    @classmethod
    def identity(cls, num_nodes: int, num_features: int = NUM_FEATURES) -> FeatureNorm:
        """Zero mean, unit spread (features pass unchanged)."""
        return cls(np.zeros((num_nodes, num_features)).tolist(),
                   np.ones((num_nodes, num_features)).tolist())


class FeatureCache:
    """Node features per scan, computed once: in memory, and on disk when a folder is given.

    A scan's key is the graph identity plus the resolved paths, sizes and modification times of
    its image and label map, so an edited file is recomputed.

    Args:
        graph: the anatomy graph.
        folder: where ``.npy`` files are kept between runs (None: memory only).
    """

    def __init__(self, graph: AnatomyGraph, folder: str | os.PathLike | None = None):
        self.graph = graph
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, np.ndarray] = {}

    def _key(self, image_path: Path, labels_path: Path) -> str:
        parts = [str(sorted(self.graph.identity.to_dict().items()))]
        for p in (image_path, labels_path):
            st = Path(p).stat()
            parts += [str(Path(p).resolve()), str(st.st_size), str(st.st_mtime_ns)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def __call__(self, image_path: str | os.PathLike, labels_path: str | os.PathLike) -> np.ndarray:
        """(R, F) features of a scan on the graph's grid.

        Raises:
            InputFileError: when a file is missing, unreadable, or not on the atlas grid.
        """
        image_path, labels_path = Path(image_path), Path(labels_path)
        for p in (image_path, labels_path):
            if not p.is_file():
                raise InputFileError(f"{p}: file not found; check the manifest paths")
        key = self._key(image_path, labels_path)
        if key in self._memory:
            return self._memory[key]
        disk = self.folder / f"{key}.npy" if self.folder is not None else None
        if disk is not None and disk.is_file():
            feats = np.load(disk, allow_pickle=False)
        else:
            feats = self._compute(image_path, labels_path)
            if disk is not None:
                buf = io.BytesIO()
                np.save(buf, feats, allow_pickle=False)
                write_bytes_atomic(disk, buf.getvalue())
        feats.setflags(write=False)
        self._memory[key] = feats
        return feats

    def _compute(self, image_path: Path, labels_path: Path) -> np.ndarray:
        img = load_nifti(image_path)
        lab = load_nifti(labels_path, labels=True)
        for vol, p in ((img, image_path), (lab, labels_path)):
            if not Grid.of(vol).same_as(self.graph.grid):
                raise InputFileError(
                    f"{p}: grid {vol.shape} differs from the atlas grid {self.graph.grid.shape} "
                    f"({self.graph.identity.grid}); register and resample the scan to the atlas "
                    "first")
        return node_features(img.data, lab.data, self.graph, img.affine)
