"""Train the graph encoder and trajectory head on a manifest's visit pairs (the graph stage).

The pairs, their truth and the loss come from :mod:`mambacontrol.graph.pairs`; the loop is the
engine's :class:`~mambacontrol.training.engine.Trainer`, as for every stage, here on one process's
CPU in fp32 (:class:`~mambacontrol.training.local_accelerator.LocalAccelerator`: the graph's
operations are too small to gain from devices or processes), writing nothing (it takes seconds,
so it is repeated rather than resumed). AdamW, a cosine LR decay to 5 % over the run, no gradient
clipping, batches of pairs drawn with replacement
(:class:`~mambacontrol.training.data_order.RandomIndexBatches`). With a ``valid`` split the
state with the lowest validation loss is kept (:class:`~mambacontrol.training.best_state.BestState`;
the untrained state, the population prior, competes too).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mambacontrol.atlas import Atlas
from mambacontrol.data.covariates import CovariateNorm
from mambacontrol.data.manifest import Manifest
from mambacontrol.errors import ConfigError, ManifestError
from mambacontrol.graph.anatomy import AnatomyGraph
from mambacontrol.graph.encoder import GraphEncoder
from mambacontrol.graph.features import FeatureCache, FeatureNorm
from mambacontrol.graph.pairs import PairSet, build_pairs, evaluate_loss, trajectory_loss
from mambacontrol.graph.trajectory import (
    DEFAULT_PRIOR_TERMS,
    TrajectoryHead,
    TrajectoryModel,
    fit_prior,
)
from mambacontrol.ops.threads import torch_threads
from mambacontrol.training.best_state import BestState
from mambacontrol.training.data_order import RandomIndexBatches
from mambacontrol.training.engine import Trainer
from mambacontrol.training.local_accelerator import LocalAccelerator
from mambacontrol.training.run_config import GraphStage

log = logging.getLogger(__name__)

#: the LR decays to this fraction of ``lr`` over the run
FINAL_LR_FRACTION = 0.05


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

    @classmethod
    def from_stage(cls, stage: GraphStage, encoder: Mapping) -> TrajectoryConfig:
        """The run config's ``graph`` section: every field named like one of ``graph.model``
        or ``graph.train`` takes its value, ``graph.model.head_hidden`` is the head's width;
        ``encoder`` holds the encoder's arguments. The rest keep their defaults."""
        section = {**dataclasses.asdict(stage.model), **dataclasses.asdict(stage.train)}
        shared = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        return cls(**shared, encoder=dict(encoder), head={"hidden": stage.model.head_hidden})


@dataclass
class TrainResult:
    """What :func:`train_trajectory` returns.

    Attributes:
        model: the trained encoder and head (the best validation state, if a valid split exists).
        history: one dict per evaluation (step, train_loss: the mean since the previous one,
            valid_loss), the first (step 0, valid_loss only) for the untrained state.
        train: the training pairs.
        valid: the validation pairs (None without a valid split).
    """

    model: TrajectoryModel
    history: list[dict]
    train: PairSet
    valid: PairSet | None


