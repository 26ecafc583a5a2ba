"""Covariates (age, horizon, sex, diagnosis) as the fixed-length vector every model consumes.

The normalisation constants are part of each model's saved config, so training and inference
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mambacontrol.data.manifest import DIAGNOSES, normalize_diagnosis, normalize_sex

COVARIATE_NAMES = ("age", "years", "sex_female", "dx_cn", "dx_mci", "dx_ad")
NUM_COVARIATES = len(COVARIATE_NAMES)


@dataclass(frozen=True)
class CovariateNorm:
    """Affine normalisation of the continuous covariates: ``(age - age_mean) / age_std``,
    ``years / years_scale``."""

    age_mean: float = 70.0
    age_std: float = 10.0
    years_scale: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> CovariateNorm:
        return cls(**(d or {}))


def encode_covariates(age: float | Sequence[float], years: float | Sequence[float],
                      sex: str | Sequence[str], diagnosis: str | Sequence[str],
                      norm: CovariateNorm = CovariateNorm()) -> torch.Tensor:
    """Covariate vectors.

    Args:
        age: age(s) in years at the baseline scan.
        years: horizon(s) Δt in years.
        sex: ``F``/``M`` (any accepted spelling), one per sample.
        diagnosis: ``CN``/``MCI``/``AD`` (any accepted spelling), one per sample.
        norm: normalisation constants.

    Returns:
        (B, 6) float32 tensor ordered as :data:`COVARIATE_NAMES`.
    """
    ages = np.atleast_1d(np.asarray(age, dtype=np.float64))
    yrs = np.atleast_1d(np.asarray(years, dtype=np.float64))
    sexes = [sex] if isinstance(sex, str) else list(sex)
    dxs = [diagnosis] if isinstance(diagnosis, str) else list(diagnosis)
    n = max(len(ages), len(yrs), len(sexes), len(dxs))
    if any(k not in (1, n) for k in (len(ages), len(yrs), len(sexes), len(dxs))):
        raise ValueError(f"covariate lengths differ: age {len(ages)}, years {len(yrs)}, "
                         f"sex {len(sexes)}, diagnosis {len(dxs)}")
    ages, yrs = np.broadcast_to(ages, (n,)), np.broadcast_to(yrs, (n,))
    sexes = sexes * n if len(sexes) == 1 else sexes
    dxs = dxs * n if len(dxs) == 1 else dxs
    out = np.zeros((n, NUM_COVARIATES), dtype=np.float32)
    out[:, 0] = (ages - norm.age_mean) / norm.age_std
    out[:, 1] = yrs / norm.years_scale
    out[:, 2] = [normalize_sex(s) == "F" for s in sexes]
    for i, d in enumerate(dxs):
        out[i, 3 + DIAGNOSES.index(normalize_diagnosis(d))] = 1.0
    return torch.from_numpy(out)
