"""Training on this process alone, on the CPU, in full precision, for stages too small to gain
from devices, processes or mixed precision.

Accelerate keeps one state per process: every ``Accelerator`` of a run shares its device, mixed
precision and process group, so a stage cannot ask it for another device or precision, nor train
on one process while the others wait. :class:`LocalAccelerator` stands in for the
``accelerate.Accelerator`` of a :class:`~mambacontrol.training.engine.Trainer` in that case: it
has the members the engine uses, and does each on this process's CPU (no device transfer, no
autocast, no gradient synchronisation, no trackers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


class LocalAccelerator:
    """The part of ``accelerate.Accelerator``'s interface that the engine uses, on this
    process's CPU in fp32, one micro-batch per optimizer step.

    A :class:`~mambacontrol.training.engine.Trainer` on it trains only in the process that runs
    it (under DDP, the stage lets one process train and the others wait); it logs to no
    experiment tracker.
    """

    device = torch.device("cpu")
    num_processes = 1
    process_index = 0
    is_main_process = True
    mixed_precision = "no"
    scaler = None
    sync_gradients = True

    def __init__(self):
        self.gradient_accumulation_steps = 1
        self.step = 0
        self.trackers: list[Any] = []

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """The models and optimizer as they are (already on the CPU)."""
        return objects

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        """No autocast: full precision."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def accumulate(self, *models: nn.Module) -> Iterator[None]:
        """Every micro-batch is a whole optimizer step (``sync_gradients`` stays true)."""
        yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to ``max_norm`` (``inf``: no clipping); returns the total gradient norm."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The tensor itself: one process has nothing to reduce with."""
        return tensor

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""
