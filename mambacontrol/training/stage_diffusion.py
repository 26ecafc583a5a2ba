"""Stages ``unet`` and ``controlnet``: denoising the latent target of visit pairs.

Both draw a random diffusion step per pair, noise the scaled target (the latent change, or the
follow-up latent), and regress the network output onto the noise (``epsilon``) or the velocity
(``v_prediction``) with a mean squared error. The ``unet`` stage trains the denoiser with the
covariate token and the frozen graph encoder's tokens as context; the ``controlnet`` stage freezes
that UNet and trains a ControlNet initialised from it, whose hint is the baseline latent, the
graph map, the regional change map (``controlnet.model.change_hint``: the pair's true node log
volume ratios, or for ``controlnet.train.predicted_change`` of the pairs the frozen trajectory
head's prediction, as at sampling; :func:`hinted_change`) and the Δt map. In both,
``train.zero_horizon_pairs`` of the pairs (default 10 %) become same-visit pairs, the guidance
null (``pipeline.denoiser.null_horizon``) with no change, and ``train.condition_dropout`` of them
(default 0) keep their target under the null (:func:`with_null_horizons`). Both keep an EMA of
the trained weights and save the EMA weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mambacontrol.data.covariates import CovariateNorm
from mambacontrol.errors import ConfigError
from mambacontrol.graph import AnatomyGraph, GraphEncoder, TrajectoryHead
from mambacontrol.graph.pairs import trajectory_loss
from mambacontrol.io.tables import write_json
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.schedulers import NoiseSchedule, training_scheduler
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.conditioning import change_map, encode_graph, hint_channels
from mambacontrol.pipeline.denoiser import ConditionedDenoiser
from mambacontrol.training.checkpoint import latest_checkpoint
from mambacontrol.training.common import engine_settings, make_optimizer
from mambacontrol.training.config import arguments_for
from mambacontrol.training.data import RunData, pair_items, weights_hash
from mambacontrol.training.data_order import ResumableBatches
from mambacontrol.training.engine import StageSummary, Trainer
from mambacontrol.training.run_config import DiffusionTrain, RunConfig
from mambacontrol.training.stage_graph import TUNED_MARKER


def noise_schedule(cfg: RunConfig) -> NoiseSchedule:
    """The run's forward process: the ``diffusion`` section's schedule arguments."""
    return NoiseSchedule(**arguments_for(NoiseSchedule, cfg.diffusion))


def build_unet(cfg: RunConfig, latent_channels: int, context_dim: int) -> DenoisingUNet:
    """The denoiser of ``unet.model`` generating ``diffusion.target``, on latents of
    ``latent_channels`` (the autoencoder's) with context tokens of width ``context_dim`` (the
    graph encoder's)."""
    return DenoisingUNet(**arguments_for(DenoisingUNet, cfg.unet.model),
                         target=cfg.diffusion.target, latent_channels=latent_channels,
                         context_dim=context_dim)


def uses_change_hint(cfg: RunConfig) -> bool:
    """Whether the run's ControlNet hint carries the regional change map: ``controlnet.model.
    change_hint`` where there is a trajectory head to predict the change (``graph.enabled``)."""
    return bool(cfg.controlnet.model.change_hint and cfg.graph.enabled)


def build_controlnet(cfg: RunConfig, unet: DenoisingUNet, graph_dim: int,
                     change: bool = False) -> MambaControlNet:
    """The ControlNet of ``controlnet.model``, shaped like and initialised from ``unet``, for a
    hint carrying ``graph_dim`` graph channels (0: no graph map) and, with ``change``, the change
    map (:func:`uses_change_hint`)."""
    arguments = {**arguments_for(MambaControlNet, cfg.controlnet.model), "change_hint": change}
    return MambaControlNet.from_unet(
        unet, hint_channels=hint_channels(unet.config.latent_channels, graph_dim, change),
        **arguments)


class DiffusionObjective:
    """Noise a scaled target at random steps; the loss of a prediction of noise or velocity."""

    def __init__(self, schedule: NoiseSchedule):
        self.scheduler = training_scheduler(schedule)
        self.prediction_type = schedule.prediction_type
        self.num_steps = schedule.num_train_timesteps

    def noisy(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy target, timesteps (B,), regression target) for a (B, C, x, y, z) target."""
        noise = torch.randn_like(target)
        t = torch.randint(0, self.num_steps, (target.shape[0],), device=target.device)
        noisy = self.scheduler.add_noise(target, noise, t)
        goal = (noise if self.prediction_type == "epsilon"
                else self.scheduler.get_velocity(target, noise, t))
        return noisy, t, goal


def _graph_parts(models: dict, batch: dict):
    """(nodes (B, R, E), pooled tokens, graph map) of the graph encoder, or Nones; with
    gradients where the encoder is trained (``controlnet.train.graph_lr``)."""
    encoder = models.get("graph_encoder")
    if encoder is None:
        return None, None, None
    trained = any(p.requires_grad for p in encoder.parameters())
    with torch.set_grad_enabled(trained and torch.is_grad_enabled()):
        return encode_graph(encoder, batch["features"], batch["assignment"], batch["covariates"])


def hinted_change(batch: dict, nodes: torch.Tensor, head: TrajectoryHead,
                  predicted_share: float) -> torch.Tensor:
    """The change map a training batch's hint carries: (B, 1, x, y, z).

    Each pair's true node log volume ratios (``batch["log_ratio"]``, (B, R)), or, with probability
    ``predicted_share`` (the global generator, so a resumed run draws what an unbroken one
    would), the frozen trajectory head's prediction from the graph encoder's ``nodes``
    (B, R, E) at the pair's horizon, as sampling paints it.
    """
    truth = batch["log_ratio"]
    if predicted_share > 0:
        with torch.no_grad():
            predicted = head(nodes, batch["covariates"], batch["years"].reshape(-1))
        rows = torch.rand(truth.shape[0], device=truth.device) < predicted_share
        truth = torch.where(rows[:, None], predicted.to(truth.dtype), truth)
    return change_map(truth, batch["assignment"])


def dropped_horizons(batch_size: int, rate: float, device) -> torch.Tensor | None:
    """(B,) bool: which pairs of a batch train the guidance null, each with probability
    ``rate`` (the global generator, so a resumed run draws what an unbroken one would); None at
    rate 0 (nothing drawn)."""
    if rate <= 0:
        return None
    return torch.rand(batch_size, device=device) < rate


def with_null_horizons(batch: dict, train: DiffusionTrain) -> tuple[dict, torch.Tensor | None]:
    """A training batch as the stage learns it, and its (B,) rows under the guidance null.

    ``train.condition_dropout`` of the pairs keep their target under the null horizon
    (classifier-free guidance's dropout: the null learns the change when the horizon is unknown);
    ``train.zero_horizon_pairs`` of them become same-visit pairs, the null horizon with no change
    (``z_follow`` := ``z_base``: the null learns that no time passing changes nothing). The batch
    given is not modified.
    """
    z_base = batch["z_base"]
    dropped = dropped_horizons(z_base.shape[0], train.condition_dropout, z_base.device)
    same = dropped_horizons(z_base.shape[0], train.zero_horizon_pairs, z_base.device)
    if same is None:
        return batch, dropped
    z_follow = torch.where(same.view(-1, 1, 1, 1, 1), z_base, batch["z_follow"])
    return {**batch, "z_follow": z_follow}, same if dropped is None else dropped | same


def _denoise(models: dict, batch: dict, noisy: torch.Tensor, ts: torch.Tensor,
             graph_hint: bool = False, drop_horizon: torch.Tensor | None = None,
             predicted_change: float | None = None, graph_parts: tuple | None = None
             ) -> torch.Tensor:
    """One denoising step of a training batch: the batch's conditioning built and run by the
    :class:`~mambacontrol.pipeline.denoiser.ConditionedDenoiser` that sampling uses too (the
    UNet alone in the ``unet`` stage; ControlNet → frozen UNet in the ``controlnet`` stage).
    ``drop_horizon`` (B,) bool: pairs whose horizon is replaced by the guidance null.
    ``predicted_change``: where the ControlNet's hint or the UNet's input carries the change
    map, the share of pairs given the trajectory head's change (:func:`hinted_change`); None
    where neither does. ``graph_parts``: the batch's
    :func:`_graph_parts`, where the caller has them already."""
    controlnet = models.get("controlnet")
    reads_change = predicted_change is not None
    change_hint = (controlnet is not None and reads_change
                   and getattr(controlnet, "module", controlnet).config.change_hint)
    denoiser = ConditionedDenoiser(models["unet"], controlnet, graph_hint,
                                   unet_frozen=controlnet is not None, change_hint=change_hint)
    nodes, tokens, gmap = graph_parts or _graph_parts(models, batch)
    change = (hinted_change(batch, nodes, models["trajectory_head"], predicted_change)
              if reads_change else None)
    conditioning = denoiser.condition(batch["z_base"], batch["covariates"], batch["years"],
                                      tokens, gmap, drop_horizon=drop_horizon, change=change)
    return denoiser(noisy, ts, conditioning)


def _load_frozen(out: Path, cfg: RunConfig, device, head: bool = False) -> dict:
    """The frozen graph encoder (with ``graph.enabled``) and, with ``head``, trajectory head."""
    frozen = {}
    if cfg.graph.enabled:
        frozen["graph_encoder"] = GraphEncoder.load(out / "graph_encoder", device)
        if head:
            frozen["trajectory_head"] = TrajectoryHead.load(out / "trajectory_head", device)
    return frozen


def _items(cfg: RunConfig, data: RunData, out: Path, frozen: dict, factor: int) -> list[dict]:
    ae_hash = weights_hash(out / "autoencoder")
    norm = CovariateNorm()
    graph = None
    if "graph_encoder" in frozen:
        graph = AnatomyGraph.from_identity(data.atlas, frozen["graph_encoder"].config.graph)
        frozen["graph_encoder"].check_graph(graph)
    pairs = data.pairs("train")
    if not pairs:
        raise ConfigError("the train split has no subject with two visits; the diffusion stages "
                          "train on visit pairs")
    return pair_items(data, pairs, ae_hash, norm, graph, factor,
                      cfg.controlnet.model.graph_painting)


def _as_panel(volumes: list[torch.Tensor]) -> np.ndarray:
    """Coronal middle slices of (C, x, y, z) latents side by side, channel 0, scaled to [0, 1]."""
    slices = [v[0, :, v.shape[2] // 2, :].T.flip(0).float().cpu().numpy() for v in volumes]
    joined = np.concatenate(slices, axis=1)
    lo, hi = float(joined.min()), float(joined.max())
    return (joined - lo) / (hi - lo) if hi > lo else np.zeros_like(joined)


def denoising_logger(objective: DiffusionObjective, item: dict, denoise):
    """TensorBoard images: a training pair's target beside the network's one-step estimate of it
    from noise level t = T/2 (a cheap view of what the model has learned)."""
    def log_images(models, step):
        batch = {k: v[None] for k, v in item.items()}
        target = batch.pop("target")
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(target.shape, generator=g)
        device = next(next(iter(models.values())).parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        target, noise = target.to(device), noise.to(device)
        t = torch.full((1,), objective.num_steps // 2, device=device, dtype=torch.long)
        noisy = objective.scheduler.add_noise(target, noise, t)
        pred = denoise(models, batch, noisy, t)
        a = objective.scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1, 1)
        if objective.prediction_type == "epsilon":
            estimate = (noisy - (1 - a).sqrt() * pred) / a.sqrt()
        else:
            estimate = a.sqrt() * noisy - (1 - a).sqrt() * pred
        return {"target_vs_estimate": _as_panel([target[0], estimate[0]])}

    return log_images


def target_scale(unet: DenoisingUNet, items: list[dict]) -> float:
    """1 / std of the unscaled targets over the training pairs."""
    raw = torch.stack([unet.target_from_latents(i["z_base"], i["z_follow"])
                       / unet.config.target_scale for i in items])
    std = float(raw.double().std())
    return 1.0 / std if std > 0 else 1.0


def _preview(unet: DenoisingUNet, item: dict) -> dict:
    """A training pair with its diffusion target, for :func:`denoising_logger`."""
    return {**item, "target": unet.target_from_latents(item["z_base"], item["z_follow"])}


def train_unet(cfg: RunConfig, data: RunData, out: Path, resume: bool,
               config_dict: dict) -> StageSummary:
    """Train the denoiser; save ``<out>/unet`` (EMA weights)."""
    ae = Autoencoder.load(out / "autoencoder")
    reads_change = cfg.unet.model.concat_change
    frozen = _load_frozen(out, cfg, "cpu", head=reads_change)
    context_dim = (frozen["graph_encoder"].config.embed_dim if frozen
                   else cfg.graph.model.embed_dim)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, ae.num_latent_channels, context_dim)
    items = _items(cfg, data, out, frozen, ae.downsample_factor)
    unet.set_target_scale(target_scale(unet, items))
    objective = DiffusionObjective(noise_schedule(cfg))
    t = cfg.unet.train
    optimizer, scheduler = make_optimizer(unet.parameters(), t)

    def denoise(models, batch, noisy, ts, drop_horizon=None):
        return _denoise(models, batch, noisy, ts, drop_horizon=drop_horizon,
                        predicted_change=t.predicted_change if reads_change else None)

    def step_fn(batch, models, step):
        batch, drop = with_null_horizons(batch, t)
        target = unet.target_from_latents(batch["z_base"], batch["z_follow"])  # config only
        noisy, ts, goal = objective.noisy(target)
        pred = denoise(models, batch, noisy, ts, drop_horizon=drop)
        loss = F.mse_loss(pred.float(), goal.float())
        return loss, {}

    trainer = Trainer("unet", {"unet": unet}, optimizer, step_fn,
                      ResumableBatches(items, t.batch_size, seed=cfg.seed,
                                       num_workers=cfg.engine.num_workers), out, steps=t.steps,
                      lr_scheduler=scheduler, frozen=frozen, ema=("unet",), ema_decay=t.ema_decay,
                      config=config_dict,
                      image_logger=denoising_logger(objective, _preview(unet, items[0]),
                                                    denoise),
                      **engine_settings(cfg))
    summary = trainer.run(resume=resume)
    if trainer.accelerator.is_main_process:
        with trainer.ema_weights() as models:
            models["unet"].save(out / "unet")
    trainer.accelerator.wait_for_everyone()
    return summary


def train_controlnet(cfg: RunConfig, data: RunData, out: Path, resume: bool,
                     config_dict: dict) -> StageSummary:
    """Train the ControlNet on the frozen UNet; save ``<out>/controlnet`` (EMA weights) and, with
    ``controlnet.train.graph_lr`` > 0, the graph encoder trained with it over
    ``<out>/graph_encoder`` (marked by :data:`TUNED_MARKER`)."""
    ae = Autoencoder.load(out / "autoencoder")
    unet = DenoisingUNet.load(out / "unet")
    t = cfg.controlnet.train
    change_hint = uses_change_hint(cfg)
    reads_change = change_hint or unet.config.concat_change
    tune_graph = cfg.graph.enabled and t.graph_lr > 0
    if tune_graph:
        _check_graph_start(out)
    frozen = _load_frozen(out, cfg, "cpu", head=reads_change or tune_graph)
    graph_dim = (frozen["graph_encoder"].config.embed_dim
                 if frozen and cfg.controlnet.model.graph_hint else 0)
    torch.manual_seed(cfg.seed)
    controlnet = build_controlnet(cfg, unet, graph_dim, change_hint)
    items = _items(cfg, data, out, frozen, ae.downsample_factor)
    frozen["unet"] = unet
    trained = {"controlnet": controlnet}
    groups = [{"params": list(controlnet.parameters()), "lr": t.lr}]
    if tune_graph:
        trained["graph_encoder"] = frozen.pop("graph_encoder")
        groups.append({"params": list(trained["graph_encoder"].parameters()), "lr": t.graph_lr,
                       "name": "graph_encoder"})
    objective = DiffusionObjective(noise_schedule(cfg))
    optimizer, scheduler = make_optimizer(groups, t)

    def denoise(models, batch, noisy, ts, drop_horizon=None, graph_parts=None):
        return _denoise(models, batch, noisy, ts, graph_hint=bool(graph_dim),
                        drop_horizon=drop_horizon,
                        predicted_change=t.predicted_change if reads_change else None,
                        graph_parts=graph_parts)

    def step_fn(batch, models, step):
        pairs = batch
        batch, drop = with_null_horizons(batch, t)
        target = unet.target_from_latents(batch["z_base"], batch["z_follow"])
        noisy, ts, goal = objective.noisy(target)
        parts = _graph_parts(models, batch)
        pred = denoise(models, batch, noisy, ts, drop_horizon=drop, graph_parts=parts)
        loss = F.mse_loss(pred.float(), goal.float())
        if not tune_graph:
            return loss, {}
        # the tuned encoder's nodes still feed the frozen head: hold them to the true change
        head = models["trajectory_head"](parts[0], pairs["covariates"], pairs["years"].reshape(-1))
        held = trajectory_loss(head.float(), pairs["log_ratio"], pairs["log_ratio_mask"])
        return loss + t.graph_trajectory_weight * held, {"trajectory_loss": float(held.detach())}

    trainer = Trainer("controlnet", trained, optimizer, step_fn,
                      ResumableBatches(items, t.batch_size, seed=cfg.seed,
                                       num_workers=cfg.engine.num_workers), out, steps=t.steps,
                      lr_scheduler=scheduler, frozen=frozen, ema=tuple(trained),
                      ema_decay=t.ema_decay, config=config_dict,
                      image_logger=denoising_logger(objective, _preview(unet, items[0]), denoise),
                      **engine_settings(cfg))
    summary = trainer.run(resume=resume)
    if trainer.accelerator.is_main_process:
        with trainer.ema_weights() as models:
            models["controlnet"].save(out / "controlnet")
            if tune_graph:
                models["graph_encoder"].save(out / "graph_encoder")
                write_json(out / "graph_encoder" / TUNED_MARKER,
                           {"stage": "controlnet", "graph_lr": t.graph_lr,
                            "graph_trajectory_weight": t.graph_trajectory_weight,
                            "steps": summary.steps})
    trainer.accelerator.wait_for_everyone()
    return summary


def _check_graph_start(out: Path) -> None:
    """Refuse to start tuning a graph encoder that a ControlNet run has tuned already (a resumed
    run reads the encoder from its checkpoint instead)."""
    if (out / "graph_encoder" / TUNED_MARKER).is_file() and \
            latest_checkpoint(out / "checkpoints" / "controlnet") is None:
        raise ConfigError(f"{out / 'graph_encoder'} was already trained with a ControlNet "
                          f"({TUNED_MARKER}); run `mambacontrol train graph` again to start from "
                          "the graph stage's encoder")
