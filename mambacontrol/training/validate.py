"""Check a whole run config before the first stage runs.

The YAML loader already checks keys and types (:mod:`mambacontrol.training.config`), and the
sampling defaults check themselves when loaded; this module checks the values that would otherwise
fail only when their stage starts, hours into a run: optimisation settings, the atlas and grid,
the manifest's existence, the noise schedule, and every enabled stage's network, built from the
config on the meta device (no memory, no weights), so that a bad channel count or group norm, an
oversize network (the ``max_model_parameters`` limit), a grid the autoencoder cannot divide or a
latent grid the UNet cannot divide is refused at once.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mambacontrol.atlas import Atlas, load_atlas
from mambacontrol.errors import ConfigError, MambaControlError
from mambacontrol.graph.encoder import GraphEncoder
from mambacontrol.io.limits import check_limit
from mambacontrol.training.run_config import OptimConfig, RunConfig
from mambacontrol.training.stage_autoencoder import build_autoencoder
from mambacontrol.training.stage_diffusion import (
    build_controlnet,
    build_unet,
    noise_schedule,
    uses_change_hint,
)
from mambacontrol.training.stage_graph import graph_encoder_arch
from mambacontrol.training.trackers import check_trackers


def _positive_int(key: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: {value} must be ≥ {minimum}")


def _check_optim(key: str, t: OptimConfig) -> None:
    _positive_int(f"{key}.steps", t.steps)
    _positive_int(f"{key}.batch_size", t.batch_size)
    _positive_int(f"{key}.warmup_steps", t.warmup_steps, 0)
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise ConfigError(f"{key}.lr: {t.lr} must be a positive number (e.g. 1e-4)")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        raise ConfigError(f"{key}.weight_decay: {t.weight_decay} must be ≥ 0")
    decay = getattr(t, "ema_decay", None)
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ConfigError(f"{key}.ema_decay: {decay} must lie in [0, 1)")
    for name in ("condition_dropout", "zero_horizon_pairs"):
        rate = getattr(t, name, None)
        if rate is not None and not 0.0 <= rate < 1.0:
            raise ConfigError(f"{key}.{name}: {rate} must lie in [0, 1) (0 turns it off; about "
                              "0.1 trains the guidance null)")
    for name in ("graph_lr", "graph_trajectory_weight"):
        value = getattr(t, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key}.{name}: {value} must be a number ≥ 0 (0 turns it off)")
    share = getattr(t, "predicted_change", None)
    if share is not None and not 0.0 <= share <= 1.0:
        raise ConfigError(f"{key}.predicted_change: {share} must lie in [0, 1] (the fraction of "
                          "pairs whose hint carries the trajectory head's change, not the truth)")


def _check_engine(cfg: RunConfig) -> None:
    e = cfg.engine
    for name in ("gradient_accumulation_steps", "keep_checkpoints", "log_every"):
        _positive_int(f"engine.{name}", getattr(e, name))
    for name in ("checkpoint_every", "image_every", "num_workers"):  # 0: only at the end / never
        _positive_int(f"engine.{name}", getattr(e, name), 0)
    norm = e.max_grad_norm
    if norm is not None and not (math.isfinite(norm) and norm > 0):
        raise ConfigError(f"engine.max_grad_norm: {norm} must be a positive number, or null for "
                          "no clipping")
    check_trackers(e.trackers, "engine.trackers")


def _build(key: str, make):
    """Build a network on the meta device; a constructor's complaint names the config section."""
    try:
        with torch.device("meta"):
            net = make()
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"{key}: the settings do not build a network ({exc}); fix them") from None
    check_limit("max_model_parameters", sum(p.numel() for p in net.parameters()),
                f"{key}: the settings build a network with that many parameters")
    return net


