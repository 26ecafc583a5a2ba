"""Network spread of Alzheimer's pathology on the anatomy graph (``--dynamics network``).

Each subject carries a pathology load ``x(t) ∈ [0, 1]`` on every grey-matter region, which
starts at subject-specific epicentres and spreads along the anatomy graph's contact edges by
network diffusion (Raj et al. 2012, Neuron 73:1204), fed by a seeding source at the epicentres
whose strength follows the disease stage:

    dx/dt = −β L x + (κ(t) x + α(t) e) ⊙ (1 − x)

- ``L = I − D⁻¹W``: the random-walk Laplacian of the grey-matter regions' face-contact areas
  (:meth:`~mambacontrol.graph.AnatomyGraph.from_atlas` without homologue edges, restricted to
  ``gm`` regions), so each region relaxes toward the contact-weighted mean of its neighbours at
  rate ``β`` (per year). White matter is left out of the diffusion: one white-matter region per
  hemisphere touches every cortical region, and spreading through it would reach all of them at
  once.
- ``e``: the epicentre pattern (max 1), drawn from a subtype (:data:`SUBTYPES`: mostly limbic /
  medial temporal, also posterior-cortical and frontal variants, as in data-driven subtype
  studies, e.g. Vogel et al. 2021, Nat Med 27:871) with subject-level weights and asymmetry.
- ``α(t)`` and ``κ(t)``: seeding at the epicentres and local growth of the load where it has
  arrived (the logistic term of the Fisher–Kolmogorov model of prion-like spread, Weickenmeier
  et al. 2019, J Mech Phys Solids 124:264), by phase, ``SpreadModel.seeding`` and ``growth`` =
  (preclinical, MCI, AD); both zero before the preclinical phase, which starts
  ``preclinical_years`` before MCI onset (neurodegeneration precedes symptoms by years). A
  subject who never reaches MCI within its life here has no pathology.

White-matter and CSF regions have no load of their own: theirs is the contact-weighted mean of
their grey-matter neighbours' (white matter degenerates behind the cortex it connects; a
ventricle widens where the tissue around it shrinks). The annual % volume change of region ``r``
is then

    rate_r(t) = sex · (exp(ε_r) · CN_r · age · m_aging + m_disease · V_r · x_r(t))

with the ageing part exactly as in :mod:`~mambacontrol.synth.rates` and ``V_r = (AD_r − CN_r) /
max(x̄_r, floor)``: the regional table's AD excess divided by the load ``x̄`` of a reference
typical (limbic) subject two and a half years into AD, so the typical subject reproduces the
calibrated table while an atypical one loses tissue where its own disease is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mambacontrol.atlas import Atlas, Region
from mambacontrol.synth.rates import STAGES, RateModel, SubjectEffects, region_mean_rates

log = logging.getLogger(__name__)

DYNAMICS = ("network", "independent")
"""``network``: pathology spreads on the anatomy graph (this module); ``independent``: each
region's rate drawn on its own (:mod:`~mambacontrol.synth.rates`, the generator before)."""

SUBTYPES: dict[str, dict[str, float]] = {
    "limbic": {"entorhinal area": 1.0, "hippocampus": 0.8, "amygdala": 0.7,
               "parahippocampal gyrus": 0.5},
    "posterior": {"precuneus": 1.0, "posterior cingulate gyrus": 0.8, "angular gyrus": 0.8,
                  "superior parietal lobule": 0.6, "supramarginal gyrus": 0.4},
    "frontal": {"middle frontal gyrus": 1.0, "superior frontal gyrus": 0.8,
                "anterior cingulate gyrus": 0.6, "medial frontal cortex": 0.6,
                "triangular part of the inferior frontal gyrus": 0.5},
}
"""Subtype → epicentre structures (``Region.group``) and their mean seeding weights."""


