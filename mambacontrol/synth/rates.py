"""Regional annual volume change: published mean rates per stage and subject random effects.

Mean rates (% volume per year, CN / MCI / AD) are round figures in the range reported by
longitudinal MRI studies (e.g. hippocampus about -1 / -3 / -4.5 %/yr, Barnes et al. 2009
and Leung et al. 2013; ventricles about +2 / +4 / +6 %/yr, Nestor et al. 2008; whole brain
-0.3 to -1.5 %/yr, Fox & Schott 2004). A subject's rate for region ``r`` at stage ``s`` is

    rate = sex · exp(ε_group + ε_region) · (CN_r · age · m_aging + (s_r − CN_r) · m_disease)

with ``age = exp(age_slope · (age − 72))`` (faster when older), ``m_aging`` and ``m_disease``
log-normal subject effects, ``ε`` normal effects shared by a structure's hemispheres
(``ε_group``) or not (``ε_region``), and a slight sex effect (women faster). Every normal draw
(the logs of the multipliers included) is truncated at two standard deviations, so no subject
changes implausibly fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mambacontrol.atlas import Region

STAGES = ("CN", "MCI", "AD")

# % volume change per year at CN, MCI, AD, by region group (``Region.group``)
GROUP_RATES: dict[str, tuple[float, float, float]] = {
    "hippocampus": (-1.0, -3.0, -4.5),
    "amygdala": (-1.0, -2.8, -4.2),
    "entorhinal area": (-1.1, -3.2, -5.0),
    "parahippocampal gyrus": (-0.8, -2.0, -3.0),
    "lateral ventricle": (2.0, 4.0, 6.0),
    "inferior lateral ventricle": (2.5, 5.0, 7.5),
    "third ventricle": (1.5, 3.0, 4.5),
    "fourth ventricle": (0.5, 1.0, 1.5),
    "csf": (1.0, 2.0, 3.0),
    "posterior cingulate gyrus": (-0.45, -1.0, -1.5),
    "precuneus": (-0.45, -1.0, -1.5),
    "cerebral white matter": (-0.25, -0.5, -0.8),
    "basal forebrain": (-0.5, -1.2, -2.0),
}
# cortex and other grey matter by lobe, when the group is not listed above
LOBE_RATES: dict[str, tuple[float, float, float]] = {
    "temporal": (-0.5, -1.1, -1.5),
    "parietal": (-0.45, -1.0, -1.5),
    "medial temporal": (-0.8, -2.0, -3.0),
    "frontal": (-0.3, -0.6, -1.0),
    "occipital": (-0.3, -0.5, -0.8),
    "insula": (-0.3, -0.7, -1.1),
    "limbic": (-0.3, -0.7, -1.1),
    "subcortical": (-0.4, -0.8, -1.2),
    "cerebellum": (-0.2, -0.3, -0.5),
    "brainstem": (-0.15, -0.25, -0.4),
    "ventricles": (1.0, 2.0, 3.0),
}
DEFAULT_RATE = (-0.2, -0.3, -0.5)


def region_mean_rates(regions: Sequence[Region]) -> np.ndarray:
    """Mean annual change of each region at each stage.

    Args:
        regions: the atlas regions.

    Returns:
        (3, R) float64, % volume per year, rows CN, MCI, AD.
    """
    table = [GROUP_RATES.get(r.group, LOBE_RATES.get(r.lobe, DEFAULT_RATE)) for r in regions]
    return np.asarray(table, dtype=np.float64).T


def _normal(rng: np.random.Generator, sd: float, size: int) -> np.ndarray:
    """Normal draws with mean 0, truncated (clipped) at two standard deviations."""
    return np.clip(rng.normal(0.0, sd, size), -2.0 * sd, 2.0 * sd)


@dataclass(frozen=True)
class RateModel:
    """Parameters of the subject random effects (see the module docstring).

    Attributes:
        aging_sd, disease_sd: log-normal sd of the subject's aging and disease multipliers
            (every draw is truncated at two sd).
        group_sd, region_sd: sd of the structure-level and region-level log multipliers.
        age_slope: log rate change per year of baseline age (reference 72 years).
        female_factor, male_factor: sex multipliers.
    """

    aging_sd: float = 0.25
    disease_sd: float = 0.25
    group_sd: float = 0.15
    region_sd: float = 0.05
    age_slope: float = 0.02
    age_reference: float = 72.0
    female_factor: float = 1.05
    male_factor: float = 0.95

    def effects(self, rng: np.random.Generator, age: float, sex: str,
                regions: Sequence[Region]) -> SubjectEffects:
        """One subject's random effects, drawn in a fixed order from its ``rates`` stream.

        Args:
            rng: the subject's generator.
            age: baseline age in years.
            sex: ``F`` or ``M``.
            regions: the atlas regions.
        """
        groups = sorted({r.group for r in regions})
        group_effect = dict(zip(groups, _normal(rng, self.group_sd, len(groups))))
        region_effect = _normal(rng, self.region_sd, len(regions))
        aging = float(np.exp(_normal(rng, self.aging_sd, 1)[0]))
        disease = float(np.exp(_normal(rng, self.disease_sd, 1)[0]))
        age_factor = float(np.exp(self.age_slope * (age - self.age_reference)))
        sex_factor = self.female_factor if sex == "F" else self.male_factor
        effect = sex_factor * np.exp(np.array([group_effect[r.group]
                                               for r in regions]) + region_effect)
        return SubjectEffects(effect, aging, disease, age_factor)

    def draw(self, rng: np.random.Generator, age: float, sex: str,
             regions: Sequence[Region]) -> SubjectRates:
        """One subject's annual rates at every stage.

        Args:
            rng: the subject's generator.
            age: baseline age in years.
            sex: ``F`` or ``M``.
            regions: the atlas regions.
        """
        mean = region_mean_rates(regions)
        fx = self.effects(rng, age, sex, regions)
        cn = mean[0] * fx.age_factor * fx.aging
        annual = np.stack([fx.effect * (cn + (mean[s] - mean[0]) * fx.disease) for s in range(3)])
        return SubjectRates(tuple(r.label for r in regions), annual)


@dataclass(frozen=True)
class SubjectEffects:
    """A subject's random effects on its rates (see the module docstring).

    Attributes:
        effect: (R,) ``sex · exp(ε_group + ε_region)`` per region.
        aging: ``m_aging``.
        disease: ``m_disease``.
        age_factor: ``exp(age_slope · (age − reference))``.
    """

    effect: np.ndarray
    aging: float
    disease: float
    age_factor: float


@dataclass(frozen=True)
class SubjectRates:
    """A subject's prescribed annual volume change per region and stage.

    Attributes:
        labels: (R,) region labels, the column order of ``annual``.
        annual: (3, R) % volume per year at CN, MCI, AD.
    """

    labels: tuple[int, ...]
    annual: np.ndarray

    def log_ratio(self, timeline: Sequence[tuple[float, str]], years: float) -> np.ndarray:
        """Prescribed log volume ratio of every region from the timeline's first start to ``years``.

        With the follow-up ``timeline`` (first start 0) this is a visit's ratio over baseline; with
        a pre-baseline history (negative starts) and ``years=0``, the baseline's ratio over the
        reference anatomy. Rates are the subject's own, the same before and after baseline.

        Args:
            timeline: ``(start_year, stage)`` pairs, sorted; each stage lasts until the next starts.
            years: time since baseline.

        Returns:
            (R,) ``Σ_segments duration · log(1 + rate / 100)`` (zeros for an empty timeline).
        """
        out = np.zeros(len(self.labels))
        for i, (start, stage) in enumerate(timeline):
            end = timeline[i + 1][0] if i + 1 < len(timeline) else np.inf
            duration = max(0.0, min(end, years) - start)
            out += duration * np.log1p(self.annual[STAGES.index(stage)] / 100.0)
        return out

    def group_rate(self, stage: str, labels: Sequence[int], volumes: Sequence[float]) -> float:
        """Annual % change of a group of regions: their rates weighted by baseline volume."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        rates = self.annual[STAGES.index(stage)][[index[lab] for lab in labels]]
        w = np.asarray(volumes, dtype=np.float64)
        return float((rates * w).sum() / w.sum())
