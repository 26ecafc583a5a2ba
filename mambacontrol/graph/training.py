"""Train the graph encoder and trajectory head on a manifest's visit pairs.

For every (earlier, later) pair of a split: node features of the earlier scan (image and label
map), its covariates (age, Δt, sex, diagnosis), and the true node log volume ratio. The truth
comes from the manifest's ``vol_r<label>`` columns (mm³ of every atlas region, as the synthetic
cohort writes them, measured sub-voxel). A manifest without them falls back to counting label
voxels in both segmentations, which sees no change smaller than a voxel layer: atrophy of a few
% per year leaves 2 mm label maps unchanged for years, so such targets are mostly zero.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mambacontrol.atlas import Atlas
from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.data.manifest import Manifest, Visit, VisitPair
from mambacontrol.errors import ConfigError, ManifestError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.graph.encoder import GraphEncoder
from mambacontrol.graph.features import FeatureCache, FeatureNorm
from mambacontrol.graph.trajectory import (
    DEFAULT_PRIOR_TERMS,
    TrajectoryHead,
    TrajectoryModel,
    fit_prior,
)
from mambacontrol.io import load_nifti
from mambacontrol.ops.threads import torch_threads

log = logging.getLogger(__name__)

VOLUME_PREFIX = "vol_r"


@dataclass
class TrajectoryConfig:
    """What :func:`train_trajectory` builds and how it trains.

    Attributes:
        grouping: node set of the anatomy graph.
        homologue_edges: add left/right homologue edges.
        encoder: :class:`GraphEncoder` architecture arguments (embed_dim, conv, spectral switches…).
        head: :class:`TrajectoryHead` arguments (hidden, curvature).
        lr: AdamW learning rate (cosine decay to 5 % over the run).
        weight_decay: AdamW weight decay.
        batch_size: pairs per step.
        eval_every: steps between validation passes (the best validation state is kept).
        covariate_norm: :class:`CovariateNorm` fields (None: the defaults).
        population_prior: start the head at the regional population prior fitted on the training
            pairs (:func:`fit_prior`); off, it learns the whole rate.
        prior_terms: optional covariate terms of the prior (:data:`PRIOR_TERMS`).
        prior_ridge: relative ridge of that fit.
    """

    grouping: str = "region"
    homologue_edges: bool = True
    encoder: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    eval_every: int = 50
    covariate_norm: dict | None = None
    population_prior: bool = True
    prior_terms: list = field(default_factory=lambda: list(DEFAULT_PRIOR_TERMS))
    prior_ridge: float = 1e-3

    @classmethod
    def from_dict(cls, d: dict | None) -> TrajectoryConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise :class:`ConfigError`."""
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown trajectory config key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**d)


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
        raise ManifestError(f"visit {visit.image_uid}: no segm_path; a label map is needed for every "
                            "scan (propagate the atlas labels by registration first)")
    labels = load_nifti(visit.segm_path, labels=True)
    counts = np.bincount(labels.data.ravel().astype(np.int64), minlength=max(label_ids) + 1)
    return counts[label_ids].astype(np.float64) * labels.voxel_volume


def node_volumes(graph: AnatomyGraph, label_volumes: np.ndarray, label_ids: list[int]) -> np.ndarray:
    """(N, R) node volumes: label volumes (N, L) summed over each node's labels."""
    col = {lab: i for i, lab in enumerate(label_ids)}
    return np.stack([label_volumes[:, [col[lab] for lab in labels]].sum(axis=1)
                     for labels in graph.node_labels], axis=1)


def build_pairs(manifest: Manifest, split: str, atlas: Atlas, graph: AnatomyGraph, cache: FeatureCache,
                covariate_norm: CovariateNorm) -> PairSet:
    """Features, covariates and truth of every pair of one split.

    Raises:
        ManifestError: when the split has no pairs or a baseline has no label map.
    """
    sub = manifest.select(split)
    pairs = sub.pairs()
    if not pairs:
        raise ManifestError(f"split '{split}' has no visit pairs (subjects need ≥ 2 visits at different ages)")
    label_ids = atlas.label_ids
    from_columns = has_volume_columns(sub, label_ids)
    if not from_columns:
        log.warning("manifest has no %s<label> columns for every visit: targets come from label-voxel "
                    "counts of the follow-up segmentations, which see no sub-voxel change", VOLUME_PREFIX)
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
    nb, nf = node_volumes(graph, base_v, label_ids), node_volumes(graph, follow_v, label_ids)
    mask = (nb > 0) & (nf > 0)
    ratio = np.where(mask, np.log(np.where(mask, nf, 1.0) / np.where(mask, nb, 1.0)), 0.0)
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


@dataclass
class TrainResult:
    """What :func:`train_trajectory` returns.

    Attributes:
        model: the trained encoder and head (the best validation state, if a valid split exists).
        history: one dict per evaluation (step, train_loss, valid_loss).
        train: the training pairs.
        valid: the validation pairs (None without a valid split).
    """

    model: TrajectoryModel
    history: list[dict]
    train: PairSet
    valid: PairSet | None


