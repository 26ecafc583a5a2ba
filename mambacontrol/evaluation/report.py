"""report.html: one self-contained page (inline CSS, figures as base64 PNG) for a
clinician-researcher.

The page is rendered by Jinja2 from ``templates/report.html.j2`` with autoescaping on, so every
string that comes from the user (subject and scan ids, method names, paths, the command) is
HTML-escaped. It holds: a verdict against the copy-baseline in plain words, how to read the page,
the summary table (best per column marked), the measurement floor, regional volume errors, the
breakdown by diagnosis and by Δt, error against Δt, slices of a few pairs, definitions, and the
provenance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2

from mambacontrol.data.manifest import DIAGNOSES
from mambacontrol.evaluation import figures
from mambacontrol.evaluation.aggregate import (
    CHANGE_METRICS,
    VOLUME_PREFIX,
    YEAR_BINS,
    best_methods,
    compare_with,
    metric_spec,
)
from mambacontrol.evaluation.baselines import LinearRates
from mambacontrol.evaluation.figures import SlicePanel
from mambacontrol.evaluation.records import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    PairResult,
)
from mambacontrol.io.atomic import write_text_atomic

DEFAULT_TITLE = "mambacontrol evaluation report"

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("mambacontrol.evaluation", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _cell(stat: Mapping | None, digits: int) -> dict:
    """A table cell: the mean and, when there is one, the sd."""
    stat = stat or {}
    mean, sd = stat.get("mean"), stat.get("sd")
    return {"mean": _fmt(mean, digits), "sd": None if sd is None else _fmt(sd, digits),
            "best": False}


SECTIONS = {"image": "Whole image", "change": "Change",
            "volume": "Regional volume change error (% of baseline volume)"}


def _section(key: str) -> str:
    if key.startswith(VOLUME_PREFIX):
        return "volume"
    return "change" if key in CHANGE_METRICS else "image"


def _headers(keys: Sequence[str]) -> list[dict]:
    """Column headings: ``short`` is the label under a section heading (the structure's name for
    volume errors)."""
    out = []
    for k in keys:
        spec = metric_spec(k)
        section = _section(k)
        out.append({"key": k, "label": spec.label, "unit": spec.unit, "section": section,
                    "short": _structure(k) if section == "volume" else
                    spec.label + (f" ({spec.unit})" if spec.unit else ""),
                    "direction": "higher is better" if spec.higher_is_better else "lower is better",
                    "arrow": "↑" if spec.higher_is_better else "↓",
                    "description": spec.description})
    return out


def _sections(headers: Sequence[dict]) -> list[dict]:
    """Runs of consecutive columns of one section: ``{"label", "span"}``."""
    out: list[dict] = []
    for h in headers:
        if out and out[-1]["key"] == h["section"]:
            out[-1]["span"] += 1
        else:
            out.append({"key": h["section"], "label": SECTIONS[h["section"]], "span": 1})
    return out


def summary_table(summary: dict) -> dict:
    """Rows of methods × statistics (mean ± sd), the best mean per column marked."""
    keys = summary["keys"]
    best = {k: set(best_methods(summary, k)) for k in keys}
    rows = []
    for m in summary["methods"]:
        cells = []
        for k in keys:
            c = _cell(summary["overall"][m].get(k), metric_spec(k).digits)
            c["best"] = m in best[k]
            cells.append(c)
        rows.append({"method": m, "kind": summary["method_kinds"][m],
                     "n": summary["n_pairs"][m], "cells": cells})
    headers = _headers(keys)
    return {"headers": headers, "sections": _sections(headers), "rows": rows}


def breakdown_table(summary: dict, by: str) -> dict:
    """Means of the change metrics and volume errors per subgroup
    (``by_diagnosis``/``by_years``)."""
    keys = [k for k in summary["keys"] if k in CHANGE_METRICS or k.startswith(VOLUME_PREFIX)]
    order = [label for _, _, label in YEAR_BINS] if by == "by_years" else None
    subgroups = list(dict.fromkeys(s for m in summary["methods"] for s in summary[by][m]))
    if order:
        subgroups = [s for s in order if s in subgroups]
    rows = []
    for s in subgroups:
        block = []
        for m in summary["methods"]:
            stats = summary[by][m].get(s)
            if not stats:
                continue
            n = max((v["n"] for v in stats.values()), default=0)
            block.append({"group": s, "method": m, "kind": summary["method_kinds"][m], "n": n,
                          "span": 0,
                          "cells": [_cell(stats.get(k), metric_spec(k).digits) for k in keys]})
        if block:
            block[0]["span"] = len(block)
        rows += block
    headers = _headers(keys)
    return {"headers": headers, "sections": _sections(headers), "rows": rows}


def region_table(summary: dict, region_names: Mapping[int, str] | None) -> dict:
    """Every region: mean true change and each method's mean absolute error (% of baseline)."""
    methods = summary["methods"]
    reference = next((m for m in methods if summary["method_kinds"][m] != "floor"), None)
    if reference is None:
        return {"methods": methods, "rows": []}
    regions = summary["regions"][reference]
    order = sorted(regions, key=lambda lab: -abs(regions[lab]["true_change_pct"]["mean"] or 0.0))
    rows = []
    for lab in order:
        rows.append({"label": lab, "name": (region_names or {}).get(int(lab), ""),
                     "true": _fmt(regions[lab]["true_change_pct"]["mean"], 2),
                     "errors": [_fmt(summary["regions"][m].get(lab, {}).get("abs_error_pct", {})
                                     .get("mean"), 2) for m in methods]})
    return {"methods": methods, "rows": rows}


