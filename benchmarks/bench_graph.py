"""Anatomy graph: speed of its parts, and the trajectory head's accuracy on a cohort's test pairs.

Speed (on the atlas itself): building the graph, node features of one scan, the encoder's
forward pass, soft region fractions on a 4× coarser grid.

Quality (with ``--manifest``): trains the graph encoder and trajectory head on the train split
(best validation state kept), then on every test pair reports, per key group, the mean absolute
error of the predicted % volume change beside two baselines on the same pairs: no change, and the
per-diagnosis population rate (mean annual % change per key group and baseline diagnosis on the
train pairs, times Δt), and, for reference, the evaluation module's regional linear extrapolation
(least-squares rate per label and diagnosis, ``mambacontrol.evaluation.fit_linear_rates``). Truth: ``100 · (Σ vol_follow / Σ vol_base − 1)`` from the manifest's
``vol_r<label>`` columns. Also shown: the head's regional prior alone (the untrained head: each
region's mean annual change per baseline diagnosis, fitted on the train pairs). ``--ablation``
repeats the training with the spectral parts switched off.

    python benchmarks/bench_graph.py --grid 4mm --manifest COHORT/manifest.csv --steps 1500 \\
        --out runs/bench_graph
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest
from mambacontrol.data.manifest import DIAGNOSES
from mambacontrol.evaluation.baselines import fit_linear_rates, manifest_volumes, samples_from_pairs
from mambacontrol.graph import (
    AnatomyGraph,
    GraphEncoder,
    group_percent_change,
    node_features,
    region_fractions,
    train_trajectory,
)
from mambacontrol.graph.features import FeatureCache
from mambacontrol.graph.training import build_pairs

ABLATIONS = {
    "full": {},
    "no spectral filters": {"spectral_filters": False},
    "no Fourier refinement": {"fourier_refine": False},
    "neither": {"spectral_filters": False, "fourier_refine": False},
}


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def speed(grid: str) -> dict:
    """Best-of-N timings, torch on one thread (the graph's ops are too small to gain from more)."""
    torch.set_num_threads(1)
    atlas = load_atlas(grid=grid)
    _ = atlas.labels, atlas.template

    def build():
        AnatomyGraph._cache.clear()
        return AnatomyGraph.from_atlas(atlas)

    out = {"graph_build_s": _best_of(build, 5)}
    graph = AnatomyGraph.from_atlas(atlas)
    out["node_features_s"] = _best_of(lambda: node_features(atlas.template, atlas.labels, graph), 5)
    out["region_fractions_f4_s"] = _best_of(lambda: region_fractions(atlas.labels, graph, 4), 5)
    torch.manual_seed(0)
    enc = GraphEncoder.from_graph(graph).eval()
    feats = torch.from_numpy(node_features(atlas.template, atlas.labels, graph))[None].repeat(8, 1, 1)
    cov = enc.covariates([70.0] * 8, [2.0] * 8, ["F"] * 8, ["MCI"] * 8)
    with torch.no_grad():
        out["encoder_forward_b8_s"] = _best_of(lambda: enc(feats, cov), 10)
    out["encoder_parameters"] = sum(p.numel() for p in enc.parameters())
    return out


def mean_annual_rates(percent_change: np.ndarray, years: np.ndarray, diagnosis: list[str]) -> dict:
    """Diagnosis → (G,) mean annual % change of the key groups over the train pairs."""
    annual = percent_change / years[:, None]
    dx = np.array(diagnosis)
    return {d: annual[dx == d].mean(axis=0) if (dx == d).any() else annual.mean(axis=0) for d in DIAGNOSES}


def key_group_truth(pairs_set, atlas) -> dict[str, np.ndarray]:
    col = {lab: i for i, lab in enumerate(atlas.label_ids)}
    out = {}
    for name, labels in atlas.key_groups.items():
        idx = [col[lab] for lab in labels]
        out[name] = 100.0 * (pairs_set.follow_volumes[:, idx].sum(1) / pairs_set.base_volumes[:, idx].sum(1) - 1.0)
    return out


def quality(manifest_path: Path, grid: str, steps: int, seed: int, encoder_args: dict,
            cache_dir: Path | None) -> dict:
    atlas = load_atlas(grid=grid)
    manifest = Manifest.from_csv(manifest_path)
    config = {"encoder": encoder_args, "eval_every": 50}
    t = time.perf_counter()
    res = train_trajectory(manifest, atlas, config, steps=steps, seed=seed, cache_dir=cache_dir)
    train_s = time.perf_counter() - t
    graph = AnatomyGraph.from_atlas(atlas)
    cache = FeatureCache(graph, cache_dir)
    test = build_pairs(manifest, "test", atlas, graph, cache, res.model.encoder.covariate_norm)
    train = res.train

    groups = list(atlas.key_groups)
    truth_train = key_group_truth(train, atlas)
    truth_test = key_group_truth(test, atlas)
    rates = mean_annual_rates(np.stack([truth_train[g] for g in groups], 1), train.years.double().numpy(),
                              [p.earlier.diagnosis for p in train.pairs])
    pop_pred = np.stack([rates[p.earlier.diagnosis] * p.years for p in test.pairs])
    linear = fit_linear_rates(samples_from_pairs(train.pairs))
    linear_pred = {g: [] for g in groups}
    for p in test.pairs:
        base = manifest_volumes(p.earlier)
        follow = linear.predict(base, p.earlier.diagnosis, p.years)
        for g, labels in atlas.key_groups.items():
            linear_pred[g].append(100 * (sum(follow[lab] for lab in labels) / sum(base[lab] for lab in labels) - 1))
    with torch.no_grad():
        res.model.train(False)
        log_ratio = res.model(test.features, test.covariates, test.years).double().numpy()
    pred = group_percent_change(graph, log_ratio, test.base_volumes, atlas.label_ids, atlas.key_groups)
    prior = np.asarray(res.model.head.config.prior_rate or np.zeros((graph.num_nodes, 3)))
    prior_log_ratio = test.years.double().numpy()[:, None] * (test.covariates[:, 3:6].double().numpy() @ prior.T) / 100
    prior_pred = group_percent_change(graph, prior_log_ratio, test.base_volumes, atlas.label_ids,
                                      atlas.key_groups)

    rows = {}
    for j, g in enumerate(groups):
        truth = truth_test[g]
        rows[g] = {"model": float(np.abs(pred[g] - truth).mean()),
                   "no_change": float(np.abs(truth).mean()),
                   "population_rate": float(np.abs(pop_pred[:, j] - truth).mean()),
                   "regional_prior": float(np.abs(prior_pred[g] - truth).mean()),
                   "regional_linear": float(np.abs(np.array(linear_pred[g]) - truth).mean()),
                   "mean_true_change": float(truth.mean())}
        rows[g]["model_over_no_change"] = rows[g]["model"] / rows[g]["no_change"]
    return {"train_pairs": len(train), "valid_pairs": len(res.valid) if res.valid else 0,
            "test_pairs": len(test), "subjects": len(manifest.subjects()), "train_s": train_s,
            "steps": steps, "history": res.history, "key_groups": rows}


def table(rows: dict) -> str:
    lines = ["| key group | mean true change (%) | no change | population rate | regional linear "
             "| head's prior alone | trajectory head | head / no change |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g, r in rows.items():
        lines.append(f"| {g} | {r['mean_true_change']:+.2f} | {r['no_change']:.3f} | {r['population_rate']:.3f} "
                     f"| {r['regional_linear']:.3f} | {r['regional_prior']:.3f} | {r['model']:.3f} "
                     f"| {100 * r['model_over_no_change']:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="4mm", help="atlas grid of the cohort (2mm, 1p5mm, 4mm)")
    parser.add_argument("--manifest", type=Path, help="cohort manifest with vol_r<label> columns")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablation", action="store_true", help="also train with spectral parts off")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_graph"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"grid": args.grid, "load_average": os.getloadavg(), "speed": speed(args.grid)}
    print(json.dumps(results["speed"], indent=1))
    if args.manifest is not None:
        variants = ABLATIONS if args.ablation else {"full": {}}
        results["quality"] = {}
        for name, enc in variants.items():
            q = quality(args.manifest, args.grid, args.steps, args.seed, enc, args.out / "features")
            results["quality"][name] = q
            print(f"\n{name}: {q['test_pairs']} test pairs, {q['train_pairs']} train pairs, "
                  f"{q['subjects']} subjects, trained in {q['train_s']:.0f} s\n{table(q['key_groups'])}")
    results["load_average_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
