"""Who is in the synthetic cohort: covariates, visit schedules, conversions, histories and splits.

Cohort-level choices (the diagnosis mix and the train/valid/test split, both by largest remainder
so that small cohorts still hold every diagnosis) come from the cohort's generator; everything
about one subject comes from that subject's own seed, so a subject does not depend on how many
workers run or in which order.

A subject's life is one timeline of stages: ``history`` (before the first visit, negative years
since baseline) then ``timeline`` (from baseline on). Everyone ages at CN-stage rates from
``CohortDesign.reference_age``, the age its reference anatomy (the template under its shape map)
stands for; a subject with MCI at baseline entered MCI ``mci_years`` before it; a subject with AD
went through ``mci_years`` of MCI and then ``ad_years`` of AD. The disease years are never cut
short: a subject too young for its reference age plus them starts its history at MCI onset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mambacontrol.data import DIAGNOSES, SPLITS

SUBJECT_STREAMS = ("plan", "rates", "anatomy", "appearance", "spread")
"""A subject's independent random streams. Children of a ``SeedSequence`` do not depend on how
many are spawned, so ``spread`` (drawn only by network dynamics) left the first four unchanged."""


@dataclass(frozen=True)
class CohortDesign:
    """Parameters of the cohort's make-up.

    Attributes:
        subjects: number of subjects.
        visits: (fewest, most) visits per subject, drawn uniformly.
        max_years: longest follow-up (years).
        min_gap: shortest interval between two visits (years).
        diagnosis_mix: baseline fractions of CN, MCI, AD.
        split: fractions of subjects in train, valid, test.
        age_range: every visit's age lies in it (years).
        age_mean: mean baseline age of CN, MCI, AD; ``age_sd`` their spread.
        conversion: annual probability of CN→MCI and of MCI→AD.
        pre_baseline: give subjects the atrophy they accumulated before baseline (``False``: every
            baseline is the reference anatomy, so baselines say nothing beyond diagnosis and age;
            for comparison).
        reference_age: the age the reference anatomy stands for; ageing history starts there.
        mci_years: range of years spent with MCI before baseline (MCI and AD at baseline),
            drawn uniformly.
        ad_years: range of years spent with AD before baseline (AD at baseline), drawn uniformly.
    """

    subjects: int = 20
    visits: tuple[int, int] = (2, 5)
    max_years: float = 8.0
    min_gap: float = 0.25
    diagnosis_mix: tuple[float, float, float] = (0.4, 0.4, 0.2)
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    age_range: tuple[float, float] = (55.0, 90.0)
    age_mean: tuple[float, float, float] = (71.0, 73.0, 75.0)
    age_sd: float = 7.0
    conversion: tuple[float, float] = (0.05, 0.15)
    pre_baseline: bool = True
    reference_age: float = 60.0
    mci_years: tuple[float, float] = (1.0, 5.0)
    ad_years: tuple[float, float] = (1.0, 4.0)

    def __post_init__(self) -> None:
        if self.subjects < 1:
            raise ValueError(f"subjects={self.subjects} must be at least 1")
        lo, hi = self.visits
        if not 2 <= lo <= hi <= 12:
            raise ValueError(f"visits={self.visits} must satisfy 2 <= fewest <= most <= 12")
        if self.max_years < self.min_gap * (hi - 1):
            raise ValueError(f"max_years={self.max_years} cannot hold {hi} visits {self.min_gap} "
                             "years apart")
        for name in ("diagnosis_mix", "split"):
            fr = getattr(self, name)
            if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
                raise ValueError(f"{name}={fr} must be three non-negative fractions summing to 1")
        if self.age_range[1] - self.age_range[0] <= self.max_years:
            raise ValueError(f"age_range={self.age_range} is too narrow for "
                             f"max_years={self.max_years}")
        for name in ("mci_years", "ad_years"):
            lo_years, hi_years = getattr(self, name)
            if not 0 <= lo_years <= hi_years:
                raise ValueError(f"{name}={getattr(self, name)} must be a range 0 <= shortest <= "
                                 "longest")


@dataclass(frozen=True)
class SubjectPlan:
    """One subject's covariates and schedule.

    Attributes:
        index: 0-based position in the cohort.
        subject_id: e.g. ``sub-007``.
        split: ``train``/``valid``/``test``.
        sex: ``F``/``M``.
        baseline_age: age at the first visit (years).
        baseline_diagnosis: ``CN``/``MCI``/``AD``.
        visit_years: time of every visit since baseline, the first 0.
        timeline: ``(start_year, stage)`` pairs: the baseline stage at 0 and each conversion
            that happens before the last visit.
        seed: ``(entropy, spawn_key)`` of the subject's ``numpy.random.SeedSequence``.
        history: ``(start_year, stage)`` pairs before baseline (negative years, sorted; each
            stage lasts until the next one starts, the last until baseline): the ageing and
            disease the subject went through before its first visit. Empty: none.
    """

    index: int
    subject_id: str
    split: str
    sex: str
    baseline_age: float
    baseline_diagnosis: str
    visit_years: tuple[float, ...]
    timeline: tuple[tuple[float, str], ...]
    seed: tuple[int, tuple[int, ...]] = field(repr=False)
    history: tuple[tuple[float, str], ...] = ()

    def pre_baseline_years(self) -> dict[str, float]:
        """Years spent in each stage before baseline, e.g. ``{"CN": 11.2, "MCI": 3.1}``."""
        ends = [start for start, _ in self.history[1:]] + [0.0]
        out: dict[str, float] = {}
        for (start, stage), end in zip(self.history, ends):
            out[stage] = round(out.get(stage, 0.0) + end - start, 2)
        return out

    def diagnosis_at(self, years: float) -> str:
        """Stage at a time since baseline (a conversion counts from its own time on)."""
        stage = self.timeline[0][1]
        for start, s in self.timeline:
            if start <= years + 1e-9:
                stage = s
        return stage

    def visit_id(self, visit: int) -> str:
        """``image_uid`` of a visit (0-based), e.g. ``sub-007_ses-02``."""
        return f"{self.subject_id}_ses-{visit + 1:02d}"

    def rng(self, stream: str) -> np.random.Generator:
        """A fresh generator at the start of one of the subject's streams (``plan``, ``rates``,
        ``anatomy``, ``appearance``, ``spread``): the same numbers in every process and on every
        call."""
        return subject_generators(self.seed)[stream]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timeline"] = [list(t) for t in self.timeline]
        d["visit_years"] = list(self.visit_years)
        d["history"] = [list(t) for t in self.history]
        d["seed"] = {"entropy": self.seed[0], "spawn_key": list(self.seed[1])}
        return d


def subject_generators(seed: tuple[int, tuple[int, ...]]) -> dict[str, np.random.Generator]:
    """Independent generators of one subject, rebuilt from its seed (same in every process)."""
    ss = np.random.SeedSequence(seed[0], spawn_key=seed[1])
    return {name: np.random.default_rng(child)
            for name, child in zip(SUBJECT_STREAMS, ss.spawn(len(SUBJECT_STREAMS)))}


def largest_remainder(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts summing to ``total`` closest to ``total * fractions`` (ties to the first)."""
    raw = [total * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def interleave(counts: Sequence[int]) -> list[int]:
    """A sequence holding ``counts[k]`` copies of ``k``, each spread evenly along it."""
    total = sum(counts)
    taken = [0] * len(counts)
    out = []
    for i in range(total):
        k = max(range(len(counts)), key=lambda j: (counts[j] * (i + 1) / total - taken[j], -j))
        taken[k] += 1
        out.append(k)
    return out


def _visit_years(rng: np.random.Generator, design: CohortDesign) -> tuple[float, ...]:
    n = int(rng.integers(design.visits[0], design.visits[1] + 1))
    shortest = max(1.0, design.min_gap * (n - 1))
    span = float(rng.uniform(shortest, design.max_years))
    gaps = design.min_gap + (span - design.min_gap * (n - 1)) * rng.dirichlet(np.full(n - 1, 3.0))
    years = np.concatenate([[0.0], np.cumsum(gaps)])
    return tuple(round(float(y), 2) for y in years)


def _timeline(rng: np.random.Generator, design: CohortDesign, baseline: str,
              last_visit: float) -> tuple[tuple[float, str], ...]:
    timeline = [(0.0, baseline)]
    stage, now = baseline, 0.0
    while stage != "AD":
        p = design.conversion[DIAGNOSES.index(stage)]
        wait = float(rng.exponential(1.0 / -math.log1p(-p))) if p > 0 else math.inf
        now = round(now + wait, 2)
        if now >= last_visit:
            break
        stage = DIAGNOSES[DIAGNOSES.index(stage) + 1]
        timeline.append((now, stage))
    return tuple(timeline)


def _history(rng: np.random.Generator, design: CohortDesign, baseline: str,
             age: float) -> tuple[tuple[float, str], ...]:
    """Pre-baseline stages (see the module docstring), the earliest first."""
    if not design.pre_baseline:
        return ()
    disease = DIAGNOSES[1:DIAGNOSES.index(baseline) + 1]
    years = {"MCI": design.mci_years, "AD": design.ad_years}
    starts, now = [], 0.0
    for stage in reversed(disease):
        now = round(now - float(rng.uniform(*years[stage])), 2)
        starts.append((now, stage))
    ageing = round(age - design.reference_age + now, 2)
    if ageing > 0:
        starts.append((round(now - ageing, 2), "CN"))
    return tuple(reversed(starts))


def plan_cohort(design: CohortDesign, seed: int) -> list[SubjectPlan]:
    """Draw every subject's covariates, visits, conversions and split.

    Args:
        design: the cohort's make-up.
        seed: the cohort seed.

    Returns:
        One plan per subject, in subject order.
    """
    cohort_ss, subjects_ss = np.random.SeedSequence(seed).spawn(2)
    cohort_rng = np.random.default_rng(cohort_ss)
    n = design.subjects
    dx_index = np.repeat(np.arange(3), largest_remainder(n, design.diagnosis_mix))
    dx_index = cohort_rng.permutation(dx_index)
    order = sorted(range(n), key=lambda i: (dx_index[i], cohort_rng.random()))
    splits = [""] * n
    for i, k in zip(order, interleave(largest_remainder(n, design.split))):
        splits[i] = SPLITS[k]
    width = max(3, len(str(n)))
    plans = []
    for i, ss in enumerate(subjects_ss.spawn(n)):
        seed_key = (int(ss.entropy), tuple(int(k) for k in ss.spawn_key))
        rng = subject_generators(seed_key)["plan"]
        dx = DIAGNOSES[int(dx_index[i])]
        sex = "F" if rng.random() < 0.5 else "M"
        years = _visit_years(rng, design)
        lo, hi = design.age_range[0], design.age_range[1] - years[-1]
        age = float(np.clip(rng.normal(design.age_mean[DIAGNOSES.index(dx)],
                                       design.age_sd), lo, hi))
        timeline = _timeline(rng, design, dx, years[-1])
        history = _history(rng, design, dx, round(age, 2))
        plans.append(SubjectPlan(i, f"sub-{i + 1:0{width}d}", splits[i], sex, round(age, 2), dx,
                                 years, timeline, seed_key, history))
    return plans
