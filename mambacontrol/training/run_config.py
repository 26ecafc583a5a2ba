"""The schema of a training run: what `train/configs/*.yaml` may say, with defaults.

Every stage has a ``model`` (architecture, saved in the component's config) and a ``train``
(optimisation) section. A network's section *is* some of its component's keyword arguments:
made from the constructor's signature (:func:`~mambacontrol.training.config.signature_fields`:
same names, types and defaults), and passed back to it with the arguments the run derives
(``DenoisingUNet(**arguments_for(DenoisingUNet, cfg.unet.model), latent_channels=...)``), so every
default lives in the component alone. Likewise ``diffusion`` holds
:class:`~mambacontrol.models.schedulers.NoiseSchedule`'s arguments (and the UNet's ``target``),
and ``sampling`` is :class:`~mambacontrol.pipeline.progression.SamplingDefaults` itself.
Ablations are switches here, not code forks:

- no graph: ``graph.enabled: false`` (no graph hint, no graph tokens; retrains the UNet), or
  ``controlnet.model.graph_hint: false`` (the ControlNet alone loses the graph map);
- no spectral features: ``graph.model.spectral_filters: false``;
- no Fourier refinement: ``graph.model.fourier_refine: false`` and
  ``controlnet.model.fourier_levels: [false, ...]``;
- attention instead of Mamba in the ControlNet: ``controlnet.model.mixer: attention``;
- no ControlNet (UNet only): ``controlnet.enabled: false``;
- the population UNet (only the ControlNet sees the baseline): ``unet.model.concat_base: false``;
- no regional change in the ControlNet's hint: ``controlnet.model.change_hint: false``;
- the regional change map as a UNet input channel too (an experiment, off by default):
  ``unet.model.concat_change: true``;
- today's design before issue 14: ``unet.model.covariate_time_embedding: false``,
  ``controlnet.model.graph_painting: majority``, ``controlnet.model.change_hint: false``,
  ``{unet,controlnet}.train.zero_horizon_pairs: 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from mambacontrol.graph import AnatomyGraph, GraphEncoder, TrajectoryHead
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.schedulers import NoiseSchedule
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.progression import SamplingDefaults
from mambacontrol.training.config import signature_fields
from mambacontrol.training.engine import Trainer


def _section(name: str, doc: str, *field_groups: list[tuple[str, Any, Any]]) -> type:
    """A schema dataclass made of the given fields (see
    :func:`~mambacontrol.training.config.signature_fields`)."""
    fields = [f for group in field_groups for f in group]
    return make_dataclass(name, fields, namespace={"__doc__": doc, "__module__": __name__})


@dataclass
class DataConfig:
    """Where the scans come from.

    Attributes:
        manifest: manifest CSV (relative paths resolve against the current folder); ``null`` only
            when a caller (the demo) provides one.
        atlas: atlas name.
        grid: atlas grid the model works on (``2mm``, ``1p5mm``, ``4mm``); scans not already on it
            are registered to it once and cached.
    """

    manifest: str | None = None
    atlas: str = "icbm152-2009a-nmm"
    grid: str = "2mm"


EngineConfig = _section(
    "EngineConfig", "Settings shared by every stage's training loop: the "
    ":class:`~mambacontrol.training.engine.Trainer`'s keyword arguments (``trackers``: experiment "
    "loggers, ``tensorboard`` into ``<run>/logs/<stage>/``, ``wandb``, ``mlflow``, each of which "
    "must be installed; ``[]``: none), and ``num_workers``, the data loader's processes.",
    signature_fields(Trainer, ("mixed_precision", "gradient_accumulation_steps",
                               "checkpoint_every", "keep_checkpoints", "log_every", "image_every",
                               "max_grad_norm")),
    [("num_workers", int, field(default=0))],
    signature_fields(Trainer, ("trackers",)))


@dataclass
class OptimConfig:
    """Optimisation of one stage (AdamW, linear warm-up then cosine decay)."""

    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50


AutoencoderModel = _section(
    "AutoencoderModel", "The autoencoder's architecture.",
    signature_fields(Autoencoder, ("channels", "latent_channels", "num_res_blocks",
                                   "norm_num_groups", "latent_patch")))


@dataclass
class AutoencoderTrain(OptimConfig):
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    kl_weight: float = 1e-6
    change_weight: float = 0.0
    change_sigma_mm: float = 4.0
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    scale_scans: int = 32


@dataclass
class AutoencoderStage:
    model: AutoencoderModel = field(default_factory=AutoencoderModel)
    train: AutoencoderTrain = field(default_factory=AutoencoderTrain)


GraphModel = _section(
    "GraphModel", "The anatomy graph's node set and edges (``AnatomyGraph.from_atlas``), the "
    "graph encoder's architecture (``GraphEncoder``) and the trajectory head's width "
    "(``head_hidden``: ``TrajectoryHead``'s ``hidden``).",
    signature_fields(AnatomyGraph.from_atlas, ("grouping", "homologue_edges")),
    signature_fields(GraphEncoder, ("embed_dim", "num_layers", "conv", "num_tokens",
                                    "spectral_filters", "filter_kind", "fourier_refine", "dropout",
                                    "feature_dropout")),
    [("head_hidden", *f[1:]) for f in signature_fields(TrajectoryHead, ("hidden",))])


@dataclass
class GraphStage:
    enabled: bool = True
    model: GraphModel = field(default_factory=GraphModel)
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(steps=1500, batch_size=32, lr=2e-3))


DiffusionConfig = _section(
    "DiffusionConfig", "The forward process (the noise schedule) and what the networks generate "
    "(the UNet's ``target``) and predict.",
    signature_fields(DenoisingUNet, ("target",)),
    signature_fields(NoiseSchedule, ("prediction_type", "num_train_timesteps", "beta_schedule",
                                     "beta_start", "beta_end")))

UNetModel = _section(
    "UNetModel", "The denoiser's architecture (its latent channels come from the autoencoder, its "
    "context width from the graph encoder, its target from ``diffusion``).",
    signature_fields(DenoisingUNet, ("channels", "attention_levels", "num_res_blocks",
                                     "norm_num_groups", "num_head_channels", "concat_base",
                                     "covariate_time_embedding", "concat_change")))


@dataclass
class DiffusionTrain(OptimConfig):
    """A diffusion stage's optimisation, its EMA decay and ``condition_dropout``: the fraction
    of training pairs whose horizon is replaced by the guidance null (Δt = 0 in the covariates
    and the hint), classifier-free guidance's usual training. Off by default: on the demo model
    10 % made the unguided change smaller and guidance weaker at every weight (the learned null
    predicts the average change, so out(Δt) − out(0) keeps only the horizon's part of it;
    docs/benchmarks.md, "Training the guidance null"). ``zero_horizon_pairs``: the fraction of
    training pairs made same-visit pairs instead, the null horizon with no change (the follow-up
    latent is the baseline's), so the null guidance contrasts with, "no time passes", is learned
    as it is meant. 10 % by default: on the demo model calibrated guidance then reached the
    true change at a lower weight and lowered the test error in three of five key groups.

    ``predicted_change``: where a network of the stage reads the regional change map (the UNet
    with ``unet.model.concat_change``, the ControlNet with ``controlnet.model.change_hint``), the
    fraction of training pairs given the trajectory head's regional change rather than the
    pair's true one. The truth teaches the network to draw the change it is given; the head's
    prediction, what it is given at sampling, teaches it how far to trust that."""

    ema_decay: float = 0.999
    condition_dropout: float = 0.0
    zero_horizon_pairs: float = 0.1
    predicted_change: float = 0.5


@dataclass
class UNetStage:
    model: UNetModel = field(default_factory=UNetModel)
    train: DiffusionTrain = field(default_factory=DiffusionTrain)


ControlNetModel = _section(
    "ControlNetModel", "ControlNet settings (``mamba_levels: null`` = Mamba where the UNet has "
    "attention, plus the mid block; ``fourier_levels: null`` = Fourier refinement of the first "
    "level's features; ``graph_hint: false`` leaves the graph map out of the hint, the "
    "ControlNet-level no-graph ablation that keeps the UNet's graph tokens). The rest of its "
    "architecture is the UNet's.",
    signature_fields(MambaControlNet, ("mixer", "mamba_levels", "mamba_directions",
                                       "mamba_d_state", "mamba_expand", "share_mamba_weights",
                                       "fourier_levels", "fourier_modes", "hint_width",
                                       "graph_painting", "change_hint")),
    [("graph_hint", bool, field(default=True))])


@dataclass
class ControlNetTrain(DiffusionTrain):
    """The ControlNet stage's optimisation (``predicted_change``: :class:`DiffusionTrain`).

    ``graph_lr``: the learning rate at which the graph encoder trains with the ControlNet, so its
    painted node embeddings and pooled tokens learn for the image (0, the default: it stays as
    the graph stage left it). Its node embeddings also keep feeding the frozen trajectory head,
    held to the pairs' true regional change by ``graph_trajectory_weight`` × the head's loss
    (``graph.pairs.trajectory_loss``, (%)²) added to the denoising loss. The tuned encoder is
    saved over ``graph_encoder/``."""

    graph_lr: float = 0.0
    graph_trajectory_weight: float = 0.1


@dataclass
class ControlNetStage:
    enabled: bool = True
    model: ControlNetModel = field(default_factory=ControlNetModel)
    train: ControlNetTrain = field(default_factory=ControlNetTrain)


@dataclass
class RunConfig:
    """A whole training run (``mambacontrol train all``)."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    autoencoder: AutoencoderStage = field(default_factory=AutoencoderStage)
    graph: GraphStage = field(default_factory=GraphStage)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    unet: UNetStage = field(default_factory=UNetStage)
    controlnet: ControlNetStage = field(default_factory=ControlNetStage)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
