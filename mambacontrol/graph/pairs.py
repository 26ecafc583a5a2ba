"""What the graph encoder and trajectory head learn from: a manifest's visit pairs, and the loss.

For every (earlier, later) pair of a split (:func:`build_pairs`): node features of the earlier
scan (image and label map), its covariates (age, Δt, sex, diagnosis), and the true node log
volume ratio. The truth comes from the manifest's ``vol_r<label>`` columns (mm³ of every atlas
region, as the synthetic cohort writes them, measured sub-voxel). A manifest without them falls
back to counting label voxels in both segmentations, which sees no change smaller than a voxel
layer: atrophy of a few % per year leaves 2 mm label maps unchanged for years, so such targets
are mostly zero.
:func:`trajectory_loss` scores predicted node log volume ratios against them (the training loop
is in :mod:`mambacontrol.training`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mambacontrol.atlas import Atlas
from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.data.manifest import Manifest, Visit, VisitPair
from mambacontrol.errors import ManifestError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.graph.features import FeatureCache
from mambacontrol.graph.trajectory import TrajectoryModel
from mambacontrol.io import load_nifti

log = logging.getLogger(__name__)

VOLUME_PREFIX = "vol_r"


@dataclass
class PairSet:
    """Tensors of a split's pairs.

    Attributes:
        pairs: the visit pairs (N).
        features: (N, R, F) node features of the earlier scans.
        covariates: (N, 6).
        years: (N,) horizons.
        log_ratio: (N, R) true node log volume ratios.
        mask: (N, R) bool, False where a node's volume is zero in either visit.
        base_volumes: (N, L) earlier-visit volumes of every atlas label (mm³).
        follow_volumes: (N, L) later-visit volumes of every atlas label (mm³).
    """

    pairs: list[VisitPair]
    features: torch.Tensor
    covariates: torch.Tensor
    years: torch.Tensor
    log_ratio: torch.Tensor
    mask: torch.Tensor
    base_volumes: np.ndarray
    follow_volumes: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)


def has_volume_columns(manifest: Manifest, label_ids: list[int]) -> bool:
    """Whether every visit carries ``vol_r<label>`` for every label."""
    return all(all(f"{VOLUME_PREFIX}{lab}" in v.extra for lab in label_ids) for v in manifest)


def visit_label_volumes(visit: Visit, label_ids: list[int], from_columns: bool) -> np.ndarray:
    """(L,) volume of every label of one visit (mm³).

    Args:
        visit: the visit.
        label_ids: the labels, in order.
        from_columns: read ``vol_r<label>`` columns; otherwise count voxels of ``segm_path``.

    Raises:
        ManifestError: naming the visit and the missing or invalid value.
    """
    if from_columns:
        out = np.empty(len(label_ids))
        for i, lab in enumerate(label_ids):
            raw = visit.extra.get(f"{VOLUME_PREFIX}{lab}", "")
            try:
                out[i] = float(raw)
            except ValueError:
                raise ManifestError(f"visit {visit.image_uid}: column '{VOLUME_PREFIX}{lab}' holds "
                                    f"'{raw}', not a volume in mm³") from None
        return out
    if visit.segm_path is None:
        raise ManifestError(f"visit {visit.image_uid}: no segm_path; a label map is needed for "
                            "every scan (propagate the atlas labels by registration first)")
    labels = load_nifti(visit.segm_path, labels=True)
    counts = np.bincount(labels.data.ravel().astype(np.int64), minlength=max(label_ids) + 1)
    return counts[label_ids].astype(np.float64) * labels.voxel_volume


def node_volumes(graph: AnatomyGraph, label_volumes: np.ndarray,
                 label_ids: list[int]) -> np.ndarray:
    """(N, R) node volumes: label volumes (N, L) summed over each node's labels."""
    col = {lab: i for i, lab in enumerate(label_ids)}
    return np.stack([label_volumes[:, [col[lab] for lab in labels]].sum(axis=1)
                     for labels in graph.node_labels], axis=1)


def node_log_ratios(graph: AnatomyGraph, earlier: np.ndarray, later: np.ndarray,
                    label_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Node log volume ratios, later / earlier, from label volumes (N, L) of both visits.

    Returns:
        (N, R) log ratios (0 where invalid) and (N, R) bool validity: the node has volume in
        both visits.
    """
    nb, nf = node_volumes(graph, earlier, label_ids), node_volumes(graph, later, label_ids)
    mask = (nb > 0) & (nf > 0)
    ratio = np.where(mask, np.log(np.where(mask, nf, 1.0) / np.where(mask, nb, 1.0)), 0.0)
    return ratio, mask


def build_pairs(manifest: Manifest, split: str, atlas: Atlas, graph: AnatomyGraph,
                cache: FeatureCache, covariate_norm: CovariateNorm) -> PairSet:
    """Features, covariates and truth of every pair of one split.

    Raises:
        ManifestError: when the split has no pairs or a baseline has no label map.
    """
    sub = manifest.select(split)
    pairs = sub.pairs()
    if not pairs:
        raise ManifestError(f"split '{split}' has no visit pairs (subjects need ≥ 2 visits at "
                            f"different ages)")
    label_ids = atlas.label_ids
    from_columns = has_volume_columns(sub, label_ids)
    if not from_columns:
        log.warning("manifest has no %s<label> columns for every visit: targets come from "
                    "label-voxel counts of the follow-up segmentations, which see no sub-voxel "
                    "change", VOLUME_PREFIX)
    feats, base, follow = [], [], []
    for pair in tqdm(pairs, desc=f"features ({split})", disable=None, leave=False):
        b = pair.earlier
        if b.segm_path is None:
            raise ManifestError(f"visit {b.image_uid}: no segm_path; node features need the scan's "
                                "label map (propagate the atlas labels by registration first)")
        feats.append(cache(b.image_path, b.segm_path))
        base.append(visit_label_volumes(b, label_ids, from_columns))
        follow.append(visit_label_volumes(pair.later, label_ids, from_columns))
    base_v, follow_v = np.stack(base), np.stack(follow)
    ratio, mask = node_log_ratios(graph, base_v, follow_v, label_ids)
    years = np.array([p.years for p in pairs])
    cov = encode_covariates([p.earlier.age for p in pairs], years, [p.earlier.sex for p in pairs],
                            [p.earlier.diagnosis for p in pairs], covariate_norm)
    return PairSet(pairs, torch.from_numpy(np.stack(feats)), cov, torch.from_numpy(years).float(),
                   torch.from_numpy(ratio).float(), torch.from_numpy(mask), base_v, follow_v)


def trajectory_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of node log volume ratios, in (%)², over valid nodes."""
    err = (pred - target) * 100.0 * mask
    return (err**2).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def evaluate_loss(model: TrajectoryModel, data: PairSet, batch_size: int = 256) -> float:
    """:func:`trajectory_loss` over a whole pair set."""
    model.train(False)
    total, count = 0.0, 0.0
    for i in range(0, len(data), batch_size):
        sl = slice(i, i + batch_size)
        pred = model(data.features[sl], data.covariates[sl], data.years[sl])
        m = data.mask[sl]
        total += float(trajectory_loss(pred, data.log_ratio[sl], m)) * float(m.sum())
        count += float(m.sum())
    return total / max(count, 1.0)
