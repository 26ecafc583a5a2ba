"""Per-pair results → mean ± sd overall, by baseline diagnosis and by Δt bin.

Statistics skip NaN values (a pair with no true change has no change MAE); each carries its count
``n``. The standard deviation is the sample one (``ddof = 1``) and is ``None`` for fewer than two
values. Δt bins are half-open on the left, ``(lo, hi]`` years: :data:`YEAR_BINS`.

Statistic keys: the voxel metrics of :data:`metrics.METRICS` and, per key group, ``vol_err_<group>``
(absolute volume change error, % of baseline volume).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from mambacontrol.data.manifest import DIAGNOSES
from mambacontrol.evaluation.metrics import METRICS, VOLUME_ERROR, MetricSpec, VolumeChange
from mambacontrol.evaluation.records import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    REFERENCE_KINDS,
    PairResult,
    method_kind,
)

YEAR_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 1.0, "≤1 y"), (1.0, 2.0, "1–2 y"), (2.0, 4.0, "2–4 y"), (4.0, math.inf, ">4 y"))
"""Δt bins ``(lo, hi, label)``: a pair falls in the bin with ``lo < years ≤ hi``."""

VOLUME_PREFIX = "vol_err_"
CHANGE_METRICS = ("change_mae", "change_dice")
"""Voxel metrics that judge the predicted change (the ones a model must win against copying)."""
RATIO_MIN_TRUE_PCT = 0.01
"""Below this mean true % change a change ratio is not reported (it would divide by ~0)."""


def years_bin(years: float) -> str:
    """The label of the Δt bin holding ``years`` (> 0)."""
    for lo, hi, label in YEAR_BINS:
        if lo < years <= hi:
            return label
    raise ValueError(f"years={years}: a pair's Δt must be > 0")


def describe(values: Iterable[float]) -> dict[str, float | int | None]:
    """``{"mean", "sd", "n"}`` of the finite values; ``mean`` is None when there are none."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(arr.size)
    return {"mean": float(arr.mean()) if n else None,
            "sd": float(arr.std(ddof=1)) if n > 1 else None,
            "n": n}


def volume_key(group: str) -> str:
    """The statistic key of a key group's absolute volume change error."""
    return f"{VOLUME_PREFIX}{group}"


def metric_spec(key: str) -> MetricSpec:
    """How to show a statistic key (a voxel metric or ``vol_err_<group>``)."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith(VOLUME_PREFIX):
        group = key[len(VOLUME_PREFIX):].replace("_", " ")
        return MetricSpec(f"{group[:1].upper()}{group[1:]} volume error", VOLUME_ERROR.unit, False,
                          VOLUME_ERROR.description, VOLUME_ERROR.digits)
    raise KeyError(key)


def pair_values(result: PairResult) -> dict[str, float]:
    """One result's statistics: its voxel metrics and ``vol_err_<group>`` = ``|error_pct|``."""
    values = dict(result.metrics)
    values.update({volume_key(g): abs(c.error_pct) for g, c in result.groups.items()})
    return values


def order_methods(methods: Iterable[str]) -> list[str]:
    """Models in first-seen order, then copy-baseline, linear extrapolation, the trajectory heads
    and the autoencoder ceilings (each in first-seen order), measurement floor."""
    seen = list(dict.fromkeys(methods))
    heads = [m for m in seen if method_kind(m) == "head"]
    ceilings = [m for m in seen if method_kind(m) == "ceiling"]
    fixed = [COPY_BASELINE, LINEAR_BASELINE, *heads, *ceilings, MEASUREMENT_FLOOR]
    return [m for m in seen if m not in fixed] + [m for m in fixed if m in seen]


def _stats(results: Sequence[PairResult], keys: Sequence[str]) -> dict[str, dict]:
    rows = [pair_values(r) for r in results]
    return {k: describe(row.get(k, math.nan) for row in rows) for k in keys}


def _change_stats(changes: Sequence[VolumeChange]) -> dict[str, dict]:
    out = {"abs_error_pct": describe(abs(c.error_pct) for c in changes),
           "signed_error_pct": describe(c.error_pct for c in changes),
           "true_change_pct": describe(c.true_pct for c in changes),
           "pred_change_pct": describe(c.pred_pct for c in changes)}
    out["change_ratio"] = change_ratio(out["pred_change_pct"]["mean"],
                                       out["true_change_pct"]["mean"])
    return out