def verdict(summary: dict) -> list[dict]:
    """Plain sentences on each model against the copy-baseline, one entry per model:
    ``{"level": "ok" | "warn", "method", "text"}``."""
    models = [m for m in summary["methods"] if summary["method_kinds"][m] == "model"]
    if not models:
        return [{"level": "warn", "method": "",
                 "text": "No model was evaluated: the tables compare the baselines only."}]
    comparisons = compare_with(summary, COPY_BASELINE)
    against_linear = compare_with(summary, LINEAR_BASELINE)
    if not comparisons:
        return [{"level": "warn", "method": "",
                 "text": "The copy-baseline was not evaluated, so no model can be judged "
                         "against it on the change metrics."}]
    floor = summary["overall"].get(MEASUREMENT_FLOOR, {})
    out = []
    for m in models:
        mine = [c for c in comparisons if c["model"] == m]
        change = [c for c in mine if c["key"] in CHANGE_METRICS]
        volume = [c for c in mine if c["key"].startswith(VOLUME_PREFIX)]
        lost = [c for c in change if not c["beats"]]
        sentences = []
        if lost:
            sentences.append(
                f"does NOT beat copying the baseline on {_listing(lost)}. A model that does not "
                "beat copy-baseline on the change metrics has not learned progression, whatever "
                "its PSNR says.")
        elif change:
            sentences.append(f"beats copying the baseline on every change metric: "
                             f"{_listing(change)}.")
        if volume:
            worse = [c for c in volume if not c["beats"]]
            text = (f"{'Its regional' if sentences else 'has regional'} volume change closer to "
                    f"the truth than copy-baseline's in {len(volume) - len(worse)} of "
                    f"{len(volume)} key structures")
            if worse:
                text += " (not in " + ", ".join(_structure(c["key"]) for c in worse) + ")"
            blurred = [c for c in volume if abs(c["model_mean"] - c["reference_mean"])
                       < (floor.get(c["key"], {}).get("mean") or 0.0)]
            if blurred:
                text += ("; the difference is smaller than the measurement floor, so not "
                         "resolved, in " + ", ".join(_structure(c["key"]) for c in blurred))
            sentences.append(text + ".")
        linear = [c for c in against_linear
                  if c["model"] == m and c["key"].startswith(VOLUME_PREFIX)]
        if linear:
            won = sum(c["beats"] for c in linear)
            sentences.append(f"Against the linear extrapolation of population rates it is better "
                             f"in {won} of {len(linear)} key structures"
                             + (": it adds nothing over population rates there." if won == 0
                                else "."))
        behind = (lost or any(not c["beats"] for c in volume)
                  or (linear and not any(c["beats"] for c in linear)))
        out.append({"level": "warn" if behind else "ok", "method": m, "text": " ".join(sentences)})
    return out


def _listing(comparisons: Sequence[dict]) -> str:
    return ", ".join(f"{metric_spec(c['key']).label} ({_fmt(c['model_mean'], 3)} vs "
                     f"{_fmt(c['reference_mean'], 3)})" for c in comparisons)


def _structure(key: str) -> str:
    return key[len(VOLUME_PREFIX):].replace("_", " ")


def floor_rows(summary: dict) -> list[dict]:
    """The measurement floor per key group: its mean absolute and signed error, and the mean true
    change it is measured against (all % of baseline volume)."""
    if MEASUREMENT_FLOOR not in summary["key_groups"]:
        return []
    rows = []
    for g, s in summary["key_groups"][MEASUREMENT_FLOOR].items():
        rows.append({"group": g.replace("_", " "),
                     "floor": _fmt(s["abs_error_pct"]["mean"], 2),
                     "floor_sd": _fmt(s["abs_error_pct"]["sd"], 2),
                     "bias": _fmt(s["signed_error_pct"]["mean"], 2),
                     "true_change": _fmt(s["true_change_pct"]["mean"], 2)})
    return rows


def ratio_table(summary: dict) -> dict | None:
    """Per key group, the mean true change and each method's change ratio (mean predicted over
    mean true change: 1 is the right size), references (ceiling, floor) included."""
    methods = [m for m in summary["methods"] if summary["key_groups"][m]]
    if not methods:
        return None
    groups = list(dict.fromkeys(g for m in methods for g in summary["key_groups"][m]))
    rows = []
    for g in groups:
        true = next((summary["key_groups"][m][g]["true_change_pct"]["mean"] for m in methods
                     if g in summary["key_groups"][m]), None)
        rows.append({"group": g.replace("_", " "), "true_change": _fmt(true, 2),
                     "ratios": [_fmt(summary["key_groups"][m].get(g, {}).get("change_ratio"), 2)
                                for m in methods]})
    return {"methods": [{"name": m, "kind": summary["method_kinds"][m]} for m in methods],
            "rows": rows}


