"""The two baselines every model is compared with, on the same pairs.

* **Copy-baseline**: the follow-up is predicted to be the baseline scan, ``x̂ = x_base``; its
  regional volumes are the baseline's (no change).
* **Regional linear extrapolation**: a population annual rate per region and per baseline
  diagnosis, fitted on the train split's pairs, extrapolated linearly from the test baseline:
  ``V̂ = V_base · (1 + r_dx · Δt / 100)``. It predicts **volumes only**: no image is made, so it
  has regional volume errors and no voxel metrics.

The rate of one region and diagnosis is the least-squares slope through the origin of the
per-pair percentage change against Δt, ``r = Σ gᵢ·Δtᵢ / Σ Δtᵢ²`` with
``gᵢ = 100 · (V_follow / V_base − 1)``, so long intervals weigh more. A diagnosis absent from the
training pairs falls back to the rate pooled over all training pairs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mambacontrol.data.change import percent_change
from mambacontrol.data.manifest import Visit, VisitPair
from mambacontrol.errors import MambaControlError

log = logging.getLogger(__name__)

_REGION_COLUMN = re.compile(r"^vol_r(\d+)$")

Volumes = Mapping[int, float]


def copy_baseline(baseline: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The copy-baseline's prediction: a copy of the ``(X, Y, Z)`` baseline scan."""
    return baseline.clone() if isinstance(baseline, torch.Tensor) else np.array(baseline, copy=True)


def copy_baseline_volumes(baseline_volumes: Volumes) -> dict[int, float]:
    """The copy-baseline's regional volumes (label → mm³): the baseline's, unchanged."""
    return {int(k): float(v) for k, v in baseline_volumes.items()}


def has_manifest_volumes(visit: Visit) -> bool:
    """Whether a manifest row carries the synthetic cohort's ``vol_r<label>`` columns."""
    return any(_REGION_COLUMN.match(k) for k in visit.extra)


def manifest_volumes(visit: Visit) -> dict[int, float]:
    """The exact regional volumes (label → mm³) from a row's ``vol_r<label>`` columns.

    Raises:
        MambaControlError: when the row has no such column or a value is not a number ≥ 0.
    """
    out: dict[int, float] = {}
    for column, text in visit.extra.items():
        match = _REGION_COLUMN.match(column)
        if not match:
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise MambaControlError(f"scan '{visit.image_uid}', column '{column}': '{text}' is "
                                    "not a volume in mm³ (a number ≥ 0)")
        out[int(match.group(1))] = value
    if not out:
        raise MambaControlError(f"scan '{visit.image_uid}' has no vol_r<label> columns; give "
                                "measured volumes to samples_from_pairs(..., volumes=...) instead")
    return out


@dataclass(frozen=True)
class VolumeSample:
    """One training pair's regional volumes.

    Attributes:
        diagnosis: diagnosis at baseline.
        years: Δt in years (> 0).
        baseline: label → mm³ at baseline.
        followup: label → mm³ at follow-up.
    """

    diagnosis: str
    years: float
    baseline: Volumes
    followup: Volumes


def samples_from_pairs(pairs: Iterable[VisitPair],
                       volumes: Callable[[Visit], Volumes] = manifest_volumes
                       ) -> list[VolumeSample]:
    """Volume samples of visit pairs.

    Args:
        pairs: the (train) pairs.
        volumes: visit → label → mm³; the default reads the manifest's ground-truth columns, pass
            a function returning measured volumes for real data.
    """
    return [VolumeSample(p.earlier.diagnosis, p.years, volumes(p.earlier), volumes(p.later))
            for p in pairs]


def _slopes(samples: Sequence[VolumeSample], keys: Callable[[Volumes], dict]) -> dict:
    """Least-squares slope through the origin of % change against Δt, per key."""
    num: dict = {}
    den: dict = {}
    for s in samples:
        base, follow = keys(s.baseline), keys(s.followup)
        for key, v0 in base.items():
            if v0 > 0 and key in follow:
                g = percent_change(follow[key], v0)
                num[key] = num.get(key, 0.0) + g * s.years
                den[key] = den.get(key, 0.0) + s.years**2
    return {k: num[k] / den[k] for k in num if den[k] > 0}


