"""The schema of a training run: what `train/configs/*.yaml` may say, with defaults.

Every stage has a ``model`` (architecture, saved in the component's config) and a ``train``
(optimisation) section. Ablations are switches here, not code forks:

- no graph: ``graph.enabled: false`` (no graph hint, no graph tokens; retrains the UNet), or
  ``controlnet.model.graph_hint: false`` (the ControlNet alone loses the graph map);
- no spectral features: ``graph.model.spectral_filters: false``;
- no Fourier refinement: ``graph.model.fourier_refine: false`` and
  ``controlnet.model.fourier_levels: [false, ...]``;
- attention instead of Mamba in the ControlNet: ``controlnet.model.mixer: attention``;
- no ControlNet (UNet only): ``controlnet.enabled: false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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


@dataclass
class EngineConfig:
    """Settings shared by every stage's training loop.

    Attributes:
        trackers: experiment loggers (Accelerate trackers): ``tensorboard`` (into
            ``<run>/logs/<stage>/``), ``wandb``, ``mlflow`` (each must be installed); ``[]``: none.
    """

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_accumulation_steps: int = 1
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    image_every: int = 0
    max_grad_norm: float = 1.0
    num_workers: int = 0
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class OptimConfig:
    """Optimisation of one stage (AdamW, linear warm-up then cosine decay)."""

    steps: int = 1000
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50


@dataclass
class AutoencoderModel:
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    latent_channels: int = 3
    num_res_blocks: int = 1
    norm_num_groups: int = 16


@dataclass
class AutoencoderTrain(OptimConfig):
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    scale_scans: int = 32


@dataclass
class AutoencoderStage:
    model: AutoencoderModel = field(default_factory=AutoencoderModel)
    train: AutoencoderTrain = field(default_factory=AutoencoderTrain)


@dataclass
class GraphModel:
    grouping: str = "region"
    homologue_edges: bool = True
    embed_dim: int = 32
    num_layers: int = 3
    conv: Literal["gcn", "cheb", "gat"] = "gcn"
    num_tokens: int = 8
    spectral_filters: bool = True
    filter_kind: Literal["wavelet", "heat"] = "wavelet"
    fourier_refine: bool = True
    dropout: float = 0.1
    feature_dropout: float = 0.1
    head_hidden: int = 64


@dataclass
class GraphStage:
    enabled: bool = True
    model: GraphModel = field(default_factory=GraphModel)
    train: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1500, batch_size=32, lr=2e-3))


@dataclass
class DiffusionConfig:
    """The forward process and what the networks predict."""

    target: Literal["delta", "absolute"] = "delta"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205


@dataclass
class UNetModel:
    channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True])
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    num_head_channels: int = 32
    concat_base: bool = True


@dataclass
class DiffusionTrain(OptimConfig):
    ema_decay: float = 0.999


@dataclass
class UNetStage:
    model: UNetModel = field(default_factory=UNetModel)
    train: DiffusionTrain = field(default_factory=DiffusionTrain)


@dataclass
class ControlNetModel:
    """ControlNet settings (``mamba_levels: null`` = Mamba where the UNet has attention, plus the
    mid block; ``fourier_levels: null`` = Fourier refinement of the first level's features;
    ``graph_hint: false`` leaves the graph map out of the hint, the ControlNet-level no-graph
    ablation that keeps the UNet's graph tokens)."""

    mixer: Literal["mamba", "attention"] = "mamba"
    mamba_levels: list[bool] | None = None
    mamba_directions: list[str] = field(default_factory=lambda: ["x+", "x-", "y+", "y-", "z+", "z-"])
    mamba_d_state: int = 16
    mamba_expand: int = 2
    share_mamba_weights: bool = True
    fourier_levels: list[bool] | None = None
    fourier_modes: list[int] = field(default_factory=lambda: [6, 6, 6])
    hint_width: int = 32
    graph_hint: bool = True


@dataclass
class ControlNetStage:
    enabled: bool = True
    model: ControlNetModel = field(default_factory=ControlNetModel)
    train: DiffusionTrain = field(default_factory=DiffusionTrain)


@dataclass
class SamplingConfig:
    """Defaults saved with the model for ``predict`` and ``evaluate``."""

    sampler: Literal["ddim", "dpm-solver", "ddpm"] = "ddim"
    num_inference_steps: int = 25
    num_samples: int = 4
    decode: Literal["difference", "direct"] = "difference"


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
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
