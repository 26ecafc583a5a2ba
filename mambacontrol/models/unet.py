"""Latent denoising UNet: MONAI's ``DiffusionModelUNet`` (3D) with covariate and graph context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from mambacontrol.data.covariates import NUM_COVARIATES
from mambacontrol.nn.component import Component
from mambacontrol.nn.padding import crop_to, pad_to_multiple

Target = Literal["delta", "absolute"]
TARGETS = get_args(Target)


def covariate_mlp(num_covariates: int, width: int) -> nn.Sequential:
    """Two-layer MLP embedding (B, K) covariates into (B, width)."""
    return nn.Sequential(nn.Linear(num_covariates, width), nn.SiLU(), nn.Linear(width, width))


class DenoisingUNet(Component):
    """Denoises the latent target (the change Δz, or the follow-up latent) given the baseline
    latent.

    Cross-attention context = one covariate token (age, Δt, sex, diagnosis through an MLP) followed
    by the graph encoder's pooled tokens when given. With ``covariate_time_embedding`` the
    covariates also enter the time embedding, and so every residual block at every level (the
    context reaches only the attention levels). With ``concat_base`` the baseline latent is
    concatenated to the noisy input, so the UNet alone (no ControlNet) still sees the subject;
    without it the UNet is a population model and the ControlNet carries the subject. With
    ``concat_change`` the regional change map (the trajectory head's change at the horizon painted
    on the latent grid, :func:`~mambacontrol.pipeline.conditioning.change_map`) is concatenated
    too, so the UNet reads the head's regional prediction from its first layer.

    Args:
        latent_channels: channels of the latent (the autoencoder's ``latent_channels``).
        concat_base: concatenate the baseline latent to the input.
        concat_change: concatenate the (B, 1, x, y, z) regional change map to the input.
        channels: feature channels per level (each divisible by ``norm_num_groups``).
        attention_levels: cross-attention transformer per level (the mid block always has one).
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups.
        num_head_channels: channels per attention head.
        context_dim: width of the context tokens (graph tokens must have this width).
        transformer_num_layers: transformer layers per attention block.
        num_covariates: length of the covariate vector.
        target: what the diffusion generates: ``delta`` (the latent change z_follow − z_base) or
            ``absolute`` (the follow-up latent).
        target_scale: multiplies the target so it has unit variance; computed once from the
            training pairs and saved (:meth:`set_target_scale`).
        use_flash_attention: attention through ``torch.nn.functional.scaled_dot_product_attention``
            (fused kernels: about 2× faster and a third of the memory on a CPU).
        covariate_time_embedding: add an MLP embedding of the covariates to the time embedding
            (it starts at zero); models saved before the setting existed have none.
    """

    legacy_defaults = {"covariate_time_embedding": False}

    @register_to_config
    def __init__(self, latent_channels: int = 3, concat_base: bool = True,
                 channels: Sequence[int] = (64, 128, 128),
                 attention_levels: Sequence[bool] = (False, True, True), num_res_blocks: int = 1,
                 norm_num_groups: int = 16, num_head_channels: int = 32, context_dim: int = 64,
                 transformer_num_layers: int = 1, num_covariates: int = NUM_COVARIATES,
                 target: Target = "delta", target_scale: float = 1.0,
                 use_flash_attention: bool = True, covariate_time_embedding: bool = True,
                 concat_change: bool = False):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if target not in TARGETS:
            raise ValueError(f"target '{target}' is not one of {', '.join(TARGETS)}")
        if not target_scale > 0:
            raise ValueError(f"target_scale must be > 0, got {target_scale}")
        if len(attention_levels) != len(channels):
            raise ValueError(f"attention_levels has {len(attention_levels)} entries for "
                             f"{len(channels)} levels (channels={channels})")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every channel count "
                             f"{channels}")
        if context_dim < 1 or latent_channels < 1:
            raise ValueError(f"context_dim and latent_channels must be ≥ 1, got {context_dim}, "
                             f"{latent_channels}")
        self.covariate_embed = covariate_mlp(num_covariates, context_dim)
        self.net = DiffusionModelUNet(
            spatial_dims=3, in_channels=self.input_channels, out_channels=latent_channels,
            num_res_blocks=num_res_blocks, channels=channels,
            attention_levels=tuple(attention_levels),
            norm_num_groups=norm_num_groups, num_head_channels=num_head_channels,
            with_conditioning=True, cross_attention_dim=context_dim,
            transformer_num_layers=transformer_num_layers, use_flash_attention=use_flash_attention)
        if covariate_time_embedding:
            # MONAI's class-label hook: its forward adds class_embedding(class_labels) to the time
            # embedding when num_class_embeds is set; here the "labels" are the covariates
            time_width = channels[0] * 4
            self.net.class_embedding = covariate_mlp(num_covariates, time_width)
            nn.init.zeros_(self.net.class_embedding[-1].weight)
            nn.init.zeros_(self.net.class_embedding[-1].bias)
            self.net.num_class_embeds = num_covariates

    def set_target_scale(self, value: float) -> None:
        """Record the target scale (1 / std of the training targets) in the saved config."""
        if not value > 0:
            raise ValueError(f"target_scale must be > 0, got {value}")
        self.register_to_config(target_scale=float(value))

    def target_from_latents(self, z_base: torch.Tensor, z_follow: torch.Tensor) -> torch.Tensor:
        """The scaled diffusion target for a pair of (B, C_z, x, y, z) latents."""
        raw = z_follow - z_base if self.config.target == "delta" else z_follow
        return raw * self.config.target_scale

    def latents_from_target(self, z_base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The follow-up latent from a (scaled) generated target; inverts
        :meth:`target_from_latents`."""
        raw = target / self.config.target_scale
        return z_base + raw if self.config.target == "delta" else raw

    @property
    def input_channels(self) -> int:
        """Channels of the network input (noisy latent, plus the baseline latent and the change
        map if concatenated)."""
        return (self.config.latent_channels * (2 if self.config.concat_base else 1)
                + (1 if self.config.concat_change else 0))

    @property
    def downsample_factor(self) -> int:
        """What the network's levels halve the grid by; other grids are padded up to a
        multiple of it."""
        return 2 ** (len(self.config.channels) - 1)

    def network_input(self, noisy: torch.Tensor, z_base: torch.Tensor | None,
                      change: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_z, x, y, z) noisy latent [+ baseline] [+ (B, 1, x, y, z) change map] ->
        (B, input_channels, x, y, z)."""
        parts = [noisy]
        if self.config.concat_base:
            if z_base is None:
                raise ValueError("this UNet concatenates the baseline latent: pass z_base")
            parts.append(z_base)
        if self.config.concat_change:
            if change is None:
                raise ValueError("this UNet concatenates the change map: pass change")
            parts.append(change.to(noisy.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else noisy

    def context(self, covariates: torch.Tensor,
                graph_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) covariates [+ (B, T, E) graph tokens] -> (B, 1 [+ T], E) context."""
        tok = self.covariate_embed(covariates).unsqueeze(1)
        if graph_tokens is None:
            return tok
        if graph_tokens.shape[-1] != self.config.context_dim:
            raise ValueError(f"graph tokens have width {graph_tokens.shape[-1]}, the UNet's "
                             f"context_dim is {self.config.context_dim}")
        return torch.cat([tok, graph_tokens.to(tok.dtype)], dim=1)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, covariates: torch.Tensor,
                z_base: torch.Tensor | None = None, graph_tokens: torch.Tensor | None = None,
                down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None,
                context: torch.Tensor | None = None,
                change: torch.Tensor | None = None) -> torch.Tensor:
        """Predict noise (or v) for (B, C_z, x, y, z) ``noisy`` at integer ``timesteps`` (B,).

        ControlNet residuals, when given, are added MONAI's way. ``context``: the (B, 1 [+ T], E)
        cross-attention context computed already (:meth:`context`, once per horizon by a
        sampler); then ``covariates`` and ``graph_tokens`` are not read again. ``change``: the
        (B, 1, x, y, z) change map, with ``concat_change``.
        """
        x = self.network_input(noisy, z_base, change)
        if context is None:
            context = self.context(covariates, graph_tokens)
        return self.denoise(x, timesteps, context, down_block_additional_residuals,
                            mid_block_additional_residual, covariates=covariates)

    def denoise(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None,
                covariates: torch.Tensor | None = None) -> torch.Tensor:
        """The network on an input and a context computed already: (B, input_channels, x, y, z)
        ``x`` from :meth:`network_input`, (B, 1 [+ T], E) ``context`` from :meth:`context`,
        (B, K) ``covariates`` (needed with ``covariate_time_embedding``).

        For a sampler that computes both once and gives them to the ControlNet too. A grid that
        :attr:`downsample_factor` does not divide is padded up to it and the output cropped back
        (:mod:`mambacontrol.nn.padding`); ControlNet residuals are on the padded grid, as the
        ControlNet pads its input the same way.
        """
        down = (tuple(down_block_additional_residuals)
                if down_block_additional_residuals is not None else None)
        labels = None
        if self.config.covariate_time_embedding:
            if covariates is None:
                raise ValueError("this UNet embeds the covariates in its time embedding: pass "
                                 "covariates")
            labels = covariates.to(x.dtype)
        out = self.net(pad_to_multiple(x, self.downsample_factor), timesteps, context=context,
                       class_labels=labels, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid_block_additional_residual)
        return crop_to(out, tuple(x.shape[2:]))
