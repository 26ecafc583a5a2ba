"""Build an evaluation report from a fabricated run on the real atlas and screenshot it.

The run is random but plausible: baselines are the atlas template with noise, follow-ups are the
baseline warped so that the lateral ventricles grow and the hippocampi shrink at diagnosis-dependent
rates, two "models" reproduce part of that change, and regional volumes follow published annual
rates. It exercises every part of the report (both baselines, the measurement floor, two models as
in ``--compare``, slice panels with uncertainty) without a trained model.

    .venv/bin/python benchmarks/render_report.py --out runs/render_report

writes ``report.html``, ``metrics.json``, ``pairs.csv``, ``regions.csv`` and, when Debian's
``chromium`` is installed, ``report.png``: a headless-Chromium screenshot to look at.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from mambacontrol.atlas import load_atlas
from mambacontrol.evaluation import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    PairInfo,
    PairResult,
    SlicePanel,
    VolumeSample,
    collect_provenance,
    copy_baseline,
    copy_baseline_volumes,
    fit_linear_rates,
    image_metrics,
    regional_change,
    render_report,
    summarize,
    write_metrics_json,
    write_pairs_csv,
    write_regions_csv,
    write_report,
)

# Annual % change per key group and diagnosis (DESIGN.md's synthetic cohort rates).
GROUP_RATES = {
    "hippocampus": {"CN": -1.0, "MCI": -3.0, "AD": -4.5},
    "amygdala": {"CN": -1.0, "MCI": -2.5, "AD": -4.0},
    "entorhinal": {"CN": -1.2, "MCI": -3.0, "AD": -5.0},
    "lateral_ventricles": {"CN": 2.0, "MCI": 4.0, "AD": 6.0},
    "whole_brain": {"CN": -0.3, "MCI": -0.8, "AD": -1.5},
}
MODELS = {"mambacontrol-small": 0.75, "ablation-no-graph": 0.35}  # share of the change reproduced


def region_rates(atlas, dx: str, rng: np.random.Generator) -> dict[int, float]:
    """One subject's annual % change of every label: its key group's population rate (else the
    whole-brain rate), times a subject factor (log-normal, 30 %) and a region factor (10 %)."""
    subject = rng.lognormal(0.0, 0.3)
    rates = {lab: GROUP_RATES["whole_brain"][dx] for lab in atlas.label_ids}
    for group in ("lateral_ventricles", "hippocampus", "amygdala", "entorhinal"):
        for lab in atlas.key_groups[group]:
            rates[lab] = GROUP_RATES[group][dx]
    return {lab: r * subject * rng.lognormal(0.0, 0.1) for lab, r in rates.items()}


def warp_field(atlas) -> np.ndarray:
    """(3, X, Y, Z) displacement per unit of severity: ventricles grow, hippocampi shrink."""
    def pull(labels, sign):
        density = ndimage.gaussian_filter(np.isin(atlas.labels, labels).astype(float), 1.5)
        grad = np.stack(np.gradient(density))
        return sign * grad / np.abs(grad).max()

    return pull(atlas.key_groups["lateral_ventricles"], 1.0) + \
        pull(atlas.key_groups["hippocampus"], -1.0)


def fabricate(atlas, n_pairs: int, seed: int):
    rng = np.random.default_rng(seed)
    mask = np.asarray(atlas.mask)
    template = np.asarray(atlas.template, np.float64)
    field = warp_field(atlas)
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in mask.shape], indexing="ij")).astype(float)
    atlas_vols = atlas.region_volumes()
    severity = {"CN": 0.1, "MCI": 0.25, "AD": 0.4}  # voxels of boundary shift per year

    train = []
    for _ in range(60):
        dx, years = rng.choice(list(severity)), float(rng.uniform(0.5, 6))
        rates = region_rates(atlas, dx, rng)
        base = {k: v * rng.uniform(0.9, 1.1) for k, v in atlas_vols.items()}
        train.append(VolumeSample(dx, years, base, {k: v * (1 + rates[k] * years / 100)
                                                    for k, v in base.items()}))
    linear = fit_linear_rates(train, atlas.key_groups, source="fabricated exact training volumes")

    results, panels = [], []
    for i in range(n_pairs):
        dx = ("CN", "MCI", "AD")[i % 3]
        years = float(rng.uniform(0.5, 7.0))
        pair = PairInfo(f"sub-{i:03d}", f"sub-{i:03d}_ses-0", f"sub-{i:03d}_ses-1", dx, years,
                        float(rng.uniform(60, 85)), "F" if i % 2 else "M")
        base = np.clip(template + rng.normal(0, 0.01, mask.shape), 0, 1) * mask
        shift = severity[dx] * years
        follow = ndimage.map_coordinates(base, coords + shift * field, order=1) * mask
        follow = np.clip(follow + rng.normal(0, 0.01, mask.shape) * mask, 0, 1)

        rates = region_rates(atlas, dx, rng)
        vbase = {k: v * rng.uniform(0.9, 1.1) for k, v in atlas_vols.items()}
        vexact = {k: v * (1 + rates[k] * years / 100) for k, v in vbase.items()}
        vmeas = {k: v * (1 + rng.normal(0, 0.004)) for k, v in vexact.items()}

        for name, skill in MODELS.items():
            error = ndimage.gaussian_filter(rng.normal(0, 0.05, mask.shape), 1.0) * mask
            pred = ndimage.map_coordinates(base, coords + skill * shift * field, order=1) * mask
            pred = np.clip(pred + error, 0, 1)
            vpred = {k: vbase[k] + skill * (vmeas[k] - vbase[k]) * (1 + rng.normal(0, 0.2))
                     for k in vbase}
            regions, groups = regional_change(vbase, vpred, vmeas, atlas.key_groups)
            results.append(PairResult(pair, name, image_metrics(pred, base, follow, mask),
                                      regions, groups))
            if (name == next(iter(MODELS)) and len(panels) < 3
                    and dx == ("AD", "MCI", "CN")[len(panels)]):
                uncertainty = np.abs(error) + 0.3 * np.abs(follow - base)
                panels.append(SlicePanel(pair, name, base, follow, pred, mask, uncertainty))
        regions, groups = regional_change(vbase, copy_baseline_volumes(vbase), vmeas,
                                          atlas.key_groups)
        results.append(PairResult(pair, COPY_BASELINE,
                                  image_metrics(copy_baseline(base), base, follow, mask),
                                  regions, groups))
        regions, groups = regional_change(vbase, linear.predict(vbase, dx, years), vmeas,
                                          atlas.key_groups)
        results.append(PairResult(pair, LINEAR_BASELINE, {}, regions, groups))
        regions, groups = regional_change(vbase, vmeas, vexact, atlas.key_groups)
        results.append(PairResult(pair, MEASUREMENT_FLOOR, {}, regions, groups))
    return results, panels, linear


def screenshot(html: Path, png: Path, height: int) -> bool:
    """Headless Chromium screenshot of ``html`` (1280 px wide); False when chromium is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found (apt-get install -y chromium); no screenshot taken")
        return False
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
                        f"--window-size=1280,{height}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return png.is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/render_report"))
    parser.add_argument("--grid", default="4mm", help="atlas grid: 4mm, 2mm or 1p5mm")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=4000, help="screenshot height in pixels")
    args = parser.parse_args(argv)

    atlas = load_atlas(grid=args.grid)
    t0 = time.perf_counter()
    results, panels, linear = fabricate(atlas, args.pairs, args.seed)
    t1 = time.perf_counter()
    summary = summarize(results)
    provenance = collect_provenance(
        command=[sys.executable, *sys.argv], models={m: f"(fabricated, skill {s})"
                                                     for m, s in MODELS.items()},
        manifest="(fabricated)", split="test", extra={"seed": args.seed, "atlas grid": args.grid})
    settings = {"change threshold τ": "0.05 (intensity, 0–1 scale)", "SSIM window": "11 voxels",
                "pairs": "all", "samples per prediction": "1 (fabricated)"}
    html = render_report(summary, results, provenance=provenance, panels=panels,
                         region_names={r.label: r.name for r in atlas.regions},
                         linear_rates=linear, settings=settings,
                         title="mambacontrol evaluation report (fabricated run)")
    t2 = time.perf_counter()
    out = args.out
    write_report(out / "report.html", html)
    write_metrics_json(out / "metrics.json", summary, provenance=provenance, settings=settings,
                       linear_rates=linear.to_dict())
    write_pairs_csv(out / "pairs.csv", results)
    write_regions_csv(out / "regions.csv", summary, {r.label: r.name for r in atlas.regions})
    print(f"{args.pairs} pairs × {len(summary['methods'])} methods on the {args.grid} grid: "
          f"metrics {t1 - t0:.1f} s, report {t2 - t1:.1f} s, {len(html) / 1e6:.2f} MB of HTML")
    if screenshot(out / "report.html", out / "report.png", args.height):
        print(f"screenshot: {out / 'report.png'}")
    print(f"report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