def train_trajectory(manifest: Manifest, atlas: Atlas,
                     config: TrajectoryConfig | dict | None = None, steps: int = 1000,
                     seed: int = 0, cache_dir: str | os.PathLike | None = None,
                     out_dir: str | os.PathLike | None = None,
                     threads: int | None = 1) -> TrainResult:
    """Train a graph encoder and trajectory head on a manifest's pairs.

    Node-feature statistics are fitted on the training baselines and stored in the encoder's
    config. With a ``valid`` split, the state with the lowest validation loss is kept.

    Args:
        manifest: visits with images, label maps (``segm_path``) and, ideally, ``vol_r<label>``.
        atlas: the atlas the scans are registered to (its grid).
        config: :class:`TrajectoryConfig` or a dict of its fields.
        steps: optimisation steps.
        seed: seeds initialisation, dropout and batch order.
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
    cov_norm = CovariateNorm.from_dict(cfg.covariate_norm)
    train, valid = _pair_sets(manifest, atlas, graph, FeatureCache(graph, cache_dir), cov_norm)
    model = _build_model(graph, train, cov_norm, cfg, seed)
    models = {"encoder": model.encoder, "head": model.head}
    optimizer = torch.optim.AdamW(list(model.parameters()), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    best = None if valid is None else BestState(
        lambda m: evaluate_loss(TrajectoryModel(m["encoder"], m["head"]), valid), list(models))
    trainer = Trainer(
        "graph", models, optimizer, _trajectory_step, RandomIndexBatches(
            {"features": train.features, "covariates": train.covariates, "years": train.years,
             "log_ratio": train.log_ratio, "mask": train.mask}, cfg.batch_size, seed),
        None, steps=steps, lr_scheduler=cosine_to_floor(optimizer, steps), max_grad_norm=None,
        evaluate=best, evaluate_every=cfg.eval_every, seed=None, trackers=(),
        accelerator=LocalAccelerator())
    trainer.run()
    if best is not None:
        best.restore(models)
    model.train(False)
    if out_dir is not None:
        model.save(Path(out_dir))
    history = _history(trainer.history, cfg.eval_every, None if best is None else best.scores)
    return TrainResult(model, history, train, valid)


def _pair_sets(manifest: Manifest, atlas: Atlas, graph: AnatomyGraph, cache: FeatureCache,
               cov_norm: CovariateNorm) -> tuple[PairSet, PairSet | None]:
    """The train pairs, and the valid pairs when the manifest has a usable valid split."""
    train = build_pairs(manifest, "train", atlas, graph, cache, cov_norm)
    valid = None
    if any(v.split == "valid" for v in manifest):
        try:
            valid = build_pairs(manifest, "valid", atlas, graph, cache, cov_norm)
        except ManifestError as exc:
            log.warning("no validation pairs (%s); training without model selection", exc)
    return train, valid


def _build_model(graph: AnatomyGraph, train: PairSet, cov_norm: CovariateNorm,
                 cfg: TrajectoryConfig, seed: int) -> TrajectoryModel:
    """A fresh encoder (feature statistics of the training baselines) and head (the population
    prior fitted on the training pairs), initialised from ``seed``."""
    baselines = {p.earlier.image_uid: i for i, p in enumerate(train.pairs)}
    feature_norm = FeatureNorm.fit(train.features[list(baselines.values())].numpy())
    torch.manual_seed(seed)  # also seeds the dropout of training, which continues this stream
    encoder = GraphEncoder.from_graph(graph, feature_norm, cov_norm, **cfg.encoder)
    prior = None
    if cfg.population_prior:
        prior = fit_prior(train.covariates, train.years, train.log_ratio, train.mask,
                          cfg.prior_terms, cfg.prior_ridge).tolist()
    head = TrajectoryHead(embed_dim=encoder.config.embed_dim, num_nodes=graph.num_nodes,
                          graph=graph.identity.to_dict(), prior_terms=list(cfg.prior_terms),
                          prior_coef=prior, **cfg.head)
    return TrajectoryModel(encoder, head)


def cosine_to_floor(optimizer: torch.optim.Optimizer, steps: int,
                    floor: float = FINAL_LR_FRACTION) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay of the LR from its value to ``floor`` × it over ``steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def _trajectory_step(batch: Mapping[str, torch.Tensor], models: Mapping[str, nn.Module],
                     step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The engine's ``step_fn``: the loss of a batch of pairs."""
    model = TrajectoryModel(models["encoder"], models["head"])
    pred = model(batch["features"], batch["covariates"], batch["years"])
    return trajectory_loss(pred, batch["log_ratio"], batch["mask"]), {}


def _history(losses: Sequence[float], eval_every: int,
             valid: Mapping[int, float] | None) -> list[dict]:
    """One entry per evaluation step (every ``eval_every`` steps and the last): the mean train
    loss since the previous one, and the validation loss (with step 0's first)."""
    history: list[dict] = [] if valid is None else [{"step": 0, "valid_loss": valid[0]}]
    previous = 0
    for step in range(1, len(losses) + 1):
        if step % eval_every == 0 or step == len(losses):
            entry = {"step": step, "train_loss": float(np.mean(losses[previous:step]))}
            if valid is not None:
                entry["valid_loss"] = valid[step]
            history.append(entry)
            previous = step
    return history