@dataclass(frozen=True)
class LinearRates:
    """Population annual volume change, % per year, fitted on training pairs.

    Attributes:
        rates: diagnosis → label → %/year.
        pooled: label → %/year over all diagnoses (the fallback).
        group_rates: diagnosis → key group → %/year, fitted on the group's summed volume
            (shown in reports; predictions use the per-label rates).
        n_pairs: diagnosis → number of training pairs.
        source: where the volumes came from, in words.
        measured: whether they were measured by registration, the ruler an evaluation reads its
            truth with (False: exact ground-truth volumes, which a measured truth under-reads
            where the measurement does).
    """

    rates: dict[str, dict[int, float]]
    pooled: dict[int, float]
    group_rates: dict[str, dict[str, float]]
    n_pairs: dict[str, int]
    source: str
    measured: bool = False

    def rate(self, diagnosis: str, label: int) -> float:
        """The %/year of one label for one diagnosis (pooled when that diagnosis has none)."""
        by_dx = self.rates.get(diagnosis, {})
        if label in by_dx:
            return by_dx[label]
        if label in self.pooled:
            return self.pooled[label]
        raise MambaControlError(f"label {label} has no fitted rate; the training pairs carry no "
                                "volume for it")

    def predict(self, baseline_volumes: Volumes, diagnosis: str, years: float) -> dict[int, float]:
        """Extrapolated follow-up volumes, label → mm³ (never below 0).

        Args:
            baseline_volumes: label → mm³ at baseline.
            diagnosis: diagnosis at baseline.
            years: horizon Δt in years.
        """
        if diagnosis not in self.rates:
            log.warning("diagnosis %s has no training pairs; using the pooled rate", diagnosis)
        return {int(k): max(0.0, float(v) * (1.0 + self.rate(diagnosis, int(k)) * years / 100.0))
                for k, v in baseline_volumes.items()}

    def to_dict(self) -> dict:
        """A JSON-able summary (for metrics.json)."""
        return {
            "model": "V_follow = V_base * (1 + rate * years / 100), volumes only",
            "source": self.source,
            "measured": self.measured,
            "n_pairs": dict(self.n_pairs),
            "key_group_rates_pct_per_year": {dx: dict(g) for dx, g in self.group_rates.items()},
            "region_rates_pct_per_year": {dx: {str(k): v for k, v in r.items()}
                                          for dx, r in self.rates.items()},
        }


def fit_linear_rates(samples: Iterable[VolumeSample],
                     key_groups: Mapping[str, Sequence[int]] | None = None,
                     source: str = "manifest ground-truth volumes",
                     measured: bool = False) -> LinearRates:
    """Fit population rates per diagnosis and region on training pairs.

    Args:
        samples: training pairs' volumes.
        key_groups: group name → labels, for :attr:`LinearRates.group_rates`.
        source: where the volumes came from, recorded in the result.
        measured: whether they were measured by registration (:attr:`LinearRates.measured`).

    Raises:
        MambaControlError: when there is no sample with Δt > 0.
    """
    samples = [s for s in samples if s.years > 0]
    if not samples:
        raise MambaControlError("no training pair with Δt > 0 to fit the linear extrapolation on; "
                                "check that the train split has subjects with two visits or more")
    groups = dict(key_groups or {})

    def per_label(v: Volumes) -> dict[int, float]:
        return {int(k): float(x) for k, x in v.items()}

    def per_group(v: Volumes) -> dict[str, float]:
        return {g: sum(v[lab] for lab in labs) for g, labs in groups.items()
                if all(lab in v for lab in labs)}

    by_dx: dict[str, list[VolumeSample]] = {}
    for s in samples:
        by_dx.setdefault(s.diagnosis, []).append(s)
    return LinearRates(
        rates={dx: _slopes(ss, per_label) for dx, ss in by_dx.items()},
        pooled=_slopes(samples, per_label),
        group_rates={dx: _slopes(ss, per_group) for dx, ss in by_dx.items()},
        n_pairs={dx: len(ss) for dx, ss in by_dx.items()},
        source=source,
        measured=measured,
    )
