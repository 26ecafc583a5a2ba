"""The conditioned denoiser: one object that turns what steers a prediction into denoising steps.

Training (the ``unet`` and ``controlnet`` stages, their preview images) and sampling (every
horizon of :class:`~mambacontrol.pipeline.progression.ProgressionPipeline`) both build a
:class:`Conditioning` with :meth:`ConditionedDenoiser.condition` and run steps with
:meth:`ConditionedDenoiser.__call__`. So the context, the ControlNet's hint and the way the
ControlNet's residuals reach the UNet are built in one place and cannot drift apart.

Guidance (``guidance`` w > 0) contrasts each step with the same conditioning at horizon Δt = 0
("no time passes"): ``out = out(Δt) + w · (out(Δt) − out(0))``, the classifier-free guidance
rule with the zero horizon as the null condition. It strengthens what the model attributes to
the passing of time, the change, whose size a trained model underestimates (the demo model's
latent change has a gain of about 0.46); w = 0 is the model as trained. The null zeroes the
horizon where the denoiser reads it (the covariate ``years``, the hint's Δt map and its change
map: no time, no change); the graph encoder's tokens and painted map, computed before the
denoiser, stay those of the pair's horizon.

Training teaches the null through ``condition(drop_horizon=...)``. By default 10 % of the pairs
become same-visit pairs, the null horizon with no change (``zero_horizon_pairs``), so "no time
passes, nothing changes" is learned, not extrapolated. Classifier-free guidance's usual dropout
(``condition_dropout``: the null horizon with the pair's true change) is off by default: on the
demo model it made guidance weaker at every weight, since that null learns the average change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mambacontrol.data.covariates import COVARIATE_NAMES, CovariateNorm
from mambacontrol.pipeline.conditioning import build_hint
from mambacontrol.pipeline.sampling import Denoiser


def null_horizon(covariates: torch.Tensor, years: torch.Tensor,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The guidance null: the horizon zeroed where the denoiser reads it.

    Args:
        covariates: (B, 6) normalised covariates; their ``years`` entry is zeroed.
        years: (B,) horizons in years (the hint's Δt map); zeroed.
        rows: (B,) bool, the rows to null; default all.

    Returns:
        new (covariates, years); the inputs are not modified.
    """
    keep = (torch.zeros_like(years, dtype=torch.bool) if rows is None
            else ~rows.to(years.device, torch.bool))
    covariates = covariates.clone()
    col = COVARIATE_NAMES.index("years")
    covariates[:, col] = torch.where(keep.to(covariates.device), covariates[:, col], 0.0)
    return covariates, torch.where(keep, years, torch.zeros_like(years))


