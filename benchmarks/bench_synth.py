"""Speed and fidelity of the synthetic cohort generator.

Times ``generate_cohort`` (wall clock, CPU of this process and its workers, load average) and
summarises the fidelity checks the generator records in ``cohort.json``: realised vs prescribed
regional change (Jacobian integral), the partial-volume cross-check, folding, and how little a
nearest-neighbour label count sees of the change.

    python benchmarks/bench_synth.py --subjects 20 --visits 3 --spacing 2 --workers 2
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

from mambacontrol.cli.synth_cmd import parse_visits
from mambacontrol.data import DIAGNOSES, Manifest
from mambacontrol.io import load_nifti
from mambacontrol.synth import format_summary, generate_cohort, grid_for_spacing, summarize_cohort


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fidelity(meta: dict) -> dict:
    """Fidelity figures over every follow-up visit in ``cohort.json``, overall and by diagnosis."""
    rows = [(s["baseline_diagnosis"], v) for s in meta["subjects"] for v in s["visits"][1:]]
    out: dict = {"follow_up_visits": len(rows),
                 "min_jacobian": min(v["min_jacobian"] for s in meta["subjects"] for v in s["visits"]),
                 "max_gradient_norm": max(v["max_gradient_norm"] for _, v in rows),
                 "max_inverse_step_voxels": max(v["inverse_step_voxels"] for _, v in rows),
                 "regions_checked": rows[0][1]["regions_checked"], "by_diagnosis": {}}
    for dx in DIAGNOSES:
        sel = [v for d, v in rows if d == dx]
        if not sel:
            continue
        entry = {"visits": len(sel),
                 "realised_vs_prescribed_max_rel_error": max(
                     v["realised_vs_prescribed_max_rel_error"] for v in sel),
                 "pv_rel_error_median": float(np.median([v["pv_vs_jacobian_rel_error"]["median"]
                                                         for v in sel])),
                 "pv_rel_error_p90": float(np.median([v["pv_vs_jacobian_rel_error"]["p90"] for v in sel])),
                 "pv_rel_error_max": max(v["pv_vs_jacobian_rel_error"]["max"] for v in sel),
                 "key_groups": {}}
        for key in sel[0]["change_pct"]:
            per_year = {w: float(np.mean([v["change_pct"][key][w] / v["years"] for v in sel]))
                        for w in ("prescribed", "realised", "partial_volume")}
            entry["key_groups"][key] = per_year
        out["by_diagnosis"][dx] = entry
    return out


def label_count_blindness(manifest: Manifest, key_labels: list[int]) -> dict:
    """Change seen by counting nearest-neighbour label voxels vs the true change, first to last visit."""
    seen, truth = [], []
    for visits in manifest.by_subject().values():
        first, last = visits[0], visits[-1]
        counts = [np.isin(load_nifti(v.segm_path, labels=True).data, key_labels).sum()
                  for v in (first, last)]
        seen.append(100.0 * (counts[1] / counts[0] - 1.0))
        truth.append(100.0 * (float(last.extra["vol_hippocampus"]) / float(first.extra["vol_hippocampus"]) - 1.0))
    seen_a, truth_a = np.array(seen), np.array(truth)
    return {"true_change_pct_mean": float(truth_a.mean()), "label_count_change_pct_mean": float(seen_a.mean()),
            "label_count_abs_error_pct_mean": float(np.abs(seen_a - truth_a).mean()),
            "correlation": float(np.corrcoef(seen_a, truth_a)[0, 1]) if len(seen) > 2 else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--visits", default="3")
    p.add_argument("--spacing", default="2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="cohort folder (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "cohort"
        load_before = os.getloadavg()
        t0, c0 = time.perf_counter(), cpu_seconds()
        manifest = generate_cohort(out, subjects=args.subjects, seed=args.seed,
                                   grid=grid_for_spacing(args.spacing), visits=parse_visits(args.visits),
                                   workers=args.workers, overwrite=True)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        load_after = os.getloadavg()
        meta = json.loads((out / "cohort.json").read_text())
        from mambacontrol.atlas import load_atlas

        atlas = load_atlas(meta["atlas"]["id"], meta["atlas"]["grid"])
        result = {
            "command": (f"python benchmarks/bench_synth.py --subjects {args.subjects} --visits "
                        f"{args.visits} --spacing {args.spacing} --workers {args.workers} --seed {args.seed}"),
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
        }
        print(json.dumps(result, indent=2))
        print(format_summary(summarize_cohort(manifest)))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
