"""Reference predictors of regional volume change, fitted on training pairs.

They are what a learned trajectory model must beat: no change at all, and the population's
mean annual change per baseline diagnosis, extrapolated linearly over the horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mambacontrol.data.manifest import DIAGNOSES, normalize_diagnosis
from mambacontrol.errors import MambaControlError


@dataclass
class PopulationRateBaseline:
    """Mean annual % change of each target per baseline diagnosis, times the horizon.

    Attributes:
        rates: diagnosis → (G,) mean annual % change of G targets (a diagnosis absent from the
            training pairs falls back to the mean over all pairs).
    """

    rates: dict[str, np.ndarray]

    @classmethod
    def fit(cls, percent_change: np.ndarray, years: Sequence[float], diagnosis: Sequence[str]) -> PopulationRateBaseline:
        """Fit on training pairs.

        Args:
            percent_change: (N, G) true % change of G targets over each pair.
            years: (N,) horizons.
            diagnosis: (N,) baseline diagnoses.

        Raises:
            MambaControlError: without pairs or with a non-positive horizon.
        """
        pct = np.asarray(percent_change, dtype=np.float64).reshape(len(years), -1)
        yrs = np.asarray(years, dtype=np.float64)
        if len(yrs) == 0 or (yrs <= 0).any():
            raise MambaControlError("population rates need ≥ 1 pair, each with a positive horizon")
        annual = pct / yrs[:, None]
        dx = np.array([normalize_diagnosis(d) for d in diagnosis])
        overall = annual.mean(axis=0)
        return cls({d: annual[dx == d].mean(axis=0) if (dx == d).any() else overall for d in DIAGNOSES})

    def predict(self, years: Sequence[float], diagnosis: Sequence[str]) -> np.ndarray:
        """(N, G) predicted % change."""
        yrs = np.asarray(years, dtype=np.float64)
        return np.stack([self.rates[normalize_diagnosis(d)] for d in diagnosis]) * yrs[:, None]