def rates_table(rates: LinearRates | None) -> dict | None:
    """Key-group population rates (%/year) per diagnosis, for the methods section."""
    if rates is None or not rates.group_rates:
        return None
    dxs = [d for d in DIAGNOSES if d in rates.group_rates]
    dxs += sorted(set(rates.group_rates) - set(dxs))
    groups = list(dict.fromkeys(g for r in rates.group_rates.values() for g in r))
    return {"diagnoses": [{"name": d, "n": rates.n_pairs.get(d, 0)} for d in dxs],
            "rows": [{"group": g.replace("_", " "),
                      "rates": [_fmt(rates.group_rates[d].get(g), 2) for d in dxs]}
                     for g in groups],
            "source": rates.source}


def render_report(summary: dict, results: Sequence[PairResult], *, provenance: Mapping,
                  panels: Sequence[SlicePanel] = (), region_names: Mapping[int, str] | None = None,
                  linear_rates: LinearRates | None = None,
                  settings: Mapping[str, object] | None = None, title: str = DEFAULT_TITLE,
                  top_regions: int = 20) -> str:
    """The report as one HTML string.

    Args:
        summary: from :func:`aggregate.summarize` over ``results``.
        results: every method's per-pair results (for the error-vs-Δt figure).
        provenance: from :func:`provenance.collect_provenance`.
        panels: pairs to show as slices (a few: each adds a figure).
        region_names: label → region name (``{r.label: r.name for r in atlas.regions}``).
        linear_rates: the fitted linear extrapolation, to show its rates.
        settings: evaluation settings to list (threshold τ, SSIM window, samples, ...).
        title: page title.
        top_regions: regions shown in the per-region chart (all are in the table and regions.csv).
    """
    keys = summary["keys"]
    has_regions = any(summary["regions"][m] for m in summary["methods"])
    context = {
        "title": title,
        "summary": summary,
        "n_pairs": max(summary["n_pairs"].values(), default=0),
        "n_subjects": len({r.pair.subject_id for r in results}),
        "verdict": verdict(summary),
        "table": summary_table(summary),
        "by_diagnosis": breakdown_table(summary, "by_diagnosis"),
        "by_years": breakdown_table(summary, "by_years"),
        "floor": floor_rows(summary),
        "ratios": ratio_table(summary),
        "ceilings": [m for m in summary["methods"] if summary["method_kinds"][m] == "ceiling"],
        "heads": [m for m in summary["methods"] if summary["method_kinds"][m] == "head"],
        "regions": region_table(summary, region_names) if has_regions else None,
        "rates": rates_table(linear_rates),
        "has_linear": LINEAR_BASELINE in summary["methods"],
        "linear_exact": linear_rates is not None and not linear_rates.measured,
        "has_copy": COPY_BASELINE in summary["methods"],
        "figures": _figures(summary, results, region_names, top_regions),
        "top_regions": top_regions,
        "panels": [{"pair": p.pair, "method": p.method, "slice": p.coronal_index(),
                    "uncertainty": p.uncertainty is not None,
                    "image": figures.data_uri(figures.slice_figure(p))} for p in panels],
        "year_bins": [label for _, _, label in YEAR_BINS],
        "definitions": [h for h in _headers(keys) if h["section"] != "volume"],
        "volume_groups": [_structure(k) for k in keys if k.startswith(VOLUME_PREFIX)],
        "settings": {str(k): str(v) for k, v in (settings or {}).items()},
        "provenance": provenance,
        "copy_name": COPY_BASELINE, "linear_name": LINEAR_BASELINE, "floor_name": MEASUREMENT_FLOOR,
    }
    return _ENV.get_template("report.html.j2").render(**context)


def _figures(summary: dict, results: Sequence[PairResult],
             region_names: Mapping[int, str] | None, top_regions: int) -> dict[str, str | None]:
    """The report's charts as data URIs (None where there is nothing to draw)."""
    keys = summary["keys"]
    has_groups = any(summary["key_groups"][m] for m in summary["methods"])
    has_regions = any(summary["regions"][m] for m in summary["methods"])
    trend_keys = [k for k in ("change_mae", "change_dice") if k in keys]
    trend_keys += [k for k in (f"{VOLUME_PREFIX}hippocampus", f"{VOLUME_PREFIX}whole_brain")
                   if k in keys] or [k for k in keys if k.startswith(VOLUME_PREFIX)][:1]
    return {
        "groups": (figures.data_uri(figures.key_group_error_chart(summary)) if has_groups
                   else None),
        "regions": (figures.data_uri(figures.region_error_chart(summary, region_names,
                                                                top_regions))
                    if has_regions else None),
        "trend": (figures.data_uri(figures.error_vs_years_chart(results, trend_keys,
                                                                summary["methods"]))
                  if trend_keys and results else None),
    }


def write_report(path: str | os.PathLike, html: str) -> Path:
    """Write the report atomically."""
    return write_text_atomic(path, html)
