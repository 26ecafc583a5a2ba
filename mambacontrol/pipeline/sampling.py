"""The one reverse-diffusion loop, shared by prediction, evaluation and training previews."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(denoise: Denoiser, scheduler: SchedulerMixin, shape: tuple[int, ...],
           num_inference_steps: int, generator: torch.Generator | None = None,
           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
           progress: bool = False) -> torch.Tensor:
    """Draw samples by running ``scheduler`` from pure noise.

    Args:
        denoise: ``(noisy (B, C, x, y, z), timesteps (B,)) -> model output`` (noise or v, as the
            scheduler's ``prediction_type`` says); composes ControlNet and UNet.
        scheduler: a diffusers sampler (DDIM, DPM-Solver, DDPM), configured like training.
        shape: (B, C, x, y, z) of the samples.
        num_inference_steps: sampler steps.
        generator: seeds the initial noise (and stochastic samplers).
        progress: show a progress bar over the steps.

    Returns:
        (B, C, x, y, z) samples of the target.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    noisy = torch.randn(shape, generator=generator, dtype=torch.float32)
    noisy = noisy.to(device=device, dtype=dtype)
    noisy = noisy * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        model_in = scheduler.scale_model_input(noisy, t)
        out = denoise(model_in, t.expand(shape[0]).to(device))
        noisy = scheduler.step(out, t, noisy, generator=generator).prev_sample
    return noisy