@dataclass(frozen=True)
class SpreadModel:
    """Parameters of the network dynamics (see the module docstring).

    Attributes:
        subtype_probabilities: probability of each of :data:`SUBTYPES`, in its order.
        beta: median spread rate β (per year; the Laplacian's eigenvalues lie in [0, 2]).
        beta_sd: log-normal sd of a subject's β.
        growth: local growth κ of the load (per year) in the preclinical phase, in MCI and in AD.
        seeding: seeding strength α (per year) in the preclinical phase, in MCI and in AD.
        preclinical_years: range of years of preclinical seeding before MCI onset (uniform).
        weight_sd: log-normal sd of each epicentre structure's weight.
        asymmetry_sd: sd of the log ratio of left to right seeding.
        vulnerability_floor: smallest reference load a region's vulnerability is divided by.
        reference_years: (preclinical, MCI, AD) years of the reference typical subject.
        step: time step of the integration (years; stage changes fall on 0.01-year times).
    """

    subtype_probabilities: tuple[float, float, float] = (0.6, 0.25, 0.15)
    beta: float = 1.0
    beta_sd: float = 0.3
    growth: tuple[float, float, float] = (0.3, 0.6, 0.6)
    seeding: tuple[float, float, float] = (0.1, 0.15, 0.4)
    preclinical_years: tuple[float, float] = (5.0, 10.0)
    weight_sd: float = 0.4
    asymmetry_sd: float = 0.25
    vulnerability_floor: float = 0.5
    reference_years: tuple[float, float, float] = (7.5, 3.0, 2.5)
    step: float = 0.01

    def __post_init__(self) -> None:
        for name in ("subtype_probabilities", "seeding", "growth", "preclinical_years",
                     "reference_years"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        p = self.subtype_probabilities
        if len(p) != len(SUBTYPES) or min(p) < 0 or not np.isclose(sum(p), 1.0):
            raise ValueError(f"subtype_probabilities={p} must be {len(SUBTYPES)} non-negative "
                             "fractions summing to 1")
        if self.beta < 0 or min(self.seeding + self.growth) < 0 or self.step <= 0:
            raise ValueError(f"beta={self.beta}, seeding={self.seeding}, growth={self.growth} and "
                             f"step={self.step} must be non-negative (step positive)")
        if len(self.seeding) != 3 or len(self.growth) != 3:
            raise ValueError("seeding and growth need one value per phase: preclinical, MCI, AD")
        lo, hi = self.preclinical_years
        if not 0 <= lo <= hi:
            raise ValueError(f"preclinical_years={self.preclinical_years} must be a range 0 <= lo "
                             "<= hi")


class SpreadGraph:
    """The atlas regions' contact graph as the dynamics use it.

    Args:
        atlas: the cohort's atlas (its grid's face contacts define the edges).

    Attributes:
        regions: the R atlas regions, in atlas order.
        grey: (G,) indices of the grey-matter regions (the diffusion's nodes).
        transition: (G, G) ``D⁻¹W`` of the grey-matter contact areas (rows sum to 1).
        spread: (R, G) load of every region from the grey-matter loads: identity rows for grey
            matter, contact-weighted means of grey-matter neighbours for the others (zero rows
            for a region without one).
        adjacency: (R, R) bool, regions that share a face (self excluded).
    """

    def __init__(self, atlas: Atlas):
        # lazy: graph.anatomy imports torch, which only network dynamics need
        from mambacontrol.graph.anatomy import AnatomyGraph

        graph = AnatomyGraph.from_atlas(atlas, "region", homologue_edges=False)
        self.regions: list[Region] = list(atlas.regions)
        if graph.node_labels != [[r.label] for r in self.regions]:
            raise ValueError("the anatomy graph's nodes are not the atlas regions in order")
        weights = np.asarray(graph.weights, dtype=np.float64)
        grey = np.array([r.tissue == "gm" for r in self.regions])
        self.grey = np.flatnonzero(grey)
        w = weights[np.ix_(self.grey, self.grey)]
        degree = w.sum(axis=1)
        self.transition = np.where(degree[:, None] > 0, w / np.maximum(degree, 1e-12)[:, None], 0.0)
        to_grey = weights[:, self.grey]
        total = to_grey.sum(axis=1, keepdims=True)
        self.spread = np.where(total > 0, to_grey / np.maximum(total, 1e-12), 0.0)
        self.spread[self.grey] = np.eye(len(self.grey))
        self.adjacency = weights > 0

    def epicentre(self, weights: dict[str, float], asymmetry: float = 0.0) -> np.ndarray:
        """(G,) seeding pattern, max 1, from structure weights and a left/right log ratio."""
        e = np.zeros(len(self.grey))
        for j, i in enumerate(self.grey):
            r = self.regions[i]
            if r.group in weights:
                side = {"left": 0.5, "right": -0.5}.get(r.hemisphere, 0.0)
                e[j] = weights[r.group] * np.exp(side * asymmetry)
        if e.max() <= 0:
            raise ValueError(f"no grey-matter region belongs to the epicentre {sorted(weights)}")
        return e / e.max()


def stage_segments(life: Sequence[tuple[float, str]], preclinical: float, start: float,
                   end: float) -> list[tuple[float, float, int]]:
    """Seeding phases over ``[start, end]``: ``(from, to, phase)`` with phase −1 (none),
    0 (preclinical), 1 (MCI), 2 (AD).

    Args:
        life: ``(start_year, stage)`` pairs, sorted (history then follow-up timeline).
        preclinical: years of preclinical seeding before MCI onset.
        start, end: the span to cover (years since baseline).
    """
    onsets = {}
    for t, stage in life:
        onsets.setdefault(stage, t)
    if "MCI" not in onsets and "AD" in onsets:  # AD from the start: MCI lay before it
        onsets["MCI"] = onsets["AD"]
    cuts = [(start, -1)]
    if "MCI" in onsets:
        cuts.append((onsets["MCI"] - preclinical, 0))
        cuts.append((onsets["MCI"], 1))
    if "AD" in onsets:
        cuts.append((onsets["AD"], 2))
    out = []
    for i, (t, phase) in enumerate(cuts):
        lo = max(t, start)
        hi = min(cuts[i + 1][0] if i + 1 < len(cuts) else end, end)
        if hi > lo:
            out.append((lo, hi, phase))
    return out


def integrate(graph: SpreadGraph, model: SpreadModel, epicentre: np.ndarray, beta: float,
              segments: Sequence[tuple[float, float, int]], start: float,
              end: float) -> tuple[np.ndarray, np.ndarray]:
    """Grey-matter load over time (classical Runge–Kutta, step ``model.step``).

    Args:
        graph: the spread graph.
        model: the parameters (seeding strengths, step).
        epicentre: (G,) seeding pattern.
        beta: the subject's spread rate.
        segments: seeding phases from :func:`stage_segments`.
        start, end: integration span (years since baseline); ``x(start) = 0``.

    Returns:
        ``(times, x)``: (T,) times and (T, G) loads in [0, 1].
    """
    n = max(1, int(round((end - start) / model.step)))
    times = start + (end - start) * np.arange(n + 1) / n
    h = (end - start) / n
    alpha, kappa = np.zeros(n), np.zeros(n)
    mid = times[:-1] + 0.5 * h
    for lo, hi, phase in segments:
        if phase >= 0:
            inside = (mid >= lo) & (mid < hi)
            alpha[inside] = model.seeding[phase]
            kappa[inside] = model.growth[phase]
    p = graph.transition

    def f(x, a, g):
        return -beta * (x - p @ x) + (g * x + a * epicentre) * (1.0 - x)

    x = np.zeros((n + 1, len(epicentre)))
    for k in range(n):
        xk, a, g = x[k], alpha[k], kappa[k]
        if a == 0.0 and not xk.any():
            continue
        k1 = f(xk, a, g)
        k2 = f(xk + 0.5 * h * k1, a, g)
        k3 = f(xk + 0.5 * h * k2, a, g)
        k4 = f(xk + h * k3, a, g)
        x[k + 1] = np.clip(xk + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), 0.0, 1.0)
    return times, x