def validate_run_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for any value that a stage would
    refuse, before any stage runs."""
    atlas = _check_data(cfg)
    if not 0 <= cfg.seed < 2 ** 63:
        raise ConfigError(f"seed: {cfg.seed} must lie in 0…{2 ** 63 - 1}")
    _check_engine(cfg)
    _check_optimisation(cfg)
    _check_autoencoder_training(cfg, atlas)
    try:
        noise_schedule(cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"diffusion: {exc}") from None
    _check_networks(cfg, atlas)


def _check_data(cfg: RunConfig) -> Atlas:
    """The manifest exists and the atlas loads on the grid; returns the atlas."""
    if cfg.data.manifest is not None and not Path(cfg.data.manifest).is_file():
        raise ConfigError(f"data.manifest: {cfg.data.manifest} does not exist; give a manifest CSV")
    try:
        return load_atlas(cfg.data.atlas, cfg.data.grid)
    except MambaControlError as exc:
        raise ConfigError(f"data.atlas/data.grid: {exc}") from None


def _check_optimisation(cfg: RunConfig) -> None:
    """Every enabled stage's ``train`` section."""
    stages = {"autoencoder": cfg.autoencoder.train, "unet": cfg.unet.train}
    if cfg.graph.enabled:
        stages["graph"] = cfg.graph.train
    if cfg.controlnet.enabled:
        stages["controlnet"] = cfg.controlnet.train
    for name, train in stages.items():
        _check_optim(f"{name}.train", train)
    if cfg.controlnet.enabled and cfg.controlnet.train.graph_lr > 0 and not cfg.graph.enabled:
        raise ConfigError("controlnet.train.graph_lr: there is no graph encoder to train "
                          "(graph.enabled: false); set it to 0")
    if cfg.unet.model.concat_change and not cfg.graph.enabled:
        raise ConfigError("unet.model.concat_change: there is no trajectory head to predict the "
                          "change (graph.enabled: false); set it to false")


def _check_autoencoder_training(cfg: RunConfig, atlas: Atlas) -> None:
    """Patch size within the grid, non-negative loss weights, at least one scan for the scale."""
    t = cfg.autoencoder.train
    patch = list(t.patch_size)
    if len(patch) != 3 or any(p < 1 or p > s for p, s in zip(patch, atlas.grid.shape)):
        raise ConfigError(f"autoencoder.train.patch_size: {patch} must be 3 sizes within the grid "
                          f"{atlas.grid.shape}")
    for name in ("kl_weight", "change_weight", "change_sigma_mm", "adversarial_weight"):
        if not (math.isfinite(getattr(t, name)) and getattr(t, name) >= 0):
            raise ConfigError(f"autoencoder.train.{name}: {getattr(t, name)} must be ≥ 0")
    if t.change_weight > 0 and t.batch_size % 2:
        raise ConfigError(f"autoencoder.train.batch_size: {t.batch_size} must be even with "
                          f"change_weight > 0 (each batch is batch_size / 2 pairs of scans)")
    _positive_int("autoencoder.train.scale_scans", t.scale_scans)


def _check_networks(cfg: RunConfig, atlas: Atlas) -> None:
    """Every enabled stage's network, built on the meta device, and the grids they must divide."""
    ae = _build("autoencoder.model", lambda: build_autoencoder(cfg))
    try:
        ae.check_shape(atlas.grid.shape)
        ae.check_patch(cfg.autoencoder.train.patch_size)
    except ValueError as exc:
        raise ConfigError(f"autoencoder: {exc}") from None
    graph_dim = cfg.graph.model.embed_dim
    if cfg.graph.enabled:
        _build("graph.model", lambda: GraphEncoder(num_nodes=len(atlas.regions), num_edges=0,
                                                    **graph_encoder_arch(cfg)))
        _positive_int("graph.model.head_hidden", cfg.graph.model.head_hidden)
    unet = _build("unet.model", lambda: build_unet(cfg, ae.num_latent_channels, graph_dim))
    if cfg.controlnet.enabled:
        hint_graph = graph_dim if cfg.graph.enabled and cfg.controlnet.model.graph_hint else 0
        _build("controlnet.model", lambda: build_controlnet(cfg, unet, hint_graph,
                                                             uses_change_hint(cfg)))
