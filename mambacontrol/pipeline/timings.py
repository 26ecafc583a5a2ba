"""Seconds spent per named phase of a prediction, returned with its result."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class PhaseTimes:
    """Wall seconds per phase, summed over repeats (one phase per horizon adds up).

    Args:
        device: where the timed work runs. On a CUDA device each phase waits for the GPU's
            queued work at its start and end, so that asynchronous kernels are charged to the
            phase that launched them, not to the next one that reads their results.

    Attributes:
        seconds: ``{phase: seconds}`` in the order the phases first ran.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._cuda = device is not None and torch.device(device).type == "cuda"
        self._device = device

    def _synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block and add it to ``name``."""
        self._synchronize()
        start = time.perf_counter()
        yield
        self._synchronize()
        self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def add_all(self, seconds: dict[str, float]) -> None:
        """Add another result's phases (e.g. the model's own timings) in their order."""
        for name, value in seconds.items():
            self.add(name, value)
