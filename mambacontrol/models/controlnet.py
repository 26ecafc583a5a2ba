"""MambaControlNet: a ControlNet whose encoder mirrors the UNet's and mixes with Mamba blocks.

Built with MONAI's block factories (``get_down_block``), so its down path and mid-block resnets
have the UNet's exact state-dict names and can be initialised from a trained UNet
(:meth:`MambaControlNet.from_unet`). Where the UNet has (cross-)attention, the ControlNet has
multi-directional 3D Mamba blocks (``mixer="mamba"``) — or the UNet's attention
(``mixer="attention"``, the ablation). A Fourier refinement block filters the control features in
the frequency domain. Every output projection is zero-initialised, so a fresh ControlNet leaves the
UNet unchanged. Covariates enter through the timestep embedding (an MLP whose last layer starts at
zero).

The hint is a (B, hint_channels, x, y, z) map on the latent grid: the baseline latent, the
rasterised graph embedding, the trajectory head's regional change painted the same way (the
``change_hint`` setting) and a Δt map, concatenated by the pipeline.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from diffusers.configuration_utils import register_to_config
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUNetResnetBlock,
    get_down_block,
    get_mid_block,
    get_timestep_embedding,
    zero_module,
)
from torch import nn

from mambacontrol.data.covariates import NUM_COVARIATES
from mambacontrol.models.unet import DenoisingUNet, covariate_mlp
from mambacontrol.nn import DIRECTIONS, FourierRefine3d, MambaBlock3d
from mambacontrol.nn.component import Component
from mambacontrol.nn.padding import pad_to_multiple

log = logging.getLogger(__name__)

Mixer = Literal["mamba", "attention"]
MIXERS = get_args(Mixer)
GraphPainting = Literal["soft", "majority"]
GRAPH_PAINTINGS = get_args(GraphPainting)


def _conv(cin: int, cout: int, kernel: int = 3) -> Convolution:
    return Convolution(spatial_dims=3, in_channels=cin, out_channels=cout, strides=1,
                       kernel_size=kernel, padding=kernel // 2, conv_only=True)


class HintEmbedding(nn.Module):
    """Latent-grid hint (B, H, x, y, z) -> features (B, C0, x, y, z); the last conv starts at
    zero."""

    def __init__(self, hint_channels: int, width: int, out_channels: int):
        super().__init__()
        self.conv_in = _conv(hint_channels, width)
        self.conv_mid = _conv(width, width)
        self.conv_out = zero_module(_conv(width, out_channels))
        self.act = nn.SiLU()

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.act(self.conv_mid(self.act(self.conv_in(hint)))))


class MambaMidBlock(nn.Module):
    """Mid block with MONAI's resnet names (``resnet_1``, ``resnet_2``) and a Mamba block
    between."""

    def __init__(self, channels: int, temb_channels: int, norm_num_groups: int, mamba: nn.Module):
        super().__init__()
        self.resnet_1 = DiffusionUNetResnetBlock(3, channels, temb_channels, channels,
                                                 norm_num_groups=norm_num_groups)
        self.mamba = mamba
        self.resnet_2 = DiffusionUNetResnetBlock(3, channels, temb_channels, channels,
                                                 norm_num_groups=norm_num_groups)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        del context
        return self.resnet_2(self.mamba(self.resnet_1(hidden_states, temb)), temb)


@dataclass
class WeightCopyReport:
    """What :meth:`MambaControlNet.copy_weights_from_unet` did, tensor by tensor."""

    copied: list[str] = field(default_factory=list)
    #: UNet tensors with no ControlNet counterpart
    unet_only: list[str] = field(default_factory=list)
    #: ControlNet tensors left as initialised
    controlnet_only: list[str] = field(default_factory=list)


def _level_switches(levels: int, attention_levels: Sequence[bool],
                    mamba_levels: Sequence[bool] | None,
                    fourier_levels: Sequence[bool] | None) -> tuple[tuple, tuple]:
    """Per level, whether a Mamba block and a Fourier block mix the features entering it
    (defaults: Mamba everywhere, Fourier at the first level).

    Raises:
        ValueError: a per-level list whose length is not the number of levels.
    """
    mamba = tuple(mamba_levels) if mamba_levels is not None else (True,) * levels
    fourier = (tuple(fourier_levels) if fourier_levels is not None
               else (True,) + (False,) * (levels - 1))
    for name, switches in (("attention_levels", attention_levels), ("mamba_levels", mamba),
                           ("fourier_levels", fourier)):
        if len(switches) != levels:
            raise ValueError(f"{name} has {len(switches)} entries for {levels} levels")
    return mamba, fourier


class MambaControlNet(Component):
    """ControlNet for :class:`DenoisingUNet` with Mamba mixing and Fourier refinement.

    Args:
        in_channels: the UNet's network input channels (noisy latent [+ baseline latent]).
        hint_channels: channels of the hint map.
        channels, num_res_blocks, norm_num_groups, attention_levels, num_head_channels,
        context_dim, transformer_num_layers: as the UNet's (``from_unet`` copies them).
        mixer: ``mamba`` (Mamba blocks instead of attention) or ``attention`` (the UNet's own
            cross-attention transformers; the ablation).
        mamba_levels: per level, whether a MambaBlock3d mixes the features entering it (default:
            every level); the mid block always has one in ``mamba`` mode.
        mamba_directions, mamba_d_state, mamba_expand, share_mamba_weights: MambaBlock3d settings.
        fourier_levels: per level, whether a FourierRefine3d filters the features entering it
            (default: the first level only); all False switches Fourier refinement off.
        fourier_modes: low-frequency modes kept per axis by each FourierRefine3d.
        hint_width: width of the hint embedding.
        num_covariates: length of the covariate vector.
        use_flash_attention: fused attention kernels (the ``attention`` mixer), as the UNet's.
        graph_painting: how the graph map of the hint is painted onto the latent grid: ``soft``
            (each latent voxel carries the embeddings of the regions it overlaps, weighted by
            their voxel fractions, so every region is present) or ``majority`` (its most frequent
            region's; small regions can vanish). Stored so a model is fed as it was trained;
            models saved before the setting existed painted by majority.
        change_hint: the hint carries one more channel, the regional volume change expected at
            the horizon (the trajectory head's, or the truth during training), painted like the
            graph map (``pipeline.conditioning.change_map``). Stored so a model is fed as it was
            trained; models saved before the setting existed have none.
    """

    legacy_defaults = {"graph_painting": "majority", "change_hint": False}

    @register_to_config
    def __init__(self, in_channels: int = 6, hint_channels: int = 4,
                 channels: Sequence[int] = (64, 128, 128), num_res_blocks: int = 1,
                 norm_num_groups: int = 16, attention_levels: Sequence[bool] = (False, True, True),
                 num_head_channels: int = 32, context_dim: int = 64,
                 transformer_num_layers: int = 1,
                 mixer: Mixer = "mamba", mamba_levels: Sequence[bool] | None = None,
                 mamba_directions: Sequence[str] = DIRECTIONS, mamba_d_state: int = 16,
                 mamba_expand: int = 2, share_mamba_weights: bool = True,
                 fourier_levels: Sequence[bool] | None = None,
                 fourier_modes: Sequence[int] = (6, 6, 6),
                 hint_width: int = 32, num_covariates: int = NUM_COVARIATES,
                 use_flash_attention: bool = True, graph_painting: GraphPainting = "soft",
                 change_hint: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        n = len(channels)
        if mixer not in MIXERS:
            raise ValueError(f"mixer '{mixer}' is not one of {', '.join(MIXERS)}")
        if graph_painting not in GRAPH_PAINTINGS:
            raise ValueError(f"graph_painting '{graph_painting}' is not one of "
                             f"{', '.join(GRAPH_PAINTINGS)}")
        mamba_levels, fourier_levels = _level_switches(n, attention_levels, mamba_levels,
                                                       fourier_levels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every channel count "
                             f"{channels}")
        if hint_channels < 1 or in_channels < 1:
            raise ValueError(f"hint_channels and in_channels must be ≥ 1, got {hint_channels}, "
                             f"{in_channels}")
        use_attention = mixer == "attention"
        temb = channels[0] * 4
        unet_blocks = dict(  # the settings MONAI's down and mid blocks share
            spatial_dims=3, temb_channels=temb, norm_num_groups=norm_num_groups, norm_eps=1e-6,
            num_head_channels=num_head_channels, transformer_num_layers=transformer_num_layers,
            cross_attention_dim=context_dim, use_flash_attention=use_flash_attention)

        self._build_stem(in_channels, hint_channels, hint_width, channels[0], temb, num_covariates)
        mamba = functools.partial(MambaBlock3d, d_state=mamba_d_state, expand=mamba_expand,
                                  directions=tuple(mamba_directions),
                                  share_weights=share_mamba_weights)

        self.fourier_blocks = nn.ModuleList()
        self.mamba_blocks = nn.ModuleList()
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList(
            [zero_module(_conv(channels[0], channels[0], 1))])
        cin = channels[0]
        for i, cout in enumerate(channels):
            self.fourier_blocks.append(
                FourierRefine3d(cin, modes=tuple(fourier_modes)) if fourier_levels[i]
                else nn.Identity())
            self.mamba_blocks.append(mamba(cin) if (not use_attention and mamba_levels[i])
                                     else nn.Identity())
            last = i == n - 1
            self.down_blocks.append(get_down_block(
                in_channels=cin, out_channels=cout, num_res_blocks=num_res_blocks,
                add_downsample=not last, resblock_updown=False, with_attn=False,
                with_cross_attn=use_attention and bool(attention_levels[i]), **unet_blocks))
            for _ in range(num_res_blocks + (0 if last else 1)):
                self.controlnet_down_blocks.append(zero_module(_conv(cout, cout, 1)))
            cin = cout
        self.middle_block = (
            get_mid_block(in_channels=channels[-1], with_conditioning=True, **unet_blocks)
            if use_attention else
            MambaMidBlock(channels[-1], temb, norm_num_groups, mamba(channels[-1])))
        self.controlnet_mid_block = zero_module(_conv(channels[-1], channels[-1], 1))

    def _build_stem(self, in_channels: int, hint_channels: int, hint_width: int, width: int,
                    temb: int, num_covariates: int) -> None:
        """Input conv, time and covariate embeddings (the latter starts at zero), hint embedding."""
        self.conv_in = _conv(in_channels, width)
        self.time_embed = nn.Sequential(nn.Linear(width, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.covariate_embed = covariate_mlp(num_covariates, temb)
        nn.init.zeros_(self.covariate_embed[-1].weight)
        nn.init.zeros_(self.covariate_embed[-1].bias)
        self.hint_embed = HintEmbedding(hint_channels, hint_width, width)

    @property
    def downsample_factor(self) -> int:
        """What the levels halve the grid by (the UNet's); other grids are padded up to it."""
        return 2 ** (len(self.config.channels) - 1)

    @classmethod
    def from_unet(cls, unet: DenoisingUNet, hint_channels: int, copy_weights: bool = True,
                  **kwargs) -> MambaControlNet:
        """A ControlNet shaped like ``unet`` (same levels, channels, attention layout and context),
        initialised from its weights by name (see :meth:`copy_weights_from_unet`).

        Args:
            unet: the trained denoiser.
            hint_channels: channels of the hint map.
            copy_weights: copy the matching UNet weights.
            **kwargs: ControlNet-only settings (mixer, mamba_*, fourier_*, hint_width,
                graph_painting, change_hint);
                ``mamba_levels`` defaults to the UNet's attention levels.
        """
        uc = unet.config
        shared = dict(in_channels=unet.input_channels, channels=list(uc.channels),
                      num_res_blocks=uc.num_res_blocks, norm_num_groups=uc.norm_num_groups,
                      attention_levels=list(uc.attention_levels),
                      num_head_channels=uc.num_head_channels,
                      context_dim=uc.context_dim, transformer_num_layers=uc.transformer_num_layers,
                      num_covariates=uc.num_covariates, use_flash_attention=uc.use_flash_attention)
        clash = sorted(set(shared) & set(kwargs))
        if clash:
            raise ValueError(f"{', '.join(clash)} come from the UNet and cannot be overridden")
        if kwargs.get("mamba_levels") is None:  # Mamba where the UNet has attention (and mid block)
            kwargs["mamba_levels"] = list(uc.attention_levels)
        net = cls(hint_channels=hint_channels, **shared, **kwargs)
        if copy_weights:
            report = net.copy_weights_from_unet(unet)
            if not next(net.parameters()).is_meta:  # a meta-device build only checks a config
                log.info("ControlNet initialised from the UNet: %d tensors copied, %d UNet tensors "
                         "without counterpart (e.g. %s), %d ControlNet tensors newly "
                         "initialised", len(report.copied), len(report.unet_only),
                         report.unet_only[:2], len(report.controlnet_only))
        return net

    def copy_weights_from_unet(self, unet: DenoisingUNet) -> WeightCopyReport:
        """Copy every UNet tensor of the shared parts (``conv_in``, ``time_embed``, ``down_blocks``,
        ``middle_block``) whose name and shape match; report the rest.

        Raises:
            ValueError: when a tensor with a matching name has another shape (the two models were
                not built alike).
        """
        own = self.state_dict()
        shared_prefixes = ("conv_in.", "time_embed.", "down_blocks.", "middle_block.")
        report = WeightCopyReport()
        update = {}
        for name, tensor in unet.net.state_dict().items():
            if not name.startswith(shared_prefixes):
                continue
            if name not in own:
                report.unet_only.append(name)
                continue
            if own[name].shape != tensor.shape:
                raise ValueError(f"UNet tensor {name} has shape {tuple(tensor.shape)}, the "
                                 f"ControlNet's has {tuple(own[name].shape)}: the two were not "
                                 "built alike")
            update[name] = tensor.detach().clone()
            report.copied.append(name)
        report.controlnet_only = [k for k in own if k not in update]
        self.load_state_dict(update, strict=False)
        return report

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, hint: torch.Tensor,
                covariates: torch.Tensor, context: torch.Tensor | None = None,
                conditioning_scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for the UNet.

        Args:
            x: (B, in_channels, x, y, z) the UNet's network input.
            timesteps: (B,) integer diffusion steps.
            hint: (B, hint_channels, x, y, z).
            covariates: (B, K).
            context: (B, T, context_dim) cross-attention context (``attention`` mixer only).
            conditioning_scale: multiplies every residual.

        Returns:
            (down_residuals, mid_residual), what ``DenoisingUNet.forward`` takes as
            ``down_block_additional_residuals`` / ``mid_block_additional_residual``; on the grid
            padded to a multiple of :attr:`downsample_factor`, as the UNet pads its input.
        """
        if hint.shape[2:] != x.shape[2:]:
            raise ValueError(f"hint grid {tuple(hint.shape[2:])} differs from the latent grid "
                             f"{tuple(x.shape[2:])}")
        x = pad_to_multiple(x, self.downsample_factor)
        hint = pad_to_multiple(hint, self.downsample_factor)
        attn = self.config.mixer == "attention"
        if attn and context is None:
            raise ValueError("the attention ControlNet needs the UNet's cross-attention context")
        t_emb = get_timestep_embedding(timesteps, self.config.channels[0]).to(x.dtype)
        emb = self.time_embed(t_emb) + self.covariate_embed(covariates.to(x.dtype))
        h = self.conv_in(x) + self.hint_embed(hint.to(x.dtype))
        ctx = context if attn else None
        skips = [h]
        for fourier, mamba, down in zip(self.fourier_blocks, self.mamba_blocks, self.down_blocks):
            h = mamba(fourier(h))
            h, res = down(hidden_states=h, temb=emb, context=ctx)
            skips.extend(res)
        h = self.middle_block(hidden_states=h, temb=emb, context=ctx)
        down_res = [proj(s) * conditioning_scale
                    for s, proj in zip(skips, self.controlnet_down_blocks)]
        return down_res, self.controlnet_mid_block(h) * conditioning_scale
