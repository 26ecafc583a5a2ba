"""The machine-readable outputs of an evaluation: metrics.json, pairs.csv and regions.csv.

Every file is written atomically through ``mambacontrol.io.tables``: NaN and ±∞ become JSON
``null`` and empty CSV cells, and text cells that a spreadsheet would run as a formula are quoted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from mambacontrol.evaluation.aggregate import YEAR_BINS, metric_spec, order_methods, years_bin
from mambacontrol.evaluation.metrics import METRICS
from mambacontrol.evaluation.records import PairResult, method_kind
from mambacontrol.io.tables import write_csv, write_json

PAIR_COLUMNS = ("subject_id", "baseline_uid", "followup_uid", "diagnosis", "sex", "age", "years",
                "years_bin", "method", "method_kind")
REGION_COLUMNS = ("method", "method_kind", "kind", "region", "name", "n_pairs",
                  "true_change_pct_mean", "pred_change_pct_mean", "signed_error_pct_mean",
                  "abs_error_pct_mean", "abs_error_pct_sd", "change_ratio")


def definitions(summary: dict) -> dict:
    """What each statistic key and Δt bin means, for the reader of metrics.json."""
    keys = {}
    for k in summary["keys"]:
        spec = metric_spec(k)
        keys[k] = {"label": spec.label, "unit": spec.unit,
                   "higher_is_better": spec.higher_is_better, "description": spec.description}
    return {"statistics": keys,
            "years_bins": [{"label": label, "above": lo, "up_to": None if math.isinf(hi) else hi}
                           for lo, hi, label in YEAR_BINS],
            "method_kinds": {"model": "a trained model", "baseline": "a reference method",
                             "head": "a model's trajectory head: the regional change its graph "
                                     "head predicts before any image is made, applied to the "
                                     "earlier scan's measured volumes (volumes only)",
                             "ceiling": "the true follow-up pushed through a model's "
                                        "representation (autoencoder) and decoded as its "
                                        "predictions are: the most that model could predict",
                             "floor": "the true follow-up measured by registration against the "
                                      "exact ground truth (the measurement's own error)"},
            "change_ratio": "mean predicted % change / mean true % change of a key group or "
                            "region: the fraction of the true change predicted (1 = its size)"}


def write_metrics_json(path: str | os.PathLike, summary: dict, **sections) -> Path:
    """Write ``{"definitions", "summary", **sections}`` (e.g. ``provenance=``, ``settings=``,
    ``linear_rates=``) as indented JSON."""
    doc = {"definitions": definitions(summary), "summary": summary, **sections}
    return write_json(path, doc)


def write_pairs_csv(path: str | os.PathLike, results: Sequence[PairResult]) -> Path:
    """One row per pair and method: the pair, the voxel metrics, and per key group the true and
    predicted change and the signed error (% of baseline volume). Empty cells: not measured."""
    metric_keys = [k for k in METRICS if any(k in r.metrics for r in results)]
    groups = list(dict.fromkeys(g for r in results for g in r.groups))
    header = list(PAIR_COLUMNS) + metric_keys
    for g in groups:
        header += [f"true_change_pct_{g}", f"pred_change_pct_{g}", f"error_pct_{g}"]
    rank = {m: i for i, m in enumerate(order_methods(r.method for r in results))}
    rows = []
    for r in sorted(results, key=lambda r: (r.pair.subject_id, r.pair.baseline_uid,
                                            r.pair.followup_uid, rank[r.method])):
        p = r.pair
        row = [p.subject_id, p.baseline_uid, p.followup_uid, p.diagnosis, p.sex, p.age, p.years,
               years_bin(p.years), r.method, r.kind]
        row += [r.metrics.get(k) for k in metric_keys]
        for g in groups:
            c = r.groups.get(g)
            row += [c.true_pct, c.pred_pct, c.error_pct] if c else [None] * 3
        rows.append(row)
    return write_csv(path, header, rows, float_format=".6g")


def write_regions_csv(path: str | os.PathLike, summary: dict,
                      region_names: Mapping[int, str] | None = None) -> Path:
    """Per region and per method (key groups first): mean true and predicted change, mean signed
    and absolute error (% of baseline volume), over the pairs, and their change ratio."""
    names = region_names or {}
    rows = []
    for m in summary["methods"]:
        entries = [("key_group", g, g.replace("_", " "), s)
                   for g, s in summary["key_groups"][m].items()]
        entries += [("region", lab, names.get(int(lab), ""), s)
                    for lab, s in summary["regions"][m].items()]
        for kind, region, name, s in entries:
            rows.append([m, method_kind(m), kind, region, name, s["abs_error_pct"]["n"],
                         s["true_change_pct"]["mean"], s["pred_change_pct"]["mean"],
                         s["signed_error_pct"]["mean"], s["abs_error_pct"]["mean"],
                         s["abs_error_pct"]["sd"], s["change_ratio"]])
    return write_csv(path, REGION_COLUMNS, rows, float_format=".6g")