def change_ratio(pred_mean: float | None, true_mean: float | None) -> float | None:
    """Mean predicted over mean true % change: the fraction of the true change a method
    predicts (1 = the right size, 0 = none); None when the true change is below 0.01 %."""
    if pred_mean is None or true_mean is None or abs(true_mean) < RATIO_MIN_TRUE_PCT:
        return None
    return pred_mean / true_mean


def summarize(results: Sequence[PairResult]) -> dict:
    """Aggregate results of any number of methods on the same pairs.

    Returns:
        A JSON-able dict (NaN appears only as ``None``)::

            methods        [names]        models, then baselines, then the floor
            method_kinds   {method: "model" | "baseline" | "head" | "ceiling" | "floor"}
            keys           [statistic keys, display order]
            n_pairs        {method: count}
            overall        {method: {key: {mean, sd, n}}}
            by_diagnosis   {method: {CN|MCI|AD: {key: {mean, sd, n}}}}
            by_years       {method: {bin label: {key: {mean, sd, n}}}}
            key_groups     {method: {group: {abs_error_pct, signed_error_pct,
                                             true_change_pct, pred_change_pct,
                                             change_ratio}}}
            regions        {method: {label (str): same five statistics}}
    """
    methods = order_methods(r.method for r in results)
    groups = list(dict.fromkeys(g for r in results for g in r.groups))
    keys = [k for k in METRICS if any(k in r.metrics for r in results)]
    keys += [volume_key(g) for g in groups]
    out: dict = {"methods": methods, "method_kinds": {m: method_kind(m) for m in methods},
                 "keys": keys, "n_pairs": {}, "overall": {}, "by_diagnosis": {}, "by_years": {},
                 "key_groups": {}, "regions": {}}
    for m in methods:
        mine = [r for r in results if r.method == m]
        out["n_pairs"][m] = len(mine)
        out["overall"][m] = _stats(mine, keys)
        dxs = [d for d in DIAGNOSES if any(r.pair.diagnosis == d for r in mine)]
        dxs += sorted({r.pair.diagnosis for r in mine} - set(dxs))
        out["by_diagnosis"][m] = {d: _stats([r for r in mine if r.pair.diagnosis == d], keys)
                                  for d in dxs}
        out["by_years"][m] = {label: _stats(sub, keys) for _, _, label in YEAR_BINS
                              if (sub := [r for r in mine if years_bin(r.pair.years) == label])}
        out["key_groups"][m] = {g: _change_stats([r.groups[g] for r in mine if g in r.groups])
                                for g in groups}
        labels = sorted({lab for r in mine for lab in r.regions})
        out["regions"][m] = {str(lab): _change_stats([r.regions[lab] for r in mine
                                                      if lab in r.regions]) for lab in labels}
    return out


def best_methods(summary: dict, key: str) -> list[str]:
    """The methods (models and baselines, not the references: ceiling and floor) with the best
    mean for ``key``; ties all win, and there is none when no method has a value."""
    spec = metric_spec(key)
    means = {m: summary["overall"][m].get(key, {}).get("mean") for m in summary["methods"]
             if summary["method_kinds"][m] not in REFERENCE_KINDS}
    means = {m: v for m, v in means.items() if v is not None}
    if not means:
        return []
    best = max(means.values()) if spec.higher_is_better else min(means.values())
    return [m for m, v in means.items() if math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15)]


def compare_with(summary: dict, reference: str = COPY_BASELINE) -> list[dict]:
    """Each model against a reference method on the change metrics and key-group volume errors.

    Args:
        summary: from :func:`summarize`.
        reference: the method to compare with (the copy-baseline by default).

    Returns:
        One dict per (model, key) where both have a mean: ``model``, ``key``, ``model_mean``,
        ``reference_mean``, ``beats`` (strictly better in the metric's direction). Empty when the
        reference was not evaluated.
    """
    if reference not in summary["overall"]:
        return []
    ref = summary["overall"][reference]
    keys = [k for k in summary["keys"] if k in CHANGE_METRICS or k.startswith(VOLUME_PREFIX)]
    rows = []
    for m in summary["methods"]:
        if summary["method_kinds"][m] != "model":
            continue
        for k in keys:
            mine, theirs = summary["overall"][m].get(k, {}).get("mean"), ref.get(k, {}).get("mean")
            if mine is None or theirs is None:
                continue
            better = mine > theirs if metric_spec(k).higher_is_better else mine < theirs
            rows.append({"model": m, "key": k, "model_mean": mine, "reference_mean": theirs,
                         "beats": bool(better)})
    return rows
