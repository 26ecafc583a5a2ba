"""The quality benchmark: train ``synthetic-2mm.yaml`` on a 2 mm synthetic cohort, then evaluate
the test split beside both baselines and the ablations, on the same pairs.

    python benchmarks/quality.py --out runs/quality            # many hours on 2 CPU cores
    python benchmarks/quality.py --out runs/quality --subjects 80 --seed 1 --pairs last

Steps (each skipped when its output exists, so the script resumes where it was stopped; a
training stage resumes from its last checkpoint):

1. ``mambacontrol synth`` cohort (2 mm; ``--dynamics``, default ``network``: atrophy spreads
   along the anatomy graph; an existing cohort of other dynamics in ``<out>/cohort`` is refused);
2. ``mambacontrol train all`` with ``train/configs/synthetic-2mm.yaml`` → ``<out>/full``;
3. the rows of issue 14's table (``ROWS``; ``--skip-ablations`` leaves them out, ``--rows``
   chooses), in this order: ``population-unet`` (issue 14's split: the UNet without the
   baseline latent, so only the ControlNet carries the subject; its own UNet and ControlNet,
   the ControlNet trained 6000 steps: at the config's 1500 it took back a fifth of the loss
   the baseline is worth, and on the demo it took 4× the steps to match ``full``;
   docs/benchmarks.md),
   ``full-seed1`` (the ControlNet trained again with seed 1),
   ``no-graph`` (no graph anywhere: its own UNet and ControlNet) and ``no-graph-seed1``,
   ``todays-design`` (the design before issue 14: its own UNet and ControlNet), ``no-fourier``
   and ``attention`` (Mamba replaced). A row shares the stages of the run it builds on and
   retrains the rest; plus ``unet-only`` (the full model without its ControlNet: no training);
4. ``mambacontrol calibrate --per-group`` of every model on the valid split (``--weights``; the
   hippocampus, amygdala, entorhinal cortex and ventricles each get the weight whose change
   ratio is closest to 1, everything else the whole brain's, as issue 14 asks "per key group";
   ``--one-weight`` keeps one weight for all; its folder in ``<out>/calibration/<row>``, the
   calibrated copy in ``<out>/calibrated/<row>``, so the evaluation's method names are the
   rows'); ``--no-calibrate`` evaluates the trained models at their own weight;
5. ``mambacontrol evaluate --model full --compare <the rest>`` → ``<out>/evaluation``: the models
   and their trajectory heads, the copy-baseline, the linear extrapolation (``--linear-fit``,
   default ``measured``: fitted on the train visits as registration measures them, the ruler the
   truth and the models are read with; about 20–40 min more at 2 mm), the autoencoder's ceiling
   and the measurement floor on the same test pairs. With fewer rows than ``ROWS`` the folder is
   ``<out>/evaluation-<model>+<model>...``: ``--rows ""`` after the full model has trained is an
   early look at ``full`` and ``unet-only`` (calibrated) that the whole table does not reuse;
   ``--no-calibrate`` adds ``-uncalibrated`` to the folder's name, ``--one-weight``
   ``-one-weight`` (its calibrated copies in ``<out>/calibrated-one-weight/<row>``);
6. prints the tables for ``docs/benchmarks.md``: headline metrics, and per key group the
   regional error in % of the copy-baseline's and the predicted/true change ratio (issue 14's
   targets: ≤ 50 % of the copy's error, a ratio of 0.8–1.2, below the linear extrapolation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One model of the table: ``overrides`` on the config, trained on top of ``parent``'s
    stages: with ``shares="unet"`` every stage up to its UNet (only the ControlNet is trained),
    with ``shares="latents"`` its autoencoder and latents, and its graph unless the row
    switches the graph off (the UNet and ControlNet are trained)."""

    overrides: tuple[str, ...]
    shares: str = "unet"
    parent: str = "full"


TODAYS_DESIGN = ("unet.model.covariate_time_embedding=false",
                 "controlnet.model.graph_painting=majority", "controlnet.model.change_hint=false",
                 "unet.train.zero_horizon_pairs=0", "controlnet.train.zero_horizon_pairs=0")
