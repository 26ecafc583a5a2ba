"""ProgressionPipeline: a trained model's components, and prediction of follow-up scans.

One call predicts several horizons for one baseline scan, reusing its encoding:

1. encode the baseline image: ``z_base`` (B, C_z, x, y, z);
2. graph: node features of the baseline (image + labels) → node embeddings, pooled tokens, and
   the embeddings painted onto the latent grid through the labels;
3. for each horizon Δt: ControlNet hint = ``z_base`` ⊕ graph map ⊕ Δt map, context = covariate
   token ⊕ graph tokens; draw M samples of the target (the latent change) with the sampler;
4. decode: ``x̂ = x_base + D(z_base + Δẑ) − D(z_base)`` (difference of decodes, which cancels the
   autoencoder's reconstruction error; ``decode="direct"`` gives ``D(z_base + Δẑ)``); the mean of
   the M samples is the prediction, their voxel-wise standard deviation the uncertainty;
5. the trajectory head's regional prediction (log volume ratio per graph node).

A model directory holds ``model_index.json`` and one folder per component (``config.json`` +
``diffusion_pytorch_model.safetensors``); the index names the components, the package version,
the atlas (id, grid, checksum), the noise schedule and the sampling defaults.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mambacontrol._version import __version__
from mambacontrol.atlas import Atlas, load_atlas
from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.errors import MambaControlError, ModelError
from mambacontrol.graph import AnatomyGraph, GraphEncoder, TrajectoryHead
from mambacontrol.io import check_limit, write_json
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.schedulers import SAMPLERS, NoiseSchedule, sampling_scheduler
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.conditioning import (
    GraphScanInputs,
    change_map,
    encode_graph,
    graph_scan_inputs,
    hint_uses_graph,
)
from mambacontrol.pipeline.denoiser import ConditionedDenoiser, Conditioning
from mambacontrol.pipeline.sampling import sample
from mambacontrol.pipeline.timings import PhaseTimes

INDEX_NAME = "model_index.json"
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
"""A Hugging Face Hub repository id, ``org/name`` (one slash, no leading dot)."""
DECODE_MODES = ("difference", "direct")


@dataclass
class SamplingDefaults:
    """Sampling settings saved with a model (each can be overridden per call). The defaults:
    DPM-Solver++ at 10 steps, which on the demo model scores as DDIM at 20 steps does
    (docs/benchmarks.md, "Fewer sampler steps")."""

    sampler: str = "dpm-solver"
    num_inference_steps: int = 10
    num_samples: int = 4
    decode: str = "difference"
    #: classifier-free guidance weight against the zero horizon (pipeline.denoiser); 0: none
    guidance: float = 0.0
    #: own weights of some key groups' regions ({group: w}, groups of :data:`GUIDANCE_GROUPS`);
    #: ``guidance`` elsewhere. None: one weight everywhere
    guidance_groups: dict[str, float] | None = None

    def __post_init__(self):
        check_guidance(self.guidance, "guidance")
        check_guidance_groups(self.guidance_groups)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler '{self.sampler}' is not one of {', '.join(SAMPLERS)}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode '{self.decode}' is not one of {', '.join(DECODE_MODES)}")
        if self.num_inference_steps < 1 or self.num_samples < 1:
            raise ValueError("num_inference_steps and num_samples must be ≥ 1")
        check_limit("max_samples", self.num_samples, f"num_samples {self.num_samples}")
        check_limit("max_steps", self.num_inference_steps,
                    f"num_inference_steps {self.num_inference_steps}")


@dataclass(frozen=True)
class SamplingPlan:
    """How one prediction samples: the model's :class:`SamplingDefaults`, each replaced by the
    caller's choice where one is given (:meth:`resolve`, the one place defaults fill in)."""

    sampler: str
    num_inference_steps: int
    num_samples: int
    decode: str
    guidance: float = 0.0
    guidance_groups: tuple[tuple[str, float], ...] | None = None

    @property
    def guided(self) -> bool:
        """Whether any region is guided (a weight above 0)."""
        return max([self.guidance, *(w for _, w in self.guidance_groups or ())]) > 0

    @classmethod
    def resolve(cls, defaults: SamplingDefaults, *, num_samples: int | None = None,
                num_inference_steps: int | None = None, sampler: str | None = None,
                decode: str | None = None, guidance: float | None = None) -> SamplingPlan:
        """The caller's choices, the model's ``defaults`` for those not given (None or 0; for
        ``guidance`` only None, since 0 is a choice). A ``guidance`` given is one weight
        everywhere: it replaces the model's group weights too."""
        groups = None
        if guidance is None and defaults.guidance_groups:
            groups = tuple(sorted((g, float(w)) for g, w in defaults.guidance_groups.items()))
        return cls(sampler or defaults.sampler,
                   int(num_inference_steps or defaults.num_inference_steps),
                   int(num_samples or defaults.num_samples), decode or defaults.decode,
                   float(defaults.guidance if guidance is None else guidance), groups)

    def check(self) -> None:
        """Raise :class:`MambaControlError` (or ``ResourceLimitError``) for a bad choice."""
        check_limit("max_samples", self.num_samples, f"{self.num_samples} samples")
        check_limit("max_steps", self.num_inference_steps,
                    f"{self.num_inference_steps} sampler steps")
        if self.decode not in DECODE_MODES:
            raise MambaControlError(f"decode '{self.decode}' is not one of "
                                    f"{', '.join(DECODE_MODES)}")
        if self.num_samples < 1 or self.num_inference_steps < 1:
            raise MambaControlError("num_samples and num_inference_steps must be ≥ 1")
        check_guidance(self.guidance, "guidance")
        check_guidance_groups(dict(self.guidance_groups or ()))


