"""Model selection during training: keep the weights that scored best on held-out data."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence

from torch import nn

logger = logging.getLogger(__name__)


class BestState:
    """An ``evaluate`` hook of :class:`~mambacontrol.training.engine.Trainer` that scores the
    models and keeps a copy of the weights with the lowest score seen (the first, on a tie).

    Args:
        score: models by name → a score, lower is better (e.g. a validation loss).
        names: the models whose weights are kept.
        what: what the score is, for the log.

    Attributes:
        scores: step → score, for every evaluation.
        best_step: the step whose weights are kept (None before the first evaluation).
    """

    def __init__(self, score: Callable[[Mapping[str, nn.Module]], float], names: Sequence[str],
                 what: str = "validation loss"):
        self.score = score
        self.names = tuple(names)
        self.what = what
        self.scores: dict[int, float] = {}
        self.best_step: int | None = None
        self._best: dict[str, dict] = {}

    def __call__(self, models: Mapping[str, nn.Module], step: int) -> None:
        value = self.score(models)
        self.scores[step] = value
        logger.info("step %d: %s %.4g", step, self.what, value)
        if self.best_step is None or value < self.scores[self.best_step]:
            self.best_step = step
            self._best = {n: copy.deepcopy(models[n].state_dict()) for n in self.names}

    def restore(self, models: Mapping[str, nn.Module]) -> None:
        """Load the kept weights into ``models`` (nothing before the first evaluation)."""
        for name, weights in self._best.items():
            models[name].load_state_dict(weights)
        if self.best_step is not None:
            logger.info("kept the state of step %d (lowest %s, %.4g)", self.best_step, self.what,
                        self.scores[self.best_step])
