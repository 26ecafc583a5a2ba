"""Noise schedules from diffusers: DDPM for training, DDIM / DPM-Solver / DDPM for sampling."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from mambacontrol.models.sampler_names import SAMPLER_NAMES

PredictionType = Literal["epsilon", "v_prediction"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTION_TYPES = get_args(PredictionType)
BETA_SCHEDULES = get_args(BetaSchedule)
SAMPLERS = dict(zip(SAMPLER_NAMES, (DDIMScheduler, DPMSolverMultistepScheduler, DDPMScheduler)))


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward process shared by training and sampling (saved with the model).

    Its fields are the ``diffusion`` section of a run config (beside the UNet's ``target``); these
    defaults are the run's.

    Attributes:
        num_train_timesteps: diffusion steps of the forward process.
        beta_schedule: diffusers beta schedule name.
        beta_start, beta_end: first and last beta.
        prediction_type: what the network predicts: ``epsilon`` or ``v_prediction``.
    """

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    prediction_type: PredictionType = "v_prediction"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type '{self.prediction_type}' is not one of "
                             f"{', '.join(PREDICTION_TYPES)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule '{self.beta_schedule}' is not one of "
                             f"{', '.join(BETA_SCHEDULES)}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be ≥ 2, got {self.num_train_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, "
                             f"{self.beta_end}")

    def to_dict(self) -> dict:
        return asdict(self)


def training_scheduler(schedule: NoiseSchedule) -> DDPMScheduler:
    """The DDPM scheduler used to add noise during training."""
    return DDPMScheduler(num_train_timesteps=schedule.num_train_timesteps,
                         beta_schedule=schedule.beta_schedule, beta_start=schedule.beta_start,
                         beta_end=schedule.beta_end, prediction_type=schedule.prediction_type,
                         clip_sample=False, timestep_spacing="trailing")


def sampling_scheduler(schedule: NoiseSchedule | SchedulerMixin,
                       sampler: str = "ddim") -> SchedulerMixin:
    """A sampler over the same forward process: ``ddim``, ``dpm-solver`` or ``ddpm``.

    Args:
        schedule: the noise schedule, or a saved scheduler whose config is reused.
        sampler: sampler name.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler '{sampler}' is not one of {', '.join(SAMPLERS)}")
    base = training_scheduler(schedule) if isinstance(schedule, NoiseSchedule) else schedule
    extra = {"clip_sample": False} if sampler == "ddim" else {}
    if sampler == "ddim":
        extra["set_alpha_to_one"] = False
    return SAMPLERS[sampler].from_config(base.config, **extra)
