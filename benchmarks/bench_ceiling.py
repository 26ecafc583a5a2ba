"""The representation's ceiling: how much of the true change each autoencoder can carry.

Trains the ``autoencoder`` stage of a run config once per variant (config overrides), then pushes
every test pair's true later scan through it and decodes it as a prediction is (the
``autoencoder-ceiling`` of ``mambacontrol evaluate``, :func:`reconstruct_follow_up`). The change
is measured as ``evaluate`` measures it (SyN from the baseline, Jacobian integrated per region),
against the truth measured the same way, beside the copy-baseline on the same pairs::

    python benchmarks/bench_ceiling.py --manifest runs/demo/cohort/manifest.csv --config demo \\
        --out runs/ceiling --variant base= --variant c8=autoencoder.model.latent_channels=8 \\
        --variant f2="autoencoder.model.channels=[16, 32]"
    python benchmarks/bench_ceiling.py ... --model runs/demo/model   # an existing model's too

Per variant and key group: ``recovered`` = mean measured change of the ceiling / mean measured
true change (the change ratio; the issue's target is ≥ 90 % at 2 mm, ≥ 80 % for the demo), and
``err/copy`` = the ceiling's mean absolute regional error / the copy-baseline's (%). A variant's
autoencoder is trained once into ``<out>/<name>`` (the script resumes); the pairs' truth is
measured once for all variants. An interrupted variant's training resumes when the script is run
again with the same arguments.

``--latent-gain 1.5,2`` adds, per autoencoder, rows ``<name>@<g>`` decoded from the latent
``z_base + g (z_follow − z_base)``: the decoder shrinks a change, and an amplified latent change
(what guidance does to a prediction) may carry more of it than the true latent does.

``--field-probe 4,8`` adds, free of any training, what a deformation-valued representation on a
latent grid ``f`` times coarser could carry at most: the truth's own log-Jacobian, averaged over
``f``³ blocks and interpolated back (trilinear), integrated over the regions (rows
``field-probe-<f>x``). A smooth field on that grid cannot place volume change more finely.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest
from mambacontrol.data.change import percent_change
from mambacontrol.evaluation import (
    PairInfo,
    PairResult,
    copy_baseline_volumes,
    regional_change,
    summarize,
)
from mambacontrol.evaluation.evaluate import GridScans
from mambacontrol.evaluation.metrics import image_metrics
from mambacontrol.evaluation.records import COPY_BASELINE
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.pipeline.progression import reconstruct_follow_up
from mambacontrol.registration.morphometry import RegionalVolumes, measure_regional_volumes
from mambacontrol.training.configs import bundled_config
from mambacontrol.training.runner import resolve_config

KEY_GROUPS = ("hippocampus", "amygdala", "entorhinal", "lateral_ventricles", "whole_brain")


def train_variant(out: Path, config: str, manifest: Path, overrides: list[str]) -> Path:
    """``<out>/autoencoder``, trained unless it is there already (an interrupted training
    resumes from its last checkpoint)."""
    if not (out / "stages" / "autoencoder.json").is_file():
        resume = ["--resume"] if (out / "checkpoints").is_dir() else []
        command = [sys.executable, "-m", "mambacontrol", "train", "autoencoder", "--config",
                   config, "--out", str(out), f"data.manifest={manifest}", "engine.trackers=[]",
                   *overrides, *resume]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return out / "autoencoder"


def on_base(base: dict, other: dict) -> dict:
    """``other``'s % change applied to ``base`` (each measurement has its own baseline)."""
    return {k: b * (1.0 + (percent_change(other[k], b) if b > 0 else 0.0) / 100.0)
            for k, b in base.items()}


def factor_list(text: str) -> list[int]:
    """``"4,8"`` → ``[4, 8]``."""
    return [int(f) for f in text.split(",") if f.strip()]


