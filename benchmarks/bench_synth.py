"""Speed, fidelity and baseline signal of the synthetic cohort generator.

Times ``generate_cohort`` (wall clock, CPU of this process and its workers, load average) and
summarises the fidelity checks the generator records in ``cohort.json``: realised vs prescribed
regional change (Jacobian integral), the partial-volume cross-check, folding, and how little a
nearest-neighbour label count sees of the change. Then the baseline signal: within each baseline
diagnosis, how a baseline volume deficit (relative to head size) correlates with the subject's
future annual rate, plain and with age partialled out (``--no-history`` for a cohort whose
baselines carry no pre-baseline atrophy, for comparison).

``--dynamics`` picks the generator's dynamics (default ``network``); for a network cohort the
results also hold its subtypes, and per baseline diagnosis and subtype the disease extent and the
hippocampal rate at baseline and at the last visit (``network``). ``--ceiling N`` writes no
cohort: it draws N network subjects' dynamics and measures, free of images and training, how much
a region's grey-matter neighbours, and the whole brain's pattern, add to predicting its change
(:func:`spread_ceiling`; ``--shape-sd`` sets how much anatomy hides the disease in a volume).

    python benchmarks/bench_synth.py --subjects 20 --visits 3 --spacing 2 --workers 2
    python benchmarks/bench_synth.py --subjects 80 --visits 2-5 --spacing 4 --workers 2
    python benchmarks/bench_synth.py --subjects 80 --visits 2-5 --spacing 2 --workers 1 --seed 1 \\
        --dynamics independent --out runs/ind80_2mm_s1
    python benchmarks/bench_synth.py --ceiling 400 --spacing 2 --seed 7 --shape-sd 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.cli.synth_cmd import parse_visits
from mambacontrol.data import DIAGNOSES, Manifest
from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.graph.trajectory import prior_design
from mambacontrol.io import load_nifti
from mambacontrol.synth import (
    CohortDesign,
    SynthConfig,
    format_summary,
    generate_cohort,
    grid_for_spacing,
    summarize_cohort,
)
from mambacontrol.synth.plan import plan_cohort
from mambacontrol.synth.rates import RateModel
from mambacontrol.synth.simulate import GridContext
from mambacontrol.synth.spread import draw_network_rates

SIGNAL_GROUPS = ("hippocampus", "amygdala", "entorhinal", "lateral_ventricles", "whole_brain")


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pre_baseline_checks(meta: dict) -> dict:
    """The pre-baseline histories in ``cohort.json``: steps, their checks, realised vs
    prescribed."""
    histories = [s["pre_baseline"] for s in meta["subjects"]]
    rel = [abs(c["realised"] - c["prescribed"]) / abs(c["prescribed"])
           for h in histories for c in h["change_pct"].values() if c["prescribed"]]
    out = {"steps_mean": float(np.mean([h["steps"] for h in histories])),
           "steps_max": max(h["steps"] for h in histories),
           "max_gradient_norm": max(h["max_gradient_norm"] for h in histories),
           "key_group_change_max_rel_error": max(rel) if rel else 0.0, "by_diagnosis": {}}
    for dx in DIAGNOSES:
        sel = [s for s in meta["subjects"] if s["baseline_diagnosis"] == dx]
        if sel:
            out["by_diagnosis"][dx] = {
                "years_mean": {stage: float(np.mean([s["pre_baseline"]["years"].get(stage, 0.0)
                                                     for s in sel])) for stage in DIAGNOSES},
                "change_pct_mean": {
                    key: float(np.mean([s["pre_baseline"]["change_pct"][key]["realised"]
                                        for s in sel]))
                    for key in sel[0]["pre_baseline"]["change_pct"]}}
    return out


def fidelity(meta: dict) -> dict:
    """Fidelity figures over every follow-up visit in ``cohort.json``, overall and by diagnosis."""
    rows = [(s["baseline_diagnosis"], v) for s in meta["subjects"] for v in s["visits"][1:]]
    out: dict = {"follow_up_visits": len(rows),
                 "min_jacobian": min(v["min_jacobian"] for s in meta["subjects"]
                                     for v in s["visits"]),
                 "max_gradient_norm": max(v["max_gradient_norm"] for _, v in rows),
                 "max_inverse_step_voxels": max(v["inverse_step_voxels"] for _, v in rows),
                 "regions_checked": rows[0][1]["regions_checked"],
                 "follow_up_steps_mean": float(np.mean([v["steps"] for _, v in rows])),
                 "pre_baseline": pre_baseline_checks(meta), "by_diagnosis": {}}
    for dx in DIAGNOSES:
        sel = [v for d, v in rows if d == dx]
        if not sel:
            continue
        entry = {"visits": len(sel),
                 "realised_vs_prescribed_max_rel_error": max(
                     v["realised_vs_prescribed_max_rel_error"] for v in sel),
                 "pv_rel_error_median": float(np.median([v["pv_vs_jacobian_rel_error"]["median"]
                                                         for v in sel])),
                 "pv_rel_error_p90": float(np.median([v["pv_vs_jacobian_rel_error"]["p90"]
                                                      for v in sel])),
                 "pv_rel_error_max": max(v["pv_vs_jacobian_rel_error"]["max"] for v in sel),
                 "key_groups": {}}
        for key in sel[0]["change_pct"]:
            per_year = {w: float(np.mean([v["change_pct"][key][w] / v["years"] for v in sel]))
                        for w in ("prescribed", "realised", "partial_volume")}
            entry["key_groups"][key] = per_year
        out["by_diagnosis"][dx] = entry
    return out


def label_count_blindness(manifest: Manifest, key_labels: list[int]) -> dict:
    """Change seen by counting nearest-neighbour label voxels vs the true change, first to last
    visit."""
    seen, truth = [], []
    for visits in manifest.by_subject().values():
        first, last = visits[0], visits[-1]
        counts = [np.isin(load_nifti(v.segm_path, labels=True).data, key_labels).sum()
                  for v in (first, last)]
        seen.append(100.0 * (counts[1] / counts[0] - 1.0))
        truth.append(100.0 * (float(last.extra["vol_hippocampus"])
                              / float(first.extra["vol_hippocampus"]) - 1.0))
    seen_a, truth_a = np.array(seen), np.array(truth)
    return {"true_change_pct_mean": float(truth_a.mean()),
            "label_count_change_pct_mean": float(seen_a.mean()),
            "label_count_abs_error_pct_mean": float(np.abs(seen_a - truth_a).mean()),
            "correlation": float(np.corrcoef(seen_a, truth_a)[0, 1]) if len(seen) > 2
            else float("nan")}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _residual(values: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(covariate), covariate])
    return values - design @ np.linalg.lstsq(design, values, rcond=None)[0]


def baseline_signal(manifest: Manifest, meta: dict, atlas) -> dict:
    """How much a subject's baseline volumes say about its future rate, within baseline diagnosis.

    Per subject and key group: the deficit ``log((V_baseline / ICV) / (V_template / ICV_template))``
    (baseline volume relative to head size, against the template's; ``ICV`` from ``cohort.json``,
    the template's the volume of its brain mask) and the future rate: ``rate_<group>`` (prescribed,
    % per year at the baseline diagnosis) and the realised annual change from first to last visit.
    Returns Pearson's r of deficit and rate within each baseline diagnosis, plain and with age
    partialled out (both regressed on age within the diagnosis), and pooled over diagnoses after
    centring each diagnosis.
    """
    icv = {s["subject_id"]: s["intracranial_volume_mm3"] for s in meta["subjects"]}
    template_icv = float((np.asarray(atlas.mask) > 0.5).sum() * atlas.voxel_volume)
    template = atlas.key_group_volumes()
    rows: dict[str, list] = {dx: [] for dx in DIAGNOSES}
    for visits in manifest.by_subject().values():
        first, last = visits[0], visits[-1]
        years = last.age - first.age
        row = {"age": first.age}
        for key in SIGNAL_GROUPS:
            v0, v1 = float(first.extra[f"vol_{key}"]), float(last.extra[f"vol_{key}"])
            row[f"deficit_{key}"] = float(np.log((v0 / icv[first.subject_id])
                                                 / (template[key] / template_icv)))
            row[f"rate_{key}"] = float(first.extra[f"rate_{key}"])
            row[f"realised_{key}"] = 100.0 * ((v1 / v0) ** (1.0 / years) - 1.0)
        rows[first.diagnosis].append(row)
    out: dict = {"definition": "r(log((V_base/ICV)/(V_template/ICV_template)), future annual % "
                               "change)",
                 "by_diagnosis": {}, "pooled_within_diagnosis": {}}
    centred: dict[str, list[np.ndarray]] = {}
    for dx, sel in rows.items():
        if len(sel) < 3:
            continue
        age = np.array([r["age"] for r in sel])
        entry: dict = {"subjects": len(sel)}
        for key in SIGNAL_GROUPS:
            deficit = np.array([r[f"deficit_{key}"] for r in sel])
            rate = np.array([r[f"rate_{key}"] for r in sel])
            realised = np.array([r[f"realised_{key}"] for r in sel])
            entry[key] = {"r_prescribed_rate": round(_pearson(deficit, rate), 3),
                          "r_realised_rate": round(_pearson(deficit, realised), 3),
                          "partial_r_age": round(_pearson(_residual(deficit, age),
                                                          _residual(rate, age)), 3)
                          if len(sel) >= 5 else float("nan"),
                          "deficit_pct_mean": round(100.0 * float(np.expm1(deficit).mean()), 2)}
            for name, values in (("deficit", deficit), ("rate", rate)):
                centred.setdefault(f"{key}:{name}", []).append(values - values.mean())
        out["by_diagnosis"][dx] = entry
    for key in SIGNAL_GROUPS:
        if f"{key}:deficit" in centred:
            out["pooled_within_diagnosis"][key] = round(_pearson(
                np.concatenate(centred[f"{key}:deficit"]),
                np.concatenate(centred[f"{key}:rate"])), 3)
    return out


PATTERN_COMPONENTS = 10
"""Principal components of the whole regional pattern in :func:`spread_ceiling`'s global mode."""