#: the largest guidance weight accepted: far beyond any useful one, small enough to catch typos
MAX_GUIDANCE = 20.0


def check_guidance(value: float, name: str = "--guidance") -> None:
    """Raise one line unless ``value`` is a number in [0, :data:`MAX_GUIDANCE`]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value <= MAX_GUIDANCE):
        raise MambaControlError(f"{name} {value} must be a number from 0 (no guidance) to "
                                f"{MAX_GUIDANCE:g}")


GUIDANCE_GROUPS = ("hippocampus", "amygdala", "entorhinal", "lateral_ventricles")
"""Key groups that may have their own guidance weight (``SamplingDefaults.guidance_groups``).
They are disjoint; the whole brain, which holds them all, takes the weight of everywhere else."""


def check_guidance_groups(groups: Mapping[str, float] | None) -> None:
    """Raise one line unless ``groups`` is None or maps groups of :data:`GUIDANCE_GROUPS` to
    weights accepted by :func:`check_guidance`."""
    if groups is None:
        return
    unknown = sorted(set(groups) - set(GUIDANCE_GROUPS))
    if unknown:
        raise MambaControlError(f"guidance groups {unknown} are not among "
                                f"{', '.join(GUIDANCE_GROUPS)}")
    for name, weight in groups.items():
        check_guidance(weight, f"the {name} guidance weight")


def guidance_map(labels: np.ndarray, atlas: Atlas, groups: Sequence[tuple[str, float]],
                 elsewhere: float, latent_shape: Sequence[int]) -> torch.Tensor:
    """The guidance weight of every latent voxel: each group's weight where its regions lie,
    ``elsewhere`` elsewhere, mixed by the fraction of the voxel's image voxels each group owns.

    Args:
        labels: (X, Y, Z) atlas label ids of the baseline on the model grid.
        atlas: gives the groups' labels (``atlas.key_groups``).
        groups: ``(group, weight)`` pairs of :data:`GUIDANCE_GROUPS`.
        elsewhere: the weight outside the groups.
        latent_shape: (x, y, z) of the latent grid.

    Returns:
        (1, 1, x, y, z) float32 weights.
    """
    weights = torch.full((1, 1, *latent_shape), float(elsewhere))
    for name, weight in groups:
        inside = torch.from_numpy(np.isin(labels, atlas.key_groups[name]).astype(np.float32))
        fraction = torch.nn.functional.adaptive_avg_pool3d(inside[None, None],
                                                           tuple(latent_shape))
        weights += fraction * (float(weight) - float(elsewhere))
    return weights


def check_sampling_flags(num_samples: int | None, num_inference_steps: int | None,
                         sampler: str | None, guidance: float | None = None) -> None:
    """Raise one line for a bad ``--samples``, ``--steps``, ``--sampler`` or ``--guidance``
    (None: the model's own), as ``predict`` and ``evaluate`` take them.

    Raises:
        MambaControlError: not a whole number ≥ 1, an unknown sampler, a guidance weight
            outside [0, 20].
        ResourceLimitError: above ``max_samples``/``max_steps``.
    """
    if guidance is not None:
        check_guidance(guidance)
    for flag, value in (("--samples", num_samples), ("--steps", num_inference_steps)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise MambaControlError(f"{flag} {value} must be a whole number ≥ 1")
    if num_samples is not None:
        check_limit("max_samples", num_samples, f"--samples {num_samples}")
    if num_inference_steps is not None:
        check_limit("max_steps", num_inference_steps, f"--steps {num_inference_steps}")
    if sampler is not None and sampler not in SAMPLERS:
        raise MambaControlError(f"--sampler {sampler} is not one of {', '.join(SAMPLERS)}")


@dataclass(eq=False)
class Prediction:
    """The predicted follow-up of one baseline at one horizon, on the model grid.

    Attributes:
        years: the horizon Δt.
        image: (X, Y, Z) float32 mean of the samples (zero outside the brain mask).
        uncertainty: (X, Y, Z) float32 voxel-wise standard deviation of the samples.
        node_log_ratio: (R,) the trajectory head's predicted log volume ratio per graph node
            (None without a head).
        num_samples: M.
    """

    years: float
    image: np.ndarray
    uncertainty: np.ndarray
    node_log_ratio: np.ndarray | None = None
    num_samples: int = 1


@dataclass(frozen=True, eq=False)
class Predictions(Sequence[Prediction]):
    """What one :meth:`ProgressionPipeline.predict` call returns: a sequence of one
    :class:`Prediction` per horizon, in the order given, and where the time went.

    Attributes:
        horizons: the predictions.
        timings: seconds per phase: ``encoding``, ``sampling``, ``decoding``.
    """

    horizons: tuple[Prediction, ...]
    timings: dict[str, float]

    def __getitem__(self, index):
        return self.horizons[index]

    def __len__(self) -> int:
        return len(self.horizons)


class ProgressionPipeline:
    """The components of a trained model.

    Args:
        autoencoder: the image autoencoder.
        unet: the latent denoiser.
        schedule: the forward noise process both were trained with.
        atlas: the atlas (and grid) the model works on.
        controlnet: the Mamba ControlNet (None: UNet only).
        graph_encoder: graph encoder (None: no graph conditioning).
        trajectory_head: regional trajectory head (None: no regional prediction).
        covariate_norm: covariate normalisation used in training.
        sampling: sampling defaults.
    """

    def __init__(self, autoencoder: Autoencoder, unet: DenoisingUNet, schedule: NoiseSchedule,
                 atlas: Atlas, controlnet: MambaControlNet | None = None, graph_encoder=None,
                 trajectory_head=None, covariate_norm: CovariateNorm | None = None,
                 sampling: SamplingDefaults | None = None):
        self.autoencoder = autoencoder.eval()
        self.unet = unet.eval()
        self.controlnet = controlnet.eval() if controlnet is not None else None
        self.graph_encoder = graph_encoder.eval() if graph_encoder is not None else None
        self.trajectory_head = trajectory_head.eval() if trajectory_head is not None else None
        self.schedule = schedule
        self.atlas = atlas
        self.covariate_norm = covariate_norm or CovariateNorm()
        self.sampling = sampling or SamplingDefaults()
        self._graph = None
        self._check_compatible()

    # ---- construction, saving, loading -------------------------------------------------------
    def _check_compatible(self) -> None:
        if self.unet.config.latent_channels != self.autoencoder.num_latent_channels:
            raise ModelError(f"UNet latent_channels {self.unet.config.latent_channels} differ "
                             f"from the autoencoder's {self.autoencoder.num_latent_channels}")
        self.autoencoder.check_shape(self.atlas.grid.shape)
        if self.trajectory_head is not None and self.graph_encoder is None:
            raise ModelError("a trajectory head needs the graph encoder it was trained with")
        if self.graph_encoder is not None:
            self.graph_encoder.check_graph(self.graph)
        if self.trajectory_head is not None:
            self.trajectory_head.check_graph(self.graph)
        if self.reads_change and self.trajectory_head is None:
            raise ModelError("this model reads the trajectory head's regional change (the "
                             "ControlNet's hint or the UNet's input), but it has no trajectory "
                             "head: save the model with its trajectory_head folder")

    @property
    def change_hint(self) -> bool:
        """Whether the ControlNet's hint carries the regional change map."""
        return self.controlnet is not None and bool(self.controlnet.config.change_hint)

    @property
    def reads_change(self) -> bool:
        """Whether the denoiser reads the regional change map: in the ControlNet's hint, or as
        the UNet's input (``concat_change``)."""
        return self.change_hint or bool(self.unet.config.concat_change)

    @property
    def graph(self):
        """The anatomy graph the graph encoder was built for (None without one)."""
        if self.graph_encoder is None:
            return None
        if self._graph is None:
            self._graph = AnatomyGraph.from_identity(self.atlas, self.graph_encoder.config.graph)
        return self._graph

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> ProgressionPipeline:
        for m in (self.autoencoder, self.unet, self.controlnet, self.graph_encoder,
                  self.trajectory_head):
            if m is not None:
                m.to(device)
        return self

    def index(self) -> dict:
        """The contents of ``model_index.json``."""
        comps = {"autoencoder": "Autoencoder", "unet": "DenoisingUNet"}
        if self.controlnet is not None:
            comps["controlnet"] = "MambaControlNet"
        if self.graph_encoder is not None:
            comps["graph_encoder"] = "GraphEncoder"
        if self.trajectory_head is not None:
            comps["trajectory_head"] = "TrajectoryHead"
        return {
            "_class_name": "ProgressionPipeline",
            "mambacontrol_version": __version__,
            "components": comps,
            "atlas": {"id": self.atlas.id, "grid": self.atlas.grid_name,
                      "checksum": self.atlas.checksum},
            "grid": self.atlas.grid.to_dict(),
            "noise_schedule": self.schedule.to_dict(),
            "covariate_norm": self.covariate_norm.to_dict(),
            "sampling": {k: v for k, v in self.sampling.__dict__.items()
                         if not (k == "guidance_groups" and v is None)},
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write every component and ``model_index.json`` (last, so a folder with an index is
        complete)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in self.index()["components"]:
            getattr(self, name).save(out / name)
        write_json(out / INDEX_NAME, self.index())
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu", *,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool | None = None) -> ProgressionPipeline:
        """Load a model directory, or a Hugging Face Hub repository ``org/name`` (see
        :func:`resolve_model_folder` for ``revision``, ``cache_dir`` and ``local_files_only``).

        Raises:
            ModelError: when the folder is not a model, a component is missing or corrupt, the
                model was trained on an atlas or grid that differs from the installed one, or a
                Hub id cannot be found (offline: not in the cache).
        """
        folder = resolve_model_folder(directory, revision=revision, cache_dir=cache_dir,
                                      local_files_only=local_files_only)
        idx_path = folder / INDEX_NAME
        if not idx_path.is_file():
            raise ModelError(f"{folder}: not a mambacontrol model (no {INDEX_NAME}); point "
                             "--model to a training run's output folder or a Hugging Face Hub id "
                             "(org/name)")
        try:
            idx = json.loads(idx_path.read_text())
            comps = dict(idx["components"])
            atlas_id, atlas_grid, atlas_sum = (idx["atlas"][k] for k in ("id", "grid", "checksum"))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{idx_path}: corrupt model index ({exc}); re-save the "
                             "model") from None
        try:
            atlas = load_atlas(atlas_id, atlas_grid)
        except MambaControlError as exc:
            raise ModelError(f"{folder}: the model was trained on atlas {atlas_id} grid "
                             f"{atlas_grid}, which is not installed ({exc})") from None
        if atlas.checksum != atlas_sum:
            raise ModelError(f"{folder}: the model was trained on another version of atlas "
                             f"{atlas.id} grid {atlas.grid_name} (checksum differs); retrain or "
                             "install the matching atlas")
        classes = {"autoencoder": Autoencoder, "unet": DenoisingUNet, "controlnet": MambaControlNet,
                   "graph_encoder": GraphEncoder, "trajectory_head": TrajectoryHead}
        unknown = sorted(set(comps) - set(classes))
        if unknown or "autoencoder" not in comps or "unet" not in comps:
            raise ModelError(f"{idx_path}: components {sorted(comps)} are not a "
                             "ProgressionPipeline's")
        try:
            schedule = NoiseSchedule(**idx["noise_schedule"])
            sampling = SamplingDefaults(**idx.get("sampling", {}))
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(f"{idx_path}: invalid settings ({exc})") from None
        loaded = {name: classes[name].load(folder / name, device) for name in comps}
        return cls(loaded["autoencoder"], loaded["unet"], schedule, atlas,
                   controlnet=loaded.get("controlnet"), graph_encoder=loaded.get("graph_encoder"),
                   trajectory_head=loaded.get("trajectory_head"),
                   covariate_norm=CovariateNorm.from_dict(idx.get("covariate_norm")),
                   sampling=sampling)

    # ---- prediction ---------------------------------------------------------------------------
    def _check_inputs(self, image: np.ndarray, labels: np.ndarray | None, age: float,
                      years: Sequence[float]) -> None:
        shape = tuple(self.atlas.grid.shape)
        if tuple(np.shape(image)) != shape:
            raise MambaControlError(f"image shape {np.shape(image)} is not the model grid {shape}; "
                                    "prepare the scan first (mambacontrol.pipeline.prepare_scan)")
        if labels is not None and tuple(np.shape(labels)) != shape:
            raise MambaControlError(f"labels shape {np.shape(labels)} is not the model grid "
                                    f"{shape}")
        if self.graph_encoder is not None and labels is None:
            raise MambaControlError("this model uses the anatomy graph: pass the scan's labels")
        if not np.isfinite(age):
            raise MambaControlError(f"age {age} is not a number")
        if any((not np.isfinite(y)) or y < 0 for y in years):
            raise MambaControlError(f"horizons {list(years)} must be finite and ≥ 0 years")

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(X, Y, Z) image -> (the image tensor (1, 1, X, Y, Z), its latent (1, C_z, x, y, z))."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        x = x.to(self.device)
        return x, self.autoencoder.encode(x)

    @torch.no_grad()
    def predict(self, image: np.ndarray, labels: np.ndarray | None, age: float, sex: str,
                diagnosis: str, years: float | Sequence[float], *, mask: np.ndarray | None = None,
                num_samples: int | None = None, num_inference_steps: int | None = None,
                sampler: str | None = None, decode: str | None = None,
                guidance: float | None = None, generator: torch.Generator | None = None,
                seed: int | None = None, progress: bool = False) -> Predictions:
        """Predict the follow-up scan at one or several horizons; checks every argument first.

        Args:
            image: (X, Y, Z) baseline on the model grid, brain-extracted and normalised
                (see :func:`mambacontrol.pipeline.prepare_scan`).
            labels: (X, Y, Z) its atlas label ids (needed when the model uses the graph).
            age: age in years at the baseline.
            sex: ``F``/``M``. diagnosis: ``CN``/``MCI``/``AD``.
            years: one horizon or several (years after the baseline).
            mask: (X, Y, Z) brain mask; the prediction is zero outside (default: image ≠ 0).
            num_samples: M (default, or 0: the model's).
            num_inference_steps: sampler steps (default, or 0: the model's).
            sampler: ``ddim``, ``dpm-solver`` or ``ddpm`` (default: the model's).
            decode: ``difference`` or ``direct`` (default: the model's).
            guidance: guidance weight w ≥ 0 against the zero horizon (default: the model's;
                :mod:`~mambacontrol.pipeline.denoiser`).
            generator / seed: randomness of the samples; the same seed gives the same prediction.
            progress: show sampling progress.

        Returns:
            One :class:`Prediction` per horizon, in the given order, and the seconds spent per
            phase (:class:`Predictions`).
        """
        years = (float(years),) if np.isscalar(years) else tuple(float(y) for y in years)
        if not years:
            raise MambaControlError("give at least one horizon (years)")
        self._check_inputs(image, labels, float(age), years)
        sampling = SamplingPlan.resolve(self.sampling, num_samples=num_samples,
                                        num_inference_steps=num_inference_steps, sampler=sampler,
                                        decode=decode, guidance=guidance)
        sampling.check()
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return self.predict_checked(image, labels, age, sex, diagnosis, years, sampling, generator,
                                    mask=mask, progress=progress)

    @torch.no_grad()
    def predict_checked(self, image: np.ndarray, labels: np.ndarray | None, age: float, sex: str,
                        diagnosis: str, years: Sequence[float], sampling: SamplingPlan,
                        generator: torch.Generator, *, mask: np.ndarray | None = None,
                        progress: bool = False) -> Predictions:
        """:meth:`predict` for arguments already checked at a boundary (a scan prepared on the
        model grid by :func:`~mambacontrol.pipeline.prepare.prepare_scan`, a validated
        :class:`~mambacontrol.pipeline.scan_prediction.PredictRequest`); nothing is checked again.

        Args:
            years: the horizons, in years.
            sampling: the resolved sampling (:meth:`SamplingPlan.resolve`).
            generator: randomness of the samples.
        """
        scheduler = sampling_scheduler(self.schedule, sampling.sampler)
        clock = PhaseTimes(self.device)
        grouped = bool(sampling.guidance_groups) and sampling.guided
        if grouped and labels is None:
            raise MambaControlError("this model guides some regions with their own weight: give "
                                    "the baseline's labels, or one --guidance weight")
        weights = None
        with clock.phase("encoding"):
            baseline = self._encode_baseline(image, labels, mask, sampling.decode)
            if grouped:
                weights = guidance_map(np.asarray(labels), self.atlas, sampling.guidance_groups,
                                       sampling.guidance, baseline.latent.shape[2:])
                weights = weights.to(self.device)
        denoiser = self.denoiser(float(weights.max()) if weights is not None
                                 else sampling.guidance)
        predictions = []
        for horizon in map(float, years):
            covariates = encode_covariates(age, horizon, sex, diagnosis, self.covariate_norm)
            covariates = covariates.to(self.device)
            with clock.phase("sampling"):
                conditioning, node_log_ratio = self._conditioning(
                    baseline, covariates, horizon, sampling.num_samples, denoiser, weights)
                target = sample(denoiser.steps(conditioning), scheduler,
                                conditioning.sample_shape, sampling.num_inference_steps,
                                generator=generator, device=self.device, progress=progress)
            with clock.phase("decoding"):
                mean, std = self._decode(baseline.image, baseline.latent, baseline.decoded, target,
                                         baseline.brain)
            predictions.append(Prediction(horizon, mean, std, node_log_ratio,
                                          sampling.num_samples))
        return Predictions(tuple(predictions), clock.seconds)

    @torch.no_grad()
    def reconstruct(self, image: np.ndarray, follow: np.ndarray, *,
                    mask: np.ndarray | None = None, decode: str | None = None) -> np.ndarray:
        """The true follow-up pushed through this model's representation and decoded as a
        prediction is: the most any sampler could predict (the representation's ceiling).

        Args:
            image: (X, Y, Z) baseline on the model grid, prepared as for :meth:`predict`.
            follow: (X, Y, Z) the true follow-up on the same grid.
            mask: (X, Y, Z) brain mask; zero outside (default: image ≠ 0), as for predictions.
            decode: ``difference`` (``x_base + D(E(follow)) − D(E(base))``) or ``direct``
                (``D(E(follow))``); default the model's.

        Returns:
            (X, Y, Z) float32, clipped to [0, 1] inside the mask like a prediction's mean.
        """
        shape = tuple(self.atlas.grid.shape)
        for what, array in (("image", image), ("follow-up", follow)):
            if tuple(np.shape(array)) != shape:
                raise MambaControlError(f"{what} shape {np.shape(array)} is not the model grid "
                                        f"{shape}; prepare the scan first")
        plan = SamplingPlan.resolve(self.sampling, decode=decode)
        plan.check()
        brain = (np.asarray(image) != 0) if mask is None else np.asarray(mask, dtype=bool)
        return reconstruct_follow_up(self.autoencoder, image, follow, brain, plan.decode)

    def _encode_baseline(self, image: np.ndarray, labels: np.ndarray | None,
                         mask: np.ndarray | None, decode: str) -> _EncodedBaseline:
        """What every horizon of one baseline shares, computed once."""
        x_base, z_base = self.encode(image)
        brain = (np.asarray(image) != 0) if mask is None else np.asarray(mask, dtype=bool)
        graph_inputs = None
        if self.graph_encoder is not None:
            painting = (self.controlnet.config.graph_painting if self.controlnet is not None
                        else "soft")  # without a ControlNet the graph map is not read
            graph_inputs = graph_scan_inputs(np.asarray(image), np.asarray(labels), self.graph,
                                             self.autoencoder.downsample_factor, painting)
        decoded = self.autoencoder.decode(z_base) if decode == "difference" else None
        return _EncodedBaseline(x_base, z_base, decoded, brain, graph_inputs)

    def denoiser(self, guidance: float = 0.0) -> ConditionedDenoiser:
        """ControlNet → UNet under a conditioning, with guidance weight ``guidance``: the same
        object the diffusion stages train."""
        graph_hint = (self.controlnet is not None and hint_uses_graph(
            self.controlnet.config.hint_channels, self.unet.config.latent_channels,
            self.change_hint))
        return ConditionedDenoiser(self.unet, self.controlnet, graph_hint, self.covariate_norm,
                                   unet_frozen=True, guidance=guidance,
                                   change_hint=self.change_hint)

    def _conditioning(self, baseline: _EncodedBaseline, covariates: torch.Tensor, years: float,
                      num_samples: int, denoiser: ConditionedDenoiser,
                      weights: torch.Tensor | None = None
                      ) -> tuple[Conditioning, np.ndarray | None]:
        """Everything that steers the denoiser at one horizon, for ``num_samples`` samples, and
        the trajectory head's (R,) regional prediction (None without a head). ``weights``:
        (1, 1, x, y, z) guidance weight map (:func:`guidance_map`), or None."""
        z_base = baseline.latent.expand(num_samples, *baseline.latent.shape[1:])
        sample_covariates = covariates.expand(num_samples, -1)
        tokens = graph_map = node_log_ratio = change = None
        if baseline.graph_inputs is not None:
            features = baseline.graph_inputs.features[None].to(self.device)
            nodes, pooled, painted = encode_graph(self.graph_encoder, features,
                                                  baseline.graph_inputs.assignment, covariates)
            tokens = pooled.expand(num_samples, -1, -1)
            graph_map = painted.expand(num_samples, -1, -1, -1, -1)
            if self.trajectory_head is not None:
                ratio = self.trajectory_head(nodes, covariates,
                                             torch.tensor([years], device=self.device))
                node_log_ratio = ratio[0].cpu().numpy()
                if self.reads_change:
                    change = change_map(ratio, baseline.graph_inputs.assignment).expand(
                        num_samples, -1, -1, -1, -1)
        years_per_sample = torch.full((num_samples,), float(years), device=self.device)
        conditioning = denoiser.condition(z_base, sample_covariates, years_per_sample, tokens,
                                          graph_map, change=change, guidance_map=weights)
        return conditioning, node_log_ratio

    @torch.no_grad()
    def _decode(self, x_base: torch.Tensor, z_base: torch.Tensor,
                base_decoded: torch.Tensor | None, target: torch.Tensor,
                brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode each sample (one at a time, to bound memory) and reduce to mean and sd."""
        total = None
        total_sq = None
        for i in range(target.shape[0]):
            z = self.unet.latents_from_target(z_base, target[i:i + 1])
            img = self.autoencoder.decode(z)
            if base_decoded is not None:
                img = x_base + img - base_decoded
            img = img[0, 0].double()
            total = img if total is None else total + img
            total_sq = img**2 if total_sq is None else total_sq + img**2
        n = target.shape[0]
        mean = total / n
        var = (total_sq / n - mean**2).clamp_min(0) * (n / max(n - 1, 1))
        keep = torch.from_numpy(brain).to(mean.device)
        std = torch.where(keep, var.sqrt(), torch.zeros_like(var))
        return _clip_to_brain(mean, brain), std.float().cpu().numpy()


@torch.no_grad()
def reconstruct_follow_up(autoencoder: Autoencoder, image: np.ndarray, follow: np.ndarray,
                          brain: np.ndarray, decode: str = "difference",
                          latent_gain: float = 1.0) -> np.ndarray:
    """A true follow-up through an autoencoder, decoded as predictions are: the representation's
    ceiling (:meth:`ProgressionPipeline.reconstruct` for a whole model).

    Args:
        autoencoder: the representation.
        image, follow: (X, Y, Z) baseline and follow-up on the autoencoder's grid.
        brain: (X, Y, Z) bool; the result is zero outside.
        decode: ``difference`` (``x_base + D(E(follow)) − D(E(base))``) or ``direct``
            (``D(E(follow))``).
        latent_gain: g; the follow-up's latent is taken as ``z_base + g (z_follow − z_base)``
            (1: the true latent). The decoder shrinks a change; a gain above 1 shows how much
            of it an amplified latent change (guidance) can still carry.

    Returns:
        (X, Y, Z) float32 in [0, 1] inside ``brain``.
    """
    device = next(autoencoder.parameters()).device
    x, y = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None].to(device)
            for a in (image, follow))
    z_base, z_follow = autoencoder.encode(x), autoencoder.encode(y)
    out = autoencoder.decode(z_base + latent_gain * (z_follow - z_base))
    if decode == "difference":
        out = x + out - autoencoder.decode(z_base)
    return _clip_to_brain(out[0, 0].double(), brain)


def _clip_to_brain(image: torch.Tensor, brain: np.ndarray) -> np.ndarray:
    """(X, Y, Z) image clipped to [0, 1] inside ``brain``, zero outside, as float32 numpy."""
    keep = torch.from_numpy(np.asarray(brain, dtype=bool)).to(image.device)
    return torch.where(keep, image.clamp(0, 1), torch.zeros_like(image)).float().cpu().numpy()


@dataclass(frozen=True, eq=False)
class _EncodedBaseline:
    """A baseline encoded once for all its horizons.

    Attributes:
        image: (1, 1, X, Y, Z) the baseline image.
        latent: (1, C_z, x, y, z) its latent.
        decoded: (1, 1, X, Y, Z) the decoded latent (difference-of-decodes rule), else None.
        brain: (X, Y, Z) bool mask outside which predictions are zero.
        graph_inputs: node features and latent-grid node assignment (None without a graph).
    """

    image: torch.Tensor
    latent: torch.Tensor
    decoded: torch.Tensor | None
    brain: np.ndarray
    graph_inputs: GraphScanInputs | None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "on", "yes", "true")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def resolve_model_folder(model: str | os.PathLike, *, revision: str | None = None,
                         cache_dir: str | os.PathLike | None = None,
                         local_files_only: bool | None = None) -> Path:
    """The local folder of a model: ``model`` itself when it exists (or does not look like a Hub
    id), else the Hugging Face Hub repository ``org/name`` through ``huggingface_hub``'s cache
    (downloaded once; ``revision`` a branch, tag or commit).

    Args:
        model: a folder, or a Hub repository id ``org/name``.
        revision: the Hub revision (default ``main``).
        cache_dir: the Hub cache (default ``$HF_HUB_CACHE``, else huggingface_hub's own).
        local_files_only: never connect; default true when ``$HF_HUB_OFFLINE`` is set.

    Raises:
        ModelError: the repository cannot be found (offline: it is not in the cache), or the
            revision does not exist.
    """
    folder = Path(model)
    name = str(model)
    if folder.exists() or not HUB_REPO_ID.fullmatch(name) or ".." in name or "--" in name:
        return folder
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = (bool(local_files_only) if local_files_only is not None
               else _env_flag("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE))
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    try:
        path = snapshot_download(name, revision=revision, cache_dir=cache,
                                 local_files_only=offline, library_name="mambacontrol",
                                 library_version=__version__)
    except LocalEntryNotFoundError as exc:
        where = cache or constants.HF_HUB_CACHE
        why = "offline" if offline else f"the Hub cannot be reached: {_one_line(exc)}"
        raise ModelError(f"{name}: not a local folder and not in the Hugging Face cache {where} "
                         f"({why}); connect or download it first (`hf download {name}`)") from None
    except RevisionNotFoundError:
        raise ModelError(f"{name}: the Hugging Face Hub repository has no revision "
                         f"{revision or 'main'!r}; check the revision") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{name}: not a local folder, and no Hugging Face Hub model repository "
                         "of that name can be read; check the name (or log in with "
                         "`hf auth login` for a private one)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(f"{name}: could not download from the Hugging Face Hub "
                         f"({_one_line(exc)}); check the connection, or use a local "
                         "folder") from None
    return Path(path)
