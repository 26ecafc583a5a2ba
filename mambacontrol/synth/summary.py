"""Summary of a synthetic cohort from its manifest: who is in it and how fast their regions
change."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from mambacontrol.data import DIAGNOSES, SPLITS, Manifest
from mambacontrol.data.change import percent_change
from mambacontrol.errors import ManifestError

_REGION_COLUMN = re.compile(r"^vol_r\d+$")


@dataclass(frozen=True)
class DiagnosisSummary:
    """Subjects of one baseline diagnosis.

    Attributes:
        diagnosis: baseline diagnosis.
        subjects, visits: counts.
        mean_years: mean follow-up (first to last visit).
        converted: subjects whose diagnosis changed during follow-up.
        annual_change: key group → mean annualised true change, % per year (first to last visit).
    """

    diagnosis: str
    subjects: int
    visits: int
    mean_years: float
    converted: int
    annual_change: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortSummary:
    """Counts and per-diagnosis change of a cohort."""

    subjects: int
    visits: int
    pairs: int
    splits: dict[str, int]
    groups: list[str]
    rows: list[DiagnosisSummary]


def key_group_columns(manifest: Manifest) -> list[str]:
    """Key groups with a ground-truth ``vol_<key>`` column (region columns ``vol_r<label>``
    excluded)."""
    first = manifest.visits[0].extra if len(manifest) else {}
    return [c[4:] for c in first if c.startswith("vol_") and not _REGION_COLUMN.match(c)]


def summarize_cohort(manifest: Manifest) -> CohortSummary:
    """Subjects per baseline diagnosis, visits, follow-up, conversions and mean annual change.

    The annual change of a subject is ``100 · ((V_last / V_first) ** (1 / years) − 1)`` from the
    ground-truth ``vol_<key>`` columns.

    Raises:
        ManifestError: when the manifest has no ground-truth volume columns.
    """
    groups = key_group_columns(manifest)
    if not groups:
        raise ManifestError(f"{manifest.path or 'manifest'}: no ground-truth vol_<group> columns; "
                            "summaries need a cohort written by `mambacontrol synth`")
    by_subject = manifest.by_subject()
    rows = []
    for dx in DIAGNOSES:
        members = [vs for vs in by_subject.values() if vs[0].diagnosis == dx]
        changes: dict[str, list[float]] = {g: [] for g in groups}
        years = []
        for vs in members:
            span = vs[-1].age - vs[0].age
            years.append(span)
            for g in groups:
                first, last = float(vs[0].extra[f"vol_{g}"]), float(vs[-1].extra[f"vol_{g}"])
                if span > 0 and first > 0:
                    changes[g].append(percent_change((last / first) ** (1.0 / span)))
        rows.append(DiagnosisSummary(
            dx, len(members), sum(len(vs) for vs in members),
            float(np.mean(years)) if years else 0.0,
            sum(vs[-1].diagnosis != vs[0].diagnosis for vs in members),
            {g: float(np.mean(c)) if c else float("nan") for g, c in changes.items()}))
    splits = {s: len(manifest.select(s).subjects()) for s in SPLITS}
    return CohortSummary(len(by_subject), len(manifest), len(manifest.pairs()),
                         splits, groups, rows)


def _cell(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:+.2f}"


def format_summary(summary: CohortSummary) -> str:
    """The summary as a plain-text table."""
    split_text = ", ".join(f"{s} {n}" for s, n in summary.splits.items())
    lines = [f"cohort: {summary.subjects} subjects, {summary.visits} visits, {summary.pairs} visit "
             f"pairs ({split_text} subjects)",
             "true regional change, % per year (mean over subjects, first to last visit), by "
             "baseline diagnosis:"]
    names = [g.replace("_", " ") for g in summary.groups]
    widths = [max(9, len(n)) for n in names]
    header = f"  {'diagnosis':<9} {'subjects':>8} {'visits':>6} {'years':>5} {'converted':>9}"
    lines.append(header + "".join(f"  {n:>{w}}" for n, w in zip(names, widths)))
    for r in summary.rows:
        cells = "".join(f"  {_cell(r.annual_change[g]):>{w}}"
                        for g, w in zip(summary.groups, widths))
        lines.append(f"  {r.diagnosis:<9} {r.subjects:>8} {r.visits:>6} {r.mean_years:>5.1f} "
                     f"{r.converted:>9}" + cells)
    return "\n".join(lines)
