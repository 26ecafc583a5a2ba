"""Pieces every stage shares: the optimizer and LR schedule, and the engine settings."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from mambacontrol.training.config import arguments_for
from mambacontrol.training.engine import Trainer
from mambacontrol.training.run_config import OptimConfig, RunConfig


def make_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict], opt: OptimConfig):
    """AdamW with linear warm-up then cosine decay to zero (diffusers' schedule).

    ``params``: parameters, or torch parameter groups (``{"params": [...], "lr": ...}``; a group
    without its own ``lr`` takes ``opt.lr``; every group follows the same schedule).

    Returns:
        (optimizer, lr_scheduler)
    """
    optimizer = torch.optim.AdamW(list(params), lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=min(opt.warmup_steps, opt.steps), num_training_steps=opt.steps)
    return optimizer, scheduler


def engine_settings(cfg: RunConfig) -> dict:
    """Keyword arguments of :class:`~mambacontrol.training.engine.Trainer`: ``cfg.engine``'s
    fields that are its arguments, and the run's seed."""
    return {**arguments_for(Trainer, cfg.engine), "seed": cfg.seed}