def spread_ceiling(subjects: int, seed: int, grid: str, shape_sd: float = 0.05,
                   ridge: float = 10.0) -> dict:
    """How much a region's neighbours add to predicting its change, with no images in the way.

    Plans ``subjects`` network subjects (``seed``) and draws their dynamics only (no anatomy,
    no images). Every visit pair gives, at the earlier visit, per region: its true load, and its
    log volume over the reference (pre-baseline plus follow-up log ratio) plus Gaussian shape
    noise of ``shape_sd`` (the anatomy model's spread of a region's volume over head size is
    0.045–0.063); the target is the region's % change to the later visit. Per region, ridge
    regressions of the annual change on the prior design (diagnosis × [1, age]) plus: nothing,
    the region's own input, also the mean of its grey-matter neighbours' (contact graph, one
    hop), or also the whole brain's pattern (its first :data:`PATTERN_COMPONENTS` principal
    components over all regions, fitted on the training pairs: what a global readout, which can
    tell the subject's subtype, could add). Test: every fifth subject. Returns mean absolute
    errors (percentage points) for hippocampus, entorhinal and all regions (the mean over regions
    of each region's error).
    """
    atlas = load_atlas(grid=grid)
    context, config, rate_model = GridContext(atlas), SynthConfig(grid=grid), RateModel()
    graph = context.spread_graph
    grey = np.array([r.tissue == "gm" for r in atlas.regions])
    adjacency = graph.adjacency & grey[None]
    neighbours = adjacency / np.maximum(adjacency.sum(axis=1, keepdims=True), 1)
    noise = np.random.default_rng(seed)
    rows: dict[str, list] = {"train": [], "test": []}
    for plan in plan_cohort(CohortDesign(subjects=subjects), seed):
        effects = rate_model.effects(plan.rng("rates"), plan.baseline_age, plan.sex, atlas.regions)
        rates = draw_network_rates(plan.rng("spread"), effects, graph, config.spread, rate_model,
                                   plan.history, plan.timeline, plan.visit_years[-1], plan.sex,
                                   context.reference_load(config.spread))
        shape = noise.normal(0.0, shape_sd, len(atlas.regions))
        history = rates.log_ratio(plan.history, 0.0)
        years = plan.visit_years
        for k, start in enumerate(years):
            at_start = rates.log_ratio(plan.timeline, start)
            for end in years[k + 1:]:
                change = 100.0 * np.expm1(rates.log_ratio(plan.timeline, end) - at_start)
                rows["test" if plan.index % 5 == 0 else "train"].append(
                    {"volume": shape + history + at_start, "load": rates.load_at(start),
                     "target": change, "age": plan.baseline_age + start, "years": end - start,
                     "sex": plan.sex, "dx": plan.diagnosis_at(start)})

    def arrays(split: str):
        r = rows[split]
        years = np.array([x["years"] for x in r])
        cov = encode_covariates([x["age"] for x in r], years, [x["sex"] for x in r],
                                [x["dx"] for x in r], CovariateNorm())
        design = prior_design(cov.double(), torch.from_numpy(years).double()).numpy()
        return r, np.array([x["target"] for x in r]), years, design

    (tr, y_tr, t_tr, d_tr), (te, y_te, t_te, d_te) = arrays("train"), arrays("test")
    labels = list(atlas.label_ids)
    groups = {"hippocampus": [labels.index(lab) for lab in atlas.key_groups["hippocampus"]],
              "entorhinal": [labels.index(lab) for lab in atlas.key_groups["entorhinal"]]}
    out: dict = {"subjects": subjects, "train_pairs": len(tr), "test_pairs": len(te),
                 "shape_sd": shape_sd}
    for kind in ("load", "volume"):
        f_tr = np.array([x[kind] for x in tr])
        f_te = np.array([x[kind] for x in te])
        mu, sd = f_tr.mean(axis=0), f_tr.std(axis=0) + 1e-9
        z_tr, z_te = (f_tr - mu) / sd, (f_te - mu) / sd
        axes = np.linalg.svd(z_tr, full_matrices=False)[2][:PATTERN_COMPONENTS].T  # z is centred
        pattern_tr, pattern_te = z_tr @ axes, z_te @ axes

        def inputs(z: np.ndarray, pattern: np.ndarray, mode: str, r: int) -> list:
            return {"prior": [], "own": [z[:, r]],
                    "own + neighbours": [z[:, r], z @ neighbours[r]],
                    "own + whole pattern": [z[:, r], pattern]}[mode]

        for mode in ("prior", "own", "own + neighbours", "own + whole pattern"):
            pred = np.zeros_like(y_te)
            for r in range(len(labels)):
                x_tr = np.column_stack([d_tr, *inputs(z_tr, pattern_tr, mode, r)])
                x_te = np.column_stack([d_te, *inputs(z_te, pattern_te, mode, r)])
                penalty = ridge * np.eye(x_tr.shape[1])
                penalty[: d_tr.shape[1], : d_tr.shape[1]] = 1e-6 * np.eye(d_tr.shape[1])
                coef = np.linalg.solve(x_tr.T @ x_tr + penalty, x_tr.T @ (y_tr[:, r] / t_tr))
                pred[:, r] = (x_te @ coef) * t_te
            err = np.abs(pred - y_te)
            entry = {g: round(float(err[:, idx].mean()), 4) for g, idx in groups.items()}
            entry["all_regions"] = round(float(err.mean()), 4)
            out[f"{kind}: {mode}"] = entry
    return out


