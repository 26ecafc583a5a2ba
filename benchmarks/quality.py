"""The quality benchmark: train ``synthetic-2mm.yaml`` on a 2 mm synthetic cohort, then evaluate
the test split beside both baselines and the ablations, on the same pairs.

    python benchmarks/quality.py --out runs/quality            # hours on 2 CPU cores
    python benchmarks/quality.py --out runs/quality --subjects 80 --seed 1 --pairs last

Steps (each skipped when its output exists, so the script resumes):

1. ``mambacontrol synth`` cohort (2 mm; ``--dynamics``, default ``network``: atrophy spreads
   along the anatomy graph; an existing cohort of other dynamics in ``<out>/cohort`` is refused);
2. ``mambacontrol train all`` with ``train/configs/synthetic-2mm.yaml`` → ``<out>/full``;
3. ablations sharing the full model's autoencoder, graph and UNet, each retraining only the
   ControlNet: ``attention`` (attention instead of Mamba), ``no-fourier`` (no Fourier refinement),
   ``no-graph-hint`` (no graph map in the ControlNet hint) (``--skip-ablations`` leaves these out);
   plus ``unet-only`` (the full model without its ControlNet: no training, always evaluated);
4. ``mambacontrol evaluate --model full --compare <ablations>`` → ``<out>/evaluation``;
5. prints the table for ``docs/benchmarks.md`` (targets: regional volume-change error ≤ 50 % of
   copy-baseline's on the key groups; change-image MAE ≥ 20 % below copy-baseline's; PSNR and
   SSIM not below copy-baseline's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ABLATIONS = {
    "attention": ["controlnet.model.mixer=attention"],
    "no-fourier": ["controlnet.model.fourier_levels=[false, false]"],
    "no-graph-hint": ["controlnet.model.graph_hint=false"],
}
SHARED = ("autoencoder", "graph_encoder", "trajectory_head", "unet", "cache")
KEY_GROUPS = ("hippocampus", "amygdala", "entorhinal", "lateral_ventricles", "whole_brain")


def sh(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def mc(*args: str) -> None:
    sh(sys.executable, "-m", "mambacontrol", *args)


def ablation_run(full: Path, name: str, overrides: list[str], manifest: Path, config: str) -> Path:
    """A run folder sharing the full model's stages up to the UNet, with its own ControlNet."""
    run = full.parent / name
    if (run / "stages" / "controlnet.json").is_file():
        return run
    run.mkdir(exist_ok=True)
    for part in SHARED:
        if not (run / part).exists():
            src = full / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, run / part)
    (run / "stages").mkdir(exist_ok=True)
    for stage in ("autoencoder", "latents", "graph", "unet"):
        shutil.copy(full / "stages" / f"{stage}.json", run / "stages" / f"{stage}.json")
    mc("train", "controlnet", "--config", config, "--out", str(run), f"data.manifest={manifest}",
       *overrides, *(["--resume"] if (run / "checkpoints" / "controlnet").is_dir() else []))
    return run


def unet_only(full: Path) -> Path:
    """The full model without its ControlNet (model_index.json without the component)."""
    run = full.parent / "unet-only"
    if not (run / "model_index.json").is_file():
        run.mkdir(exist_ok=True)
        for part in ("autoencoder", "graph_encoder", "trajectory_head", "unet"):
            if not (run / part).exists():
                shutil.copytree(full / part, run / part)
        index = json.loads((full / "model_index.json").read_text())
        index["components"].pop("controlnet", None)
        (run / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return run


def table(metrics_path: Path) -> str:
    """Markdown table of the summary: methods × headline metrics."""
    summary = json.loads(metrics_path.read_text())["summary"]
    overall = summary["overall"]
    cols = [("mae", "MAE"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("change_mae", "change MAE"),
            ("change_dice", "change Dice")]
    cols += [(f"vol_err_{g}", f"{g} vol. err. %") for g in KEY_GROUPS]

    def cell(method: str, key: str) -> str:
        stats = overall.get(method, {}).get(key)
        if not stats or stats.get("mean") is None:
            return "–"
        if stats.get("sd") is None:
            return f"{stats['mean']:.4g}"
        return f"{stats['mean']:.4g} ± {stats['sd']:.2g}"

    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |",
             "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for m in summary["methods"]:
        lines.append(f"| {m} | " + " | ".join(cell(m, k) for k, _ in cols) + " |")
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
                        help="skip the ablations that retrain a ControlNet (unet-only is kept)")
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
    full = out / "full"
    resume = ["--resume"] if (full / "checkpoints").is_dir() else []
    mc("train", "all", "--config", args.config, "--out", str(full),
       f"data.manifest={manifest}", *resume)
    compare = []
    if not args.skip_ablations:
        compare = [ablation_run(full, n, o, manifest, args.config) for n, o in ABLATIONS.items()]
    compare.append(unet_only(full))
    evaluation = out / "evaluation"
    if not (evaluation / "metrics.json").is_file():
        mc("evaluate", "--manifest", str(manifest), "--model", str(full), "--out", str(evaluation),
           "--pairs", args.pairs, "--samples", str(args.samples),
           *(["--compare", *map(str, compare)] if compare else []))
    print(f"\nquality benchmark done in {(time.perf_counter() - start) / 3600:.2f} h")
    print(table(evaluation / "metrics.json"))
    print(f"report: {evaluation / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
