"""3D autoencoder: MONAI's ``AutoencoderKL`` as a saved component with its latent scale factor and
an optional space-to-depth view of its latent (``latent_patch``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from monai.networks.nets import AutoencoderKL
from monai.networks.utils import pixelshuffle, pixelunshuffle

from mambacontrol.nn.component import Component


class Autoencoder(Component):
    """KL-regularised autoencoder for (B, 1, X, Y, Z) images in [0, 1].

    The network's latent grid is the image grid divided by ``2 ** (len(channels) - 1)``.
    ``scaling_factor`` (1 / std of the training latents) is computed once after training and saved
    in the config with :meth:`set_scaling_factor`; :meth:`encode` and :meth:`decode` apply it, so
    every caller sees unit-scale latents and training and inference cannot disagree.

    ``latent_patch`` = p > 1 folds each p×p×p block of the network's latent into channels
    (space-to-depth, MONAI's ``pixelunshuffle``) on :meth:`encode` and unfolds it on
    :meth:`decode`: callers (the diffusion, its cache, the graph's painting) see a latent grid p
    times coarser with ``latent_channels · p³`` channels (:attr:`downsample_factor`,
    :attr:`num_latent_channels`), while the image is still decoded from the finer grid. The fold
    is lossless, so the representation's ceiling is that of the finer latent at the diffusion's
    cost on the coarser grid (DiT's patchify, before the network instead of inside it).

    Args:
        channels: feature channels per level.
        latent_channels: channels of the latent.
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups (must divide every entry of ``channels``).
        attention_levels: self-attention per level (expensive in 3D; off by default).
        with_nonlocal_attn: attention at the lowest resolution of encoder and decoder.
        scaling_factor: multiplies latents after encoding (1.0 until set from training latents).
        latent_patch: space-to-depth factor of the latent callers see (1: none).
    """

    @register_to_config
    def __init__(self, channels: Sequence[int] = (32, 64, 64), latent_channels: int = 3,
                 num_res_blocks: int = 1, norm_num_groups: int = 16,
                 attention_levels: Sequence[bool] | None = None, with_nonlocal_attn: bool = False,
                 scaling_factor: float = 1.0, latent_patch: int = 1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1:
            raise ValueError("channels must list at least one level")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every channel count "
                             f"{channels}")
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be ≥ 1, got {latent_channels}")
        if latent_patch < 1:
            raise ValueError(f"latent_patch must be ≥ 1, got {latent_patch}")
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {scaling_factor}")
        levels = (tuple(attention_levels) if attention_levels is not None
                  else (False,) * len(channels))
        if len(levels) != len(channels):
            raise ValueError(f"attention_levels has {len(levels)} entries for {len(channels)} "
                             "levels")
        self.net = AutoencoderKL(
            spatial_dims=3, in_channels=1, out_channels=1, channels=channels,
            latent_channels=latent_channels, num_res_blocks=num_res_blocks,
            attention_levels=levels, norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=with_nonlocal_attn,
            with_decoder_nonlocal_attn=with_nonlocal_attn)

    @property
    def network_factor(self) -> int:
        """Image grid size / the network's own latent grid size along each axis."""
        return 2 ** (len(self.config.channels) - 1)

    @property
    def downsample_factor(self) -> int:
        """Image grid size / size of the latent grid :meth:`encode` returns, along each axis."""
        return self.network_factor * int(self.config.latent_patch)

    @property
    def num_latent_channels(self) -> int:
        """Channels of the latent :meth:`encode` returns and :meth:`decode` takes."""
        return int(self.config.latent_channels) * int(self.config.latent_patch) ** 3

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    def set_scaling_factor(self, value: float) -> None:
        """Record the latent scale factor (1 / std of training latents) in the saved config."""
        if not value > 0:
            raise ValueError(f"scaling_factor must be > 0, got {value}")
        self.register_to_config(scaling_factor=float(value))

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless every spatial size is divisible by the downsampling factor."""
        f = self.downsample_factor
        if any(int(s) % f for s in shape):
            raise ValueError(f"image grid {tuple(shape)} is not divisible by the autoencoder's "
                             f"downsampling factor {f}; use a grid whose sizes are multiples of "
                             f"{f}")

    def check_patch(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless every size of a training patch is divisible by the network's
        own factor (:attr:`network_factor`; training never folds, so ``latent_patch`` does not
        constrain patches)."""
        f = self.network_factor
        if any(int(s) % f for s in shape):
            raise ValueError(f"patch size {list(shape)} is not divisible by the autoencoder's "
                             f"downsampling factor {f}; use sizes that are multiples of {f}")

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled, unfolded posterior mean and standard deviation, each (B, latent_channels,
        X/f, Y/f, Z/f) with f = :attr:`network_factor`, for training."""
        self.check_patch(x.shape[2:])
        return self.net.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled posterior mean (deterministic latent), folded by ``latent_patch``:
        (B, 1, X, Y, Z) -> (B, :attr:`num_latent_channels`, X/d, Y/d, Z/d), d =
        :attr:`downsample_factor`."""
        self.check_shape(x.shape[2:])
        mu, _ = self.encode_moments(x)
        return pixelunshuffle(mu * self.scaling_factor, 3, int(self.config.latent_patch))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled, folded latent (B, :attr:`num_latent_channels`, x, y, z) -> image
        (B, 1, X, Y, Z)."""
        z = pixelshuffle(z, 3, int(self.config.latent_patch))  # p = 1: unchanged
        return self.net.decode(z / self.scaling_factor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, posterior mean, posterior std), all unscaled."""
        self.check_patch(x.shape[2:])
        return self.net(x)