def train_trajectory(manifest: Manifest, atlas: Atlas, config: TrajectoryConfig | dict | None = None,
                     steps: int = 1000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                     out_dir: str | os.PathLike | None = None, threads: int | None = 1) -> TrainResult:
    """Train a graph encoder and trajectory head on a manifest's pairs.

    Node-feature statistics are fitted on the training baselines and stored in the encoder's
    config. With a ``valid`` split, the state with the lowest validation loss is kept.

    Args:
        manifest: visits with images, label maps (``segm_path``) and, ideally, ``vol_r<label>``.
        atlas: the atlas the scans are registered to (its grid).
        config: :class:`TrajectoryConfig` or a dict of its fields.
        steps: optimisation steps.
        seed: seeds initialisation and batch order.
        cache_dir: folder for per-scan node features (None: memory only).
        out_dir: when given, the model is saved there (``encoder/``, ``head/``).
        threads: torch intra-op threads while training (restored afterwards; None: leave as is).
            The graph's operations are too small to gain from threads, and on a busy machine the
            threads' spin-waits make each step up to ten times slower, so the default is 1.

    Raises:
        ManifestError: when the train split has no usable pairs.
        ConfigError: for unknown config keys.
    """
    cfg = config if isinstance(config, TrajectoryConfig) else TrajectoryConfig.from_dict(config)
    if steps < 1:
        raise ConfigError(f"steps {steps} must be ≥ 1")
    with torch_threads(threads):
        return _train(manifest, atlas, cfg, steps, seed, cache_dir, out_dir)


def _train(manifest: Manifest, atlas: Atlas, cfg: TrajectoryConfig, steps: int, seed: int,
           cache_dir: str | os.PathLike | None, out_dir: str | os.PathLike | None) -> TrainResult:
    graph = AnatomyGraph.from_atlas(atlas, cfg.grouping, cfg.homologue_edges)
    cache = FeatureCache(graph, cache_dir)
    cov_norm = CovariateNorm.from_dict(cfg.covariate_norm)
    train = build_pairs(manifest, "train", atlas, graph, cache, cov_norm)
    valid = None
    if any(v.split == "valid" for v in manifest):
        try:
            valid = build_pairs(manifest, "valid", atlas, graph, cache, cov_norm)
        except ManifestError as exc:
            log.warning("no validation pairs (%s); training without model selection", exc)

    baselines = {p.earlier.image_uid: i for i, p in enumerate(train.pairs)}
    feature_norm = FeatureNorm.fit(train.features[list(baselines.values())].numpy())
    torch.manual_seed(seed)
    encoder = GraphEncoder.from_graph(graph, feature_norm, cov_norm, **cfg.encoder)
    prior = None
    if cfg.population_prior:
        prior = fit_prior(train.covariates, train.years, train.log_ratio, train.mask, cfg.prior_terms,
                          cfg.prior_ridge).tolist()
    head = TrajectoryHead(embed_dim=encoder.config.embed_dim, num_nodes=graph.num_nodes,
                          graph=graph.identity.to_dict(), prior_terms=list(cfg.prior_terms),
                          prior_coef=prior, **cfg.head)
    model = TrajectoryModel(encoder, head)
    optim = torch.optim.AdamW(list(model.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)

    history: list[dict] = []
    best: tuple[float, dict, dict] | None = None
    if valid is not None:  # the untrained state (the population prior) competes too
        start = evaluate_loss(model, valid)
        history.append({"step": 0, "valid_loss": start})
        best = (start, copy.deepcopy(encoder.state_dict()), copy.deepcopy(head.state_dict()), 0)
    running = []
    bar = tqdm(range(1, steps + 1), desc="train trajectory", disable=None)
    for step in bar:
        model.train(True)
        idx = torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=gen)
        pred = model(train.features[idx], train.covariates[idx], train.years[idx])
        loss = trajectory_loss(pred, train.log_ratio[idx], train.mask[idx])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == steps:
            entry = {"step": step, "train_loss": float(np.mean(running))}
            running = []
            if valid is not None:
                entry["valid_loss"] = evaluate_loss(model, valid)
                if best is None or entry["valid_loss"] < best[0]:
                    best = (entry["valid_loss"], copy.deepcopy(encoder.state_dict()),
                            copy.deepcopy(head.state_dict()), step)
            history.append(entry)
            bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k != "step"})
            log.info("trajectory step %d/%d: %s", step, steps,
                     ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in entry.items() if k != "step"))
    if best is not None:
        encoder.load_state_dict(best[1])
        head.load_state_dict(best[2])
        log.info("trajectory: kept the state of step %d (lowest validation loss, %.4g)", best[3], best[0])
    model.train(False)
    if out_dir is not None:
        model.save(Path(out_dir))
    return TrainResult(model, history, train, valid)
