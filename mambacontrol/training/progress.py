"""What people see while a stage trains: a tqdm bar on a terminal, log lines elsewhere.

On a terminal, a tqdm bar shows the loss and samples/s. Where the output is not a terminal (a
log file, a batch job), the bar is off and a log line comes about every 5 % of the run (step,
loss, samples/s, time left). A line's loss is the mean over every step since the previous line
(a single report's few batches are too noisy to follow a curve by), and its time left is the
pace of those steps, so a pause (a stopped process, a suspended laptop) misleads one line, not
the rest of the run. :class:`ScalarWindow` gathers the scalars of the steps between two reports.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: log lines per run where there is no terminal
LINES_PER_RUN = 20


class ScalarWindow:
    """Scalars (loss, gradient norm, ``step_fn``'s metrics) and samples since the last report."""

    def __init__(self):
        self.values: dict[str, list[float]] = {}
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, scalars: Mapping[str, float], samples: int) -> None:
        """One optimizer step's scalars and sample count."""
        for key, value in scalars.items():
            self.values.setdefault(key, []).append(float(value))
        self.samples += samples

    def rate(self) -> float:
        """Samples per second since the window started."""
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def mean_loss(self) -> float:
        return float(np.mean(self.values["loss"]))

    def finite_means(self) -> dict[str, float]:
        """``{key: mean of its finite values}`` (keys with none are left out)."""
        out = {}
        for key, items in self.values.items():
            finite = [v for v in items if math.isfinite(v)]
            if finite:
                out[key] = float(np.mean(finite))
        return out


class StageProgress:
    """The progress bar, or the log lines, of one stage's run.

    Args:
        stage: the stage name (the bar's label, the lines' prefix).
        steps: optimizer steps of the whole stage.
        start: the step this run starts from (after a resume).
        log_every: steps between reports; log lines come at multiples of it.
        main_process: only the main process shows anything.
    """

    def __init__(self, stage: str, steps: int, start: int, log_every: int, main_process: bool):
        self.stage = stage
        self.steps = steps
        self.start = start
        self.bar = tqdm(total=steps, initial=start, desc=stage, unit="step", dynamic_ncols=True,
                        disable=None if main_process else True)
        self.line_every = (log_every * math.ceil(steps / LINES_PER_RUN / log_every)
                           if self.bar.disable and main_process else 0)
        self._stretch_losses: list[float] = []
        self._stretch_start = (start, time.perf_counter())  # (step, time) of the previous line

    def step(self, loss: float) -> None:
        """One optimizer step done, with its loss."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if self.line_every:
            self._stretch_losses.append(float(loss))

    def report(self, done: int, window: ScalarWindow, rate: float) -> None:
        """A report after step ``done``: the window's mean loss and ``rate`` samples/s on the
        bar, and a log line when one is due."""
        self.bar.set_postfix(loss=f"{window.mean_loss():.4g}", samples_s=f"{rate:.3g}",
                             refresh=False)
        if self.line_every and (done % self.line_every == 0 or done == self.steps):
            first, since = self._stretch_start
            now = time.perf_counter()
            finite = [v for v in self._stretch_losses if math.isfinite(v)]
            loss = float(np.mean(finite)) if finite else math.nan
            left = (now - since) / max(done - first, 1) * (self.steps - done)
            logger.info("%s: step %d/%d, loss %.4g (mean of steps %d-%d), %.3g samples/s, %s left",
                        self.stage, done, self.steps, loss, first + 1, done, rate,
                        format_duration(left))
            self._stretch_losses.clear()
            self._stretch_start = (done, now)

    def close(self) -> None:
        self.bar.close()


def format_duration(seconds: float) -> str:
    """``12.3s``, ``4m05s`` or ``1h02m03s``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
