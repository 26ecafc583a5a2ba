"""The diffusion stages' regional term (``{unet,controlnet}.train.region_loss_weight``): the
change each key group of the decoded image gains, read from the latent through the decoder.

The latent loss weighs every latent element alike, so moving a change between neighbours that
share latent voxels (the hippocampus and the entorhinal cortex on an 8 mm latent) costs it little,
although the regional measurement reads the move as a wrong allocation. For a training baseline
``z_b`` and a key group ``g`` the readout ``w_g = J_D(z_b)ᵀ m_g`` (one vector–Jacobian product of
the frozen decoder with the group's mask ``m_g`` on the image grid) gives, to first order, the
decoded image's summed change over the group for a latent change ``Δ``:
``Σ_{v ∈ g} [D(z_b + Δ) − D(z_b)](v) ≈ w_g · Δ``. The term compares ``w_g · x̂0`` with
``w_g · x0`` (``x̂0`` the step's estimate of the scaled target ``x0``), each group's squared error
divided by the mean of ``(w_g · x0_delta)²`` over the training pairs (``x0_delta`` the scaled
latent change), weighted by ``ᾱ_t`` so that the steps where ``x̂0`` says little count little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mambacontrol.models.autoencoder import Autoencoder


def group_readouts(ae: Autoencoder, z: torch.Tensor, labels: np.ndarray,
                   groups: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Each group's linear readout of the decoded change at latent ``z``.

    Args:
        ae: the frozen autoencoder.
        z: (C, x, y, z) a baseline's scaled (folded) latent, as cached.
        labels: (X, Y, Z) the baseline's region labels on the image grid.
        groups: group name → its labels (``atlas.key_groups``), in order.

    Returns:
        (G, C, x, y, z): ``w_g = ∂/∂z Σ_{labels of g} D(z)``.
    """
    z = z.detach().clone().requires_grad_(True)
    image = ae.decode(z[None])[0, 0]
    masks = [torch.from_numpy(np.isin(labels, list(ids))).to(image.dtype)
             for ids in groups.values()]
    readouts = []
    for i, mask in enumerate(masks):
        (w,) = torch.autograd.grad((image * mask).sum(), z, retain_graph=i < len(masks) - 1)
        readouts.append(w)
    return torch.stack(readouts)


def readout_norms(readouts: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """(G,): per group, the mean over the training pairs of ``(w_g · x0_delta)²``, the scaled
    target's regional change, for each pair's readouts (G, C, x, y, z) and scaled latent change
    (C, x, y, z); 1 for a group that never changes."""
    sums = torch.cat([regional(w[None], d[None]) for w, d in zip(readouts, deltas, strict=True)])
    norms = sums.double().pow(2).mean(0).float()
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def regional(readout: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """(B, G): ``w_g · latent`` per pair, for readouts (B, G, C, x, y, z) and latents
    (B, C, x, y, z)."""
    return torch.einsum("bgcxyz,bcxyz->bg", readout, latent)


def regional_loss(readout: torch.Tensor, estimate: torch.Tensor, target: torch.Tensor,
                  alpha_bar: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """The term: mean over pairs and groups of ``ᾱ_t (w_g · (x̂0 − x0))² / norm_g``.

    Args:
        readout: (B, G, C, x, y, z) the pairs' baselines' readouts.
        estimate, target: (B, C, x, y, z) the step's ``x̂0`` and the scaled target ``x0``.
        alpha_bar: (B,) ``ᾱ_t`` of each pair's step.
        norms: (G,) from :func:`readout_norms`.
    """
    error = regional(readout, estimate.float() - target.float())
    return (alpha_bar[:, None] * error.pow(2) / norms[None]).mean()