@dataclass(frozen=True, eq=False)
class Conditioning:
    """What steers the denoiser for one batch (training) or one horizon's M samples (sampling).

    Attributes:
        z_base: (B, C_z, x, y, z) the baseline latent.
        covariates: (B, 6) normalised covariates (:func:`~mambacontrol.data.covariates.
            encode_covariates`).
        graph_tokens: (B, T, E) the graph encoder's pooled tokens, or None.
        context: (B, 1 + T, E) the UNet's cross-attention context, computed once when the UNet is
            frozen (sampling, the ControlNet stage); None while the UNet trains, whose forward
            pass then computes it (so its covariate embedding gets its gradient through the
            forward, as distributed data parallel requires).
        hint: (B, C_hint, x, y, z) the ControlNet's hint, or None without a ControlNet.
        change: (B, 1, x, y, z) the change map the UNet reads (``concat_change``), or None.
        guidance: w; when not 0 every field holds 2B rows, the conditioning and then its null
            (the same at Δt = 0), and a step runs both as one batch.
        guidance_map: (1 or B, 1, x, y, z) the weight of each latent voxel, which then replaces
            ``guidance`` in the rule (per-region weights,
            :func:`~mambacontrol.pipeline.progression.guidance_map`); None: ``guidance``
            everywhere.
    """

    z_base: torch.Tensor
    covariates: torch.Tensor
    graph_tokens: torch.Tensor | None
    context: torch.Tensor | None
    hint: torch.Tensor | None
    guidance: float = 0.0
    guidance_map: torch.Tensor | None = None
    change: torch.Tensor | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(B, C_z, x, y, z): the shape of what a step denoises (the guided rows aside)."""
        rows = self.z_base.shape[0] // (2 if self.guidance else 1)
        return (rows, *self.z_base.shape[1:])


class ConditionedDenoiser:
    """ControlNet (optional) → UNet, one denoising step under a :class:`Conditioning`.

    Args:
        unet: the :class:`~mambacontrol.models.unet.DenoisingUNet` (or its training wrapper:
            only its forward pass is called while it trains).
        controlnet: the :class:`~mambacontrol.models.controlnet.MambaControlNet`, or None.
        graph_hint: whether the ControlNet's hint carries the graph map (its ``hint_channels``
            say so: :func:`~mambacontrol.pipeline.conditioning.hint_uses_graph`).
        change_hint: whether the ControlNet's hint carries the change map (its ``change_hint``).
        norm: the covariate normalisation (scales the hint's Δt map).
        unet_frozen: the UNet does not train here: its context is computed once per
            conditioning. Default: whether none of its parameters requires a gradient.
        guidance: w ≥ 0 (module docstring); 0 for training and for the model as trained.
    """

    def __init__(self, unet: nn.Module, controlnet: nn.Module | None = None,
                 graph_hint: bool = False, norm: CovariateNorm | None = None,
                 unet_frozen: bool | None = None, guidance: float = 0.0,
                 change_hint: bool = False):
        if (graph_hint or change_hint) and controlnet is None:
            raise ValueError("graph_hint and change_hint need a ControlNet: their maps are part "
                             "of its hint")
        if unet_frozen is None:
            unet_frozen = not any(p.requires_grad for p in unet.parameters())
        if controlnet is not None and not unet_frozen:
            raise ValueError("a ControlNet steers a frozen UNet: freeze the UNet "
                             "(requires_grad_(False)) or leave the ControlNet out")
        self.unet = unet
        self.controlnet = controlnet
        self.graph_hint = graph_hint
        self.change_hint = change_hint
        if not guidance >= 0:  # also refuses NaN
            raise ValueError(f"guidance {guidance} must be a number ≥ 0")
        self.norm = norm if norm is not None else CovariateNorm()
        self.unet_frozen = unet_frozen
        self.guidance = float(guidance)

    def _unwrapped_unet(self) -> nn.Module:
        return getattr(self.unet, "module", self.unet)

    def condition(self, z_base: torch.Tensor, covariates: torch.Tensor, years: torch.Tensor,
                  graph_tokens: torch.Tensor | None = None,
                  graph_map: torch.Tensor | None = None,
                  drop_horizon: torch.Tensor | None = None,
                  change: torch.Tensor | None = None,
                  guidance_map: torch.Tensor | None = None) -> Conditioning:
        """Build what steers every step of one batch or horizon.

        Args:
            z_base: (B, C_z, x, y, z) baseline latents.
            covariates: (B, 6).
            years: (B,) or (1,) horizons in years (the hint's Δt map).
            graph_tokens: (B, T, E) pooled graph tokens (the UNet's context), or None.
            graph_map: (B, E, x, y, z) node embeddings painted on the latent grid; used only
                when the ControlNet's hint carries it.
            drop_horizon: (B,) bool, rows whose horizon is replaced by the guidance null
                (:func:`null_horizon`; condition dropout in training); default none.
            change: (B, 1, x, y, z) the regional change expected at the horizon
                (:func:`~mambacontrol.pipeline.conditioning.change_map`); used only when the
                ControlNet's hint carries it or the UNet concatenates it (``concat_change``).
                The null's rows get zero.
            guidance_map: (1 or B, 1, x, y, z) per-voxel guidance weights replacing the
                denoiser's ``guidance`` (which must be above 0 for any guidance to run); ignored
                without guidance.
        """
        years = years.reshape(-1).expand(z_base.shape[0])
        hint_change = self.controlnet is not None and self.change_hint
        unet_change = bool(self._unwrapped_unet().config.concat_change)
        if hint_change or unet_change:
            if change is None:
                raise ValueError("this model reads the change map (the ControlNet's hint or the "
                                 "UNet's input): pass change")
        else:
            change = None
        if drop_horizon is not None:
            if self.guidance:
                raise ValueError("drop_horizon is for training, guidance for sampling: not both")
            covariates, years = null_horizon(covariates, years, drop_horizon)
            if change is not None:
                keep = ~drop_horizon.to(change.device, torch.bool)
                change = change * keep.view(-1, 1, 1, 1, 1).to(change.dtype)
        if self.guidance:
            no_time, no_years = null_horizon(covariates, years)
            z_base, covariates = torch.cat([z_base, z_base]), torch.cat([covariates, no_time])
            years = torch.cat([years, no_years])
            graph_tokens = None if graph_tokens is None else torch.cat([graph_tokens] * 2)
            graph_map = None if graph_map is None else torch.cat([graph_map] * 2)
            change = None if change is None else torch.cat([change, torch.zeros_like(change)])
        context = None
        if self.unet_frozen:
            context = self._unwrapped_unet().context(covariates, graph_tokens)
        hint = None
        if self.controlnet is not None:
            if self.graph_hint and graph_map is None:
                raise ValueError("this ControlNet's hint carries the graph map: pass graph_map")
            hint = build_hint(z_base, years, self.norm, graph_map if self.graph_hint else None,
                              change if hint_change else None)
        if guidance_map is not None and guidance_map.shape[2:] != z_base.shape[2:]:
            raise ValueError(f"guidance map grid {tuple(guidance_map.shape[2:])} differs from the "
                             f"latent grid {tuple(z_base.shape[2:])}")
        return Conditioning(z_base, covariates, graph_tokens, context, hint, self.guidance,
                            guidance_map if self.guidance else None,
                            change if unet_change else None)

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                 c: Conditioning) -> torch.Tensor:
        """The model output (noise or v) for (B, C_z, x, y, z) ``noisy`` at (B,) ``timesteps``."""
        if c.guidance:
            both = self._step(torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]), c)
            conditional, null = both.chunk(2)
            weight = c.guidance if c.guidance_map is None else c.guidance_map.to(conditional)
            return conditional + weight * (conditional - null)
        return self._step(noisy, timesteps, c)

    def _step(self, noisy: torch.Tensor, timesteps: torch.Tensor,
              c: Conditioning) -> torch.Tensor:
        residuals = mid = None
        if self.controlnet is not None:  # the UNet is frozen: c.context is there
            x = self._unwrapped_unet().network_input(noisy, c.z_base, c.change)
            residuals, mid = self.controlnet(x, timesteps, c.hint, c.covariates,
                                             context=c.context)
        return self.unet(noisy, timesteps, c.covariates, z_base=c.z_base,
                         graph_tokens=c.graph_tokens, context=c.context,
                         down_block_additional_residuals=residuals,
                         mid_block_additional_residual=mid, change=c.change)

    def steps(self, c: Conditioning) -> Denoiser:
        """``(noisy, timesteps) -> output`` under ``c``, for :func:`~mambacontrol.pipeline.
        sampling.sample`."""
        return lambda noisy, timesteps: self(noisy, timesteps, c)