def network_summary(meta: dict) -> dict:
    """Subtypes, and per baseline diagnosis and subtype: subjects, mean disease extent at baseline,
    mean hippocampal and lateral-ventricle rate at baseline and at the last visit (% per year)."""
    subjects = [s for s in meta["subjects"] if "network" in s]
    out: dict = {"subtypes": {}, "by_diagnosis": {}}
    for s in subjects:
        subtype = s["network"]["subtype"]
        out["subtypes"][subtype] = out["subtypes"].get(subtype, 0) + 1
    for dx in DIAGNOSES:
        for subtype in sorted(out["subtypes"]):
            sel = [s["network"] for s in subjects
                   if s["baseline_diagnosis"] == dx and s["network"]["subtype"] == subtype]
            if not sel:
                continue
            entry = {"subjects": len(sel),
                     "extent_baseline": round(float(np.mean([n["extent"][0] for n in sel])), 3)}
            for key in ("hippocampus", "lateral_ventricles", "whole_brain"):
                entry[f"{key}_rate_baseline"] = round(float(np.mean(
                    [n["annual_change_pct"][0][key] for n in sel])), 3)
                entry[f"{key}_rate_last_visit"] = round(float(np.mean(
                    [n["annual_change_pct"][-1][key] for n in sel])), 3)
            out["by_diagnosis"].setdefault(dx, {})[subtype] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--visits", default="3")
    p.add_argument("--spacing", default="2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="cohort folder (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--no-history", action="store_true",
                   help="baselines without pre-baseline atrophy (for comparison)")
    p.add_argument("--dynamics", default="network", choices=("network", "independent"))
    p.add_argument("--ceiling", type=int, metavar="N",
                   help="only the image-free spread ceiling on N planned network subjects "
                        "(spread_ceiling; no cohort is written)")
    p.add_argument("--shape-sd", type=float, default=0.05,
                   help="with --ceiling: sd of the log-volume noise standing for anatomy "
                        "(default 0.05, the anatomy model's spread; 0: the disease alone)")
    args = p.parse_args()
    if args.ceiling:
        t0 = time.perf_counter()
        result = spread_ceiling(args.ceiling, args.seed, grid_for_spacing(args.spacing),
                                args.shape_sd)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return
    design = CohortDesign(subjects=args.subjects, visits=parse_visits(args.visits),
                          pre_baseline=not args.no_history)
    config = SynthConfig(grid=grid_for_spacing(args.spacing), design=design, dynamics=args.dynamics)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "cohort"
        load_before = os.getloadavg()
        t0, c0 = time.perf_counter(), cpu_seconds()
        manifest = generate_cohort(out, seed=args.seed, workers=args.workers, overwrite=True,
                                   config=config)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        load_after = os.getloadavg()
        meta = json.loads((out / "cohort.json").read_text())
        atlas = load_atlas(meta["atlas"]["id"], meta["atlas"]["grid"])
        result = {
            "command": (f"python benchmarks/bench_synth.py --subjects {args.subjects} --visits "
                        f"{args.visits} --spacing {args.spacing} --workers {args.workers} "
                        f"--seed {args.seed}"
                        + (" --no-history" if args.no_history else "")
                        + f" --dynamics {args.dynamics}"),
            "machine": {"cpus_visible": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                        "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "grid": meta["atlas"]["grid"], "subjects": args.subjects, "visits": len(manifest),
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "fidelity": fidelity(meta),
            "hippocampus_label_count_vs_truth": label_count_blindness(
                manifest, list(atlas.key_groups["hippocampus"])),
            "baseline_signal": baseline_signal(manifest, meta, atlas),
        }
        if args.dynamics == "network":
            result["network"] = network_summary(meta)
        print(json.dumps(result, indent=2))
        print(format_summary(summarize_cohort(manifest)))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