"""The design before issue 14 (``run_config``'s module docstring lists the same switches)."""
ROWS = {
    "population-unet": Row(("unet.model.concat_base=false", "controlnet.train.steps=6000"),
                           shares="latents"),
    "full-seed1": Row(("seed=1",)),
    "no-graph": Row(("graph.enabled=false",), shares="latents"),
    "no-graph-seed1": Row(("graph.enabled=false", "seed=1"), parent="no-graph"),
    "todays-design": Row(TODAYS_DESIGN, shares="latents"),
    "no-fourier": Row(("controlnet.model.fourier_levels=[false, false]",)),
    "attention": Row(("controlnet.model.mixer=attention",)),
}
"""Issue 14's rows besides ``full`` and ``unet-only``, in training order. A seed row differs
from its parent in the ControlNet's training seed only (initialisation, batches, noise)."""
GRAPH_PARTS = ("graph_encoder", "trajectory_head")
KEY_GROUPS = ("hippocampus", "amygdala", "entorhinal", "lateral_ventricles", "whole_brain")
DEFAULT_WEIGHTS = "0,1,2,3,4,6"
"""The full 2 mm model's valid-split ratios at w = 2 were 0.76 (entorhinal) to 1.71 (whole brain):
the grid spans both directions from there."""


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def mc(*args: str) -> None:
    sh(sys.executable, "-m", "mambacontrol", *args)


def copy_once(src: Path, dst: Path) -> None:
    """Copy a file or folder to ``dst`` unless it is there; through a temporary name, so a copy
    cut short is not taken for a finished one when the script resumes."""
    if dst.exists():
        return
    partial = dst.with_name(dst.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, partial)
    partial.rename(dst)


def row_run(out: Path, name: str, row: Row, manifest: Path, config: str) -> Path:
    """Train ``row`` into ``<out>/<name>``, on a copy of its parent's shared stages."""
    run, parent = out / name, out / row.parent
    if (run / "stages" / "controlnet.json").is_file():
        return run
    with_graph = "graph.enabled=false" not in row.overrides
    stages = ["autoencoder", "latents"] + (["graph"] if with_graph else [])
    parts = ["autoencoder", "cache"] + (list(GRAPH_PARTS) if with_graph else [])
    if row.shares == "unet":
        stages, parts = stages + ["unet"], parts + ["unet"]
    run.mkdir(exist_ok=True)
    (run / "stages").mkdir(exist_ok=True)
    for part in parts:
        copy_once(parent / part, run / part)
    for stage in stages:
        shutil.copy(parent / "stages" / f"{stage}.json", run / "stages" / f"{stage}.json")
    resume = ["--resume"] if (run / "checkpoints").is_dir() else []
    mc("train", "all", "--config", config, "--out", str(run), f"data.manifest={manifest}",
       *row.overrides, *resume)
    return run


