"""Seconds spent per named phase of a prediction, returned with its result."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class PhaseTimes:
    """Wall seconds per phase, summed over repeats (one phase per horizon adds up).

    Attributes:
        seconds: ``{phase: seconds}`` in the order the phases first ran.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block and add it to ``name``."""
        start = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def add_all(self, seconds: dict[str, float]) -> None:
        """Add another result's phases (e.g. the model's own timings) in their order."""
        for name, value in seconds.items():
            self.add(name, value)