def gain_list(text: str) -> list[float]:
    """``"1.5,2"`` → ``[1.5, 2.0]``."""
    return [float(g) for g in text.split(",") if g.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--config", default="demo", help="run config (file or bundled name)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a variant: name, '=', overrides separated by ';' (may be empty)")
    parser.add_argument("--model", action="append", default=[], type=Path,
                        help="also the autoencoder of this trained model folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairs", choices=("all", "last"), default="last")
    parser.add_argument("--decode", choices=("difference", "direct"), default="difference")
    parser.add_argument("--max-pairs", type=int, help="only the first N pairs (a quick look)")
    parser.add_argument("--seed", type=int, default=0, help="registration seed")
    parser.add_argument("--field-probe", default=[], metavar="F,F", type=factor_list,
                        help="latent factors of the deformation-field probe (e.g. 4,8)")
    parser.add_argument("--latent-gain", default=[], metavar="G,G", type=gain_list,
                        help="also decode z_base + G (z_follow - z_base) per autoencoder")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


def trained_variants(args: argparse.Namespace,
                     config: str) -> tuple[dict[str, Path], dict[str, float]]:
    """Variant name → its autoencoder folder, and → its training seconds (trained ones)."""
    autoencoders: dict[str, Path] = {m.name: m / "autoencoder" for m in args.model}
    seconds: dict[str, float] = {}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        folder = args.out / name
        autoencoders[name] = train_variant(folder, config, args.manifest.resolve(),
                                           [o for o in overrides.split(";") if o.strip()])
        stage = json.loads((folder / "stages" / "autoencoder.json").read_text())
        seconds[name] = stage["wall_time_s"]
    return autoencoders, seconds


def field_probe(truth: RegionalVolumes, labels: np.ndarray, voxel_mm3: float,
                factor: int) -> dict[int, float]:
    """Region volumes (mm³) of the truth's Jacobian smoothed to a grid ``factor`` times coarser.

    Args:
        truth: the measured true change (its (X, Y, Z) Jacobian map, positive).
        labels: (X, Y, Z) the baseline's region labels.
        voxel_mm3: one voxel's volume.
        factor: the coarse grid's voxel edge in grid voxels (the grid is cropped to a multiple).

    Returns:
        ``{label: volume}`` for ``truth.label_ids``.
    """
    log_jac = torch.from_numpy(np.log(np.clip(truth.jacobian, 1e-6, None)))[None, None]
    coarse = torch.nn.functional.avg_pool3d(log_jac.double(), factor, ceil_mode=True)
    smooth = torch.nn.functional.interpolate(coarse, size=log_jac.shape[2:], mode="trilinear",
                                             align_corners=False).exp()[0, 0].numpy()
    ids = np.asarray(truth.label_ids)
    flat = np.asarray(labels).ravel()
    size = max(int(flat.max()), int(ids.max())) + 1
    volumes = np.bincount(flat, weights=smooth.ravel(), minlength=size)[ids] * voxel_mm3
    return {int(i): float(v) for i, v in zip(ids, volumes)}


def score_ceilings(args: argparse.Namespace, scans: GridScans, models: dict[str, Autoencoder]
                   ) -> tuple[list[PairResult], dict[str, list[float]]]:
    """Every pair: the copy-baseline's and each autoencoder's ceiling's regional change against
    the measured truth, each ceiling's image MAE against the true follow-up, and the field
    probe's rows (``--field-probe``)."""
    groups = scans.atlas.key_groups
    factors = args.field_probe
    results, mae = [], {n: [] for n in models}
    pairs = scans.manifest.select(args.split).pairs(args.pairs)[: args.max_pairs]
    grid = scans.atlas.grid
    voxel = float(abs(np.linalg.det(grid.affine[:3, :3])))
    start = time.perf_counter()
    for i, pair in enumerate(pairs):
        base, follow = scans.load(pair.earlier), scans.load(pair.later)
        measured = measure_regional_volumes(base.image, follow.image, base.labels, grid,
                                            scans.atlas.label_ids, seed=scans.seed)
        base_vols = {k: b for k, (b, _) in measured.as_dict().items()}
        truth = {k: o for k, (_, o) in measured.as_dict().items()}
        info = PairInfo.from_visit_pair(pair)
        regions, by_group = regional_change(base_vols, copy_baseline_volumes(base_vols), truth,
                                            groups)
        results.append(PairResult(info, COPY_BASELINE, {}, regions, by_group))
        for f in factors:
            regions, by_group = regional_change(
                base_vols, field_probe(measured, base.labels, voxel, f), truth, groups)
            results.append(PairResult(info, f"field-probe-{f}x", {}, regions, by_group))
        for name, ae in models.items():
            for gain in [1.0, *args.latent_gain]:
                row = name if gain == 1.0 else f"{name}@{gain:g}"
                with torch.no_grad():
                    image = reconstruct_follow_up(ae, base.image, follow.image, base.mask,
                                                  args.decode, latent_gain=gain)
                if gain == 1.0:
                    mae[name].append(image_metrics(image, base.image, follow.image,
                                                   base.mask)["mae"])
                _, vols = scans.measure(base, image)
                regions, by_group = regional_change(base_vols, on_base(base_vols, vols), truth,
                                                    groups)
                results.append(PairResult(info, row, {}, regions, by_group))
        print(f"pair {i + 1}/{len(pairs)} ({time.perf_counter() - start:.0f} s)", flush=True)
    return results, mae


def ceiling_table(summary: dict, models: dict[str, Autoencoder], grid: tuple[int, ...],
                  seconds: dict[str, float], mae: dict[str, list[float]],
                  factors: list[int], gains: list[float] = ()) -> dict:
    """Per variant (each latent gain, and field probe): latent shape, size, training time,
    reconstruction MAE, and per key group the change recovered (%) and the regional error in %
    of the copy-baseline's."""
    copy = summary["key_groups"][COPY_BASELINE]

    def groups(name: str) -> dict:
        mine = summary["key_groups"][name]
        return {g: {"recovered_pct": None if mine[g]["change_ratio"] is None
                    else 100 * mine[g]["change_ratio"],
                    "error_of_copy_pct": 100 * mine[g]["abs_error_pct"]["mean"]
                    / copy[g]["abs_error_pct"]["mean"],
                    "true_pct": mine[g]["true_change_pct"]["mean"]}
                for g in KEY_GROUPS if g in mine}

    table: dict = {}
    for name, ae in models.items():
        table[name] = {
            "latent": [s // ae.downsample_factor for s in grid] + [ae.num_latent_channels],
            "parameters": sum(p.numel() for p in ae.parameters()),
            "train_s": seconds.get(name),
            "follow_up_mae": float(np.mean(mae[name])),
            "groups": groups(name)}
        for gain in gains:
            table[f"{name}@{gain:g}"] = {**table[name], "follow_up_mae": None,
                                         "groups": groups(f"{name}@{gain:g}")}
    for f in factors:
        table[f"field-probe-{f}x"] = {"latent": [-(-s // f) for s in grid] + [3],
                                      "parameters": 0, "train_s": None,
                                      "follow_up_mae": None,
                                      "groups": groups(f"field-probe-{f}x")}
    return table


def shown(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``; "–" where it is undefined (a gain row's or a probe's
    reconstruction, a group without change)."""
    return "–" if value is None else format(value, spec)


def print_table(table: dict) -> None:
    header = " | ".join(f"{g} rec. % / err. of copy %" for g in KEY_GROUPS)
    print(f"| variant | latent | params | AE train s | recon. MAE | {header} |")
    print("|" + "---|" * (5 + len(KEY_GROUPS)))
    for name, row in table.items():
        cells = " | ".join(f"{shown(row['groups'][g]['recovered_pct'], '.0f')} / "
                           f"{row['groups'][g]['error_of_copy_pct']:.0f}" for g in KEY_GROUPS)
        print(f"| {name} | {'×'.join(map(str, row['latent']))} | {row['parameters']:,} | "
              f"{shown(row['train_s'], '.0f')} | {shown(row['follow_up_mae'], '.4f')} | {cells} |")


def main() -> None:
    args = parse_args()
    config = str(bundled_config(args.config)) if not Path(args.config).is_file() else args.config
    autoencoders, seconds = trained_variants(args, config)
    cfg = resolve_config(config, [], manifest=args.manifest)
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    scans = GridScans(Manifest.from_csv(args.manifest), atlas, args.seed)
    models = {n: Autoencoder.load(p).eval() for n, p in autoencoders.items()}
    results, mae = score_ceilings(args, scans, models)
    table = ceiling_table(summarize(results), models, atlas.grid.shape, seconds, mae,
                          args.field_probe, args.latent_gain)
    n = len({r.pair for r in results})
    print(f"\n{n} pairs ({args.split}, {args.pairs}), decode {args.decode}\n")
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