def unet_only(full: Path) -> Path:
    """The full model without its ControlNet (model_index.json without the component)."""
    run = full.parent / "unet-only"
    if not (run / "model_index.json").is_file():
        run.mkdir(exist_ok=True)
        for part in ("autoencoder", "graph_encoder", "trajectory_head", "unet"):
            copy_once(full / part, run / part)
        index = json.loads((full / "model_index.json").read_text())
        index["components"].pop("controlnet", None)
        (run / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return run


def calibrated(out: Path, run: Path, manifest: Path, weights: str, per_group: bool) -> Path:
    """``run`` calibrated on the valid split (one weight per key group with ``per_group``),
    copied to ``<out>/calibrated/<run's name>`` (``calibrated-one-weight`` without)."""
    target = out / ("calibrated" if per_group else "calibrated-one-weight") / run.name
    if not (target / "model_index.json").is_file():
        work = out / "calibration" / run.name
        mc("calibrate", "--manifest", str(manifest), "--model", str(run), "--out", str(work),
           "--weights", weights, "--pairs", "last", *(["--per-group"] if per_group else []))
        shutil.rmtree(target, ignore_errors=True)  # a copy cut short
        copy_once(work / "model", target)
    return target


def _cell(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    if stats.get("sd") is None:
        return f"{stats['mean']:.4g}"
    return f"{stats['mean']:.4g} ± {stats['sd']:.2g}"


def table(metrics_path: Path) -> str:
    """Markdown table of the summary: methods × headline metrics."""
    summary = json.loads(metrics_path.read_text())["summary"]
    overall = summary["overall"]
    cols = [("mae", "MAE"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("change_mae", "change MAE"),
            ("change_dice", "change Dice")]
    cols += [(f"vol_err_{g}", f"{g} vol. err. %") for g in KEY_GROUPS]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |",
             "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for m in summary["methods"]:
        lines.append(f"| {m} | " + " | ".join(_cell(overall.get(m, {}).get(k)) for k, _ in cols)
                     + " |")
    return "\n".join(lines)


def target_table(metrics_path: Path) -> str:
    """Per key group: regional error in % of the copy-baseline's / predicted-true change
    ratio, for every method but the copy itself."""
    summary = json.loads(metrics_path.read_text())["summary"]
    groups = summary["key_groups"]
    copy = groups.get("copy-baseline", {})
    lines = ["| method | " + " | ".join(KEY_GROUPS) + " |",
             "| --- | " + " | ".join("---:" for _ in KEY_GROUPS) + " |"]
    for m in summary["methods"]:
        if m == "copy-baseline":
            continue
        cells = []
        for g in KEY_GROUPS:
            err = groups.get(m, {}).get(g, {}).get("abs_error_pct", {}).get("mean")
            ref = copy.get(g, {}).get("abs_error_pct", {}).get("mean")
            ratio = groups.get(m, {}).get(g, {}).get("change_ratio")
            pct = f"{100 * err / ref:.0f} %" if err is not None and ref else "–"
            cells.append(f"{pct} / {ratio:.2f}" if ratio is not None else pct)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--subjects", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dynamics", choices=("network", "independent"), default="network",
                        help="the cohort's dynamics (mambacontrol synth --dynamics)")
    parser.add_argument("--pairs", choices=("all", "last"), default="last")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--config", default="train/configs/synthetic-2mm.yaml")
    parser.add_argument("--skip-ablations", action="store_true",
                        help="skip the rows that train (unet-only is kept)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"the trained rows to include, in order (default: {','.join(ROWS)})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"guidance weights to calibrate over (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--one-weight", action="store_true",
                        help="calibrate one guidance weight for all regions (default: one per "
                             "key group)")
    parser.add_argument("--linear-fit", choices=("measured", "auto"), default="measured",
                        help="the linear extrapolation fitted on the train visits measured by "
                             "registration, the ruler of the truth and of the models (default), "
                             "or on the cohort's exact volumes (auto; before 2026-12-03)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="evaluate every model at its own guidance weight")
    args = parser.parse_args()
    out = args.out
    start = time.perf_counter()
    cohort = out / "cohort"
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        mc("synth", "--out", str(cohort), "--subjects", str(args.subjects),
           "--seed", str(args.seed),
           "--spacing", "2", "--workers", str(args.workers), "--dynamics", args.dynamics)
    else:  # a cohort.json without "dynamics" is independent (written before network dynamics)
        config = json.loads((cohort / "cohort.json").read_text())["config"]
        found = config.get("dynamics", "independent")
        if found != args.dynamics:
            raise SystemExit(f"{cohort} holds a {found} cohort, not {args.dynamics}; "
                             "choose another --out or --dynamics")
    rows = [r for r in args.rows.split(",") if r] if not args.skip_ablations else []
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    missing = [r for r in rows if ROWS[r].parent != "full" and ROWS[r].parent not in rows]
    if missing:
        raise SystemExit(f"rows {', '.join(missing)} need their parent row first")
    full = out / "full"
    resume = ["--resume"] if (full / "checkpoints").is_dir() else []
    mc("train", "all", "--config", args.config, "--out", str(full),
       f"data.manifest={manifest}", *resume)
    runs = [full] + [row_run(out, r, ROWS[r], manifest, args.config) for r in rows]
    runs.append(unet_only(full))
    if not args.no_calibrate:
        runs = [calibrated(out, run, manifest, args.weights, not args.one_weight)
                for run in runs]
    # a subset of the rows (an early look) is evaluated into its own folder, so the full
    # table's evaluation never takes its records for its own
    full_table = rows == list(ROWS)  # --skip-ablations empties rows
    evaluation = out / ("evaluation" if full_table
                        else "evaluation-" + "+".join(run.name for run in runs))
    if args.no_calibrate or args.one_weight:
        suffix = "-uncalibrated" if args.no_calibrate else "-one-weight"
        evaluation = evaluation.with_name(evaluation.name + suffix)
    if not (evaluation / "metrics.json").is_file():
        mc("evaluate", "--manifest", str(manifest), "--model", str(runs[0]), "--out",
           str(evaluation), "--pairs", args.pairs, "--samples", str(args.samples),
           "--linear-fit", args.linear_fit,
           *(["--compare", *map(str, runs[1:])] if runs[1:] else []))
    print(f"\nquality benchmark done in {(time.perf_counter() - start) / 3600:.2f} h")
    print(table(evaluation / "metrics.json"))
    print("\nregional error in % of the copy-baseline's / predicted-true change ratio:\n")
    print(target_table(evaluation / "metrics.json"))
    print(f"report: {evaluation / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