_REFERENCE: dict[tuple, np.ndarray] = {}


def reference_load(graph: SpreadGraph, model: SpreadModel, key: tuple = ()) -> np.ndarray:
    """(R,) load of every region in the reference typical subject (limbic epicentre at its mean
    weights, symmetric, median β) ``model.reference_years`` into preclinical, MCI and AD."""
    cache_key = (key, model)
    if cache_key not in _REFERENCE:
        pre, mci, ad = model.reference_years
        life = ((-(mci + ad), "MCI"), (-ad, "AD"))
        start = -(pre + mci + ad)
        segments = stage_segments(life, pre, start, 0.0)
        _, x = integrate(graph, model, graph.epicentre(SUBTYPES["limbic"]), model.beta, segments,
                         start, 0.0)
        _REFERENCE[cache_key] = graph.spread @ x[-1]
        log.debug("reference load: %d of %d regions at least %.2f", int(
            (_REFERENCE[cache_key] >= model.vulnerability_floor).sum()), len(graph.regions),
            model.vulnerability_floor)
    return _REFERENCE[cache_key]


@dataclass(frozen=True)
class NetworkRates:
    """A subject's regional change under network spread, at every time of its life.

    Same use as :class:`~mambacontrol.synth.rates.SubjectRates`: :meth:`log_ratio` gives the
    prescribed log volume ratio between two times.

    Attributes:
        labels: (R,) region labels.
        times: (T,) years since baseline, from the start of the life to its last visit.
        annual: (T, R) % volume change per year at each time.
        load: (T, R) pathology load at each time (white matter and CSF derived).
        subtype: one of :data:`SUBTYPES`.
        epicentre: region label → seeding weight (max 1), the regions seeded.
        beta: the subject's spread rate (per year).
        preclinical_years: years of preclinical seeding before MCI onset.
        mci_onset: years since baseline of MCI onset (None: never, within the life).
    """

    labels: tuple[int, ...]
    times: np.ndarray
    annual: np.ndarray
    load: np.ndarray
    subtype: str
    epicentre: dict[int, float]
    beta: float
    preclinical_years: float
    mci_onset: float | None
    _cumulative: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = np.diff(self.times)[:, None]
        rates = np.log1p(self.annual / 100.0)
        cumulative = np.concatenate([np.zeros((1, rates.shape[1])),
                                     np.cumsum(0.5 * steps * (rates[1:] + rates[:-1]), axis=0)])
        object.__setattr__(self, "_cumulative", cumulative)

    def _at(self, table: np.ndarray, years: float) -> np.ndarray:
        t = float(np.clip(years, self.times[0], self.times[-1]))
        k = int(np.clip(np.searchsorted(self.times, t) - 1, 0, len(self.times) - 2))
        w = (t - self.times[k]) / (self.times[k + 1] - self.times[k])
        return (1.0 - w) * table[k] + w * table[k + 1]

    def log_ratio(self, timeline: Sequence[tuple[float, str]], years: float) -> np.ndarray:
        """Prescribed log volume ratio of every region from the timeline's first start to ``years``.

        The stages were fixed when the load was integrated; only the timeline's first start is
        read here (an empty timeline: zeros).

        Returns:
            (R,) ``∫ log(1 + rate(t) / 100) dt`` (trapezoids on the integration grid).
        """
        if not timeline:
            return np.zeros(len(self.labels))
        start = float(timeline[0][0])
        if years <= start:
            return np.zeros(len(self.labels))
        return self._at(self._cumulative, years) - self._at(self._cumulative, start)

    def annual_at(self, years: float) -> np.ndarray:
        """(R,) % volume change per year at a time since baseline."""
        return self._at(self.annual, years)

    def load_at(self, years: float) -> np.ndarray:
        """(R,) pathology load at a time since baseline."""
        return self._at(self.load, years)

    def group_rate(self, stage: str, labels: Sequence[int], volumes: Sequence[float],
                   years: float = 0.0) -> float:
        """Annual % change of a group of regions at ``years`` (default baseline), weighted by
        ``volumes``. ``stage`` is accepted for the interface of ``SubjectRates`` and ignored:
        here the rate follows the load, not the diagnosis."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {STAGES}")
        index = {lab: i for i, lab in enumerate(self.labels)}
        rates = self.annual_at(years)[[index[lab] for lab in labels]]
        w = np.asarray(volumes, dtype=np.float64)
        return float((rates * w).sum() / w.sum())

    def extent(self, years: float, volumes: np.ndarray | None = None) -> float:
        """Disease extent at a time: the mean load of the regions weighted by ``volumes`` (R,)
        (default equal weights; ``cohort.json`` weights grey matter by its reference volume)."""
        load = self.load_at(years)
        w = np.ones_like(load) if volumes is None else np.asarray(volumes, dtype=np.float64)
        return float((load * w).sum() / w.sum())


def draw_network_rates(rng: np.random.Generator, effects: SubjectEffects, graph: SpreadGraph,
                       model: SpreadModel, rate_model: RateModel,
                       history: Sequence[tuple[float, str]],
                       timeline: Sequence[tuple[float, str]], last_visit: float,
                       sex: str, reference: np.ndarray) -> NetworkRates:
    """One subject's regional change under network spread.

    Args:
        rng: the subject's ``spread`` stream (the only generator this draws from).
        effects: the subject's ageing and disease effects (from its ``rates`` stream, drawn as in
            the independent generator).
        graph: the spread graph of the cohort's atlas grid.
        model: the network parameters.
        rate_model: the rate model (sex factors).
        history: pre-baseline ``(start, stage)`` pairs (negative starts).
        timeline: follow-up ``(start, stage)`` pairs (from 0).
        last_visit: years since baseline of the last visit.
        sex: ``F`` or ``M``.
        reference: (R,) :func:`reference_load` of the grid.
    """
    names = list(SUBTYPES)
    subtype = names[int(rng.choice(len(names), p=np.asarray(model.subtype_probabilities)))]
    mean_weights = SUBTYPES[subtype]
    weights = {g: w * float(np.exp(np.clip(rng.normal(0.0, model.weight_sd), -2 * model.weight_sd,
                                           2 * model.weight_sd)))
               for g, w in mean_weights.items()}
    asymmetry = float(np.clip(rng.normal(0.0, model.asymmetry_sd), -2 * model.asymmetry_sd,
                              2 * model.asymmetry_sd))
    beta = model.beta * float(np.exp(np.clip(rng.normal(0.0, model.beta_sd), -2 * model.beta_sd,
                                             2 * model.beta_sd)))
    preclinical = float(rng.uniform(*model.preclinical_years))
    e = graph.epicentre(weights, asymmetry)

    life = tuple(history) + tuple(timeline)
    start = min([0.0] + [t for t, _ in history])
    segments = stage_segments(life, preclinical, -1e9, last_visit)
    begin = min([start] + [lo for lo, _, phase in segments if phase >= 0])
    begin = float(np.floor(begin / model.step + 1e-9) * model.step)
    end = max(float(last_visit), begin + model.step)
    times, x = integrate(graph, model, e, beta, [(max(lo, begin), hi, p) for lo, hi, p in segments],
                         begin, end)
    load = x @ graph.spread.T
    mean = region_mean_rates(graph.regions)
    vulnerability = (mean[2] - mean[0]) / np.maximum(reference, model.vulnerability_floor)
    ageing = effects.effect * mean[0] * effects.age_factor * effects.aging
    sex_factor = rate_model.female_factor if sex == "F" else rate_model.male_factor
    annual = ageing[None] + sex_factor * effects.disease * vulnerability[None] * load
    onsets = [t for t, s in life if s in ("MCI", "AD")]
    seeded = {graph.regions[graph.grey[j]].label: round(float(v), 4) for j, v in enumerate(e)
              if v > 0}
    return NetworkRates(tuple(r.label for r in graph.regions), times, annual, load, subtype, seeded,
                        round(beta, 5), round(preclinical, 3), min(onsets) if onsets else None)
