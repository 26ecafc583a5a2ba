"""Anatomy graph: speed of its parts, and the trajectory head's accuracy on a cohort's test pairs.

Speed (on the atlas itself): building the graph, node features of one scan, the encoder's
forward pass, soft region fractions on a 4× coarser grid.

Quality (with ``--manifest``): trains the graph encoder and trajectory head on the train split
(best validation state kept), then on every test pair reports, per key group, the mean absolute
error of the predicted % volume change beside two baselines on the same pairs: no change, and the
per-diagnosis population rate (mean annual % change per key group and baseline diagnosis on the
train pairs, times Δt), and, for reference, the evaluation module's regional linear extrapolation
(least-squares rate per label and diagnosis, ``mambacontrol.evaluation.fit_linear_rates``).
Truth: ``100 · (Σ vol_follow / Σ vol_base − 1)`` from the manifest's ``vol_r<label>`` columns.
Also shown: the head's regional prior alone (the untrained head: per region
and diagnosis, a rate linear in age, fitted by least squares on the train pairs). ``--ablation``
repeats the training with the spectral parts switched off, and with the graph's edges removed
(``per node``: the same encoder and head, each node seeing only its own features, identity and
the covariates; ``GraphEncoder(per_node=True)``), the comparison that says what the graph adds.
Besides the key groups, ``all_regions`` is the mean over every atlas region of its own mean
absolute error (% volume change of the region). ``--seeds`` trains each variant once per seed
and reports the mean (and each seed's figure in ``results.json``); ``--json PATH`` writes
``{"groups": {group: {method: mean_abs_error}}}`` for the methods ``trajectory_head``,
``per_node``, ``prior``, ``population_rate``, ``no_change`` (and the other variants trained).
``--linear`` instead fits per-region ridge regressions on the true baseline volumes, own and
with the grey-matter neighbours' (:func:`linear_ceiling`): what the volumes say, linearly.

    python benchmarks/bench_graph.py --grid 4mm --manifest COHORT/manifest.csv --steps 1500 \\
        --out runs/bench_graph
    python benchmarks/bench_graph.py --grid 2mm --manifest COHORT/manifest.csv --steps 1000 \\
        --ablation --variants full,per_node --seeds 0,1,2 --json runs/gate.json
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
)
from mambacontrol.graph.features import FeatureCache
from mambacontrol.graph.pairs import build_pairs
from mambacontrol.graph.trajectory import num_prior_columns, prior_design
from mambacontrol.training.trajectory import train_trajectory

ABLATIONS = {
    "full": {},
    "per_node": {"per_node": True},
    "no_spectral_filters": {"spectral_filters": False},
    "no_fourier_refinement": {"fourier_refine": False},
    "neither": {"spectral_filters": False, "fourier_refine": False},
}
"""Variant → encoder arguments; ``full`` is the trajectory head, ``per_node`` the edgeless one."""
ALL_REGIONS = "all_regions"


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
    feats = torch.from_numpy(
        node_features(atlas.template, atlas.labels, graph))[None].repeat(8, 1, 1)
    cov = enc.covariates([70.0] * 8, [2.0] * 8, ["F"] * 8, ["MCI"] * 8)
    with torch.no_grad():
        out["encoder_forward_b8_s"] = _best_of(lambda: enc(feats, cov), 10)
    out["encoder_parameters"] = sum(p.numel() for p in enc.parameters())
    return out


def mean_annual_rates(percent_change: np.ndarray, years: np.ndarray, diagnosis: list[str]) -> dict:
    """Diagnosis → (G,) mean annual % change of the key groups over the train pairs."""
    annual = percent_change / years[:, None]
    dx = np.array(diagnosis)
    return {d: annual[dx == d].mean(axis=0) if (dx == d).any() else annual.mean(axis=0)
            for d in DIAGNOSES}


def key_group_truth(pairs_set, atlas) -> dict[str, np.ndarray]:
    col = {lab: i for i, lab in enumerate(atlas.label_ids)}
    out = {}
    for name, labels in atlas.key_groups.items():
        idx = [col[lab] for lab in labels]
        out[name] = 100.0 * (pairs_set.follow_volumes[:, idx].sum(1)
                             / pairs_set.base_volumes[:, idx].sum(1) - 1.0)
    return out


def region_percent(log_ratio: np.ndarray, graph: AnatomyGraph, label_ids) -> np.ndarray:
    """(N, L) % volume change of every label from (N, R) node log volume ratios."""
    nodes = np.array([graph.label_to_node[int(lab)] for lab in label_ids])
    return 100.0 * np.expm1(np.asarray(log_ratio, dtype=np.float64)[:, nodes])


def quality(manifest_path: Path, grid: str, steps: int, seed: int, config: dict,
            cache_dir: Path | None) -> dict:
    atlas = load_atlas(grid=grid)
    manifest = Manifest.from_csv(manifest_path)
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
    rates = mean_annual_rates(np.stack([truth_train[g] for g in groups], 1),
                              train.years.double().numpy(),
                              [p.earlier.diagnosis for p in train.pairs])
    pop_pred = np.stack([rates[p.earlier.diagnosis] * p.years for p in test.pairs])
    linear = fit_linear_rates(samples_from_pairs(train.pairs))
    linear_pred = {g: [] for g in groups}
    linear_regions = []
    for p in test.pairs:
        base = manifest_volumes(p.earlier)
        follow = linear.predict(base, p.earlier.diagnosis, p.years)
        for g, labels in atlas.key_groups.items():
            linear_pred[g].append(100 * (sum(follow[lab] for lab in labels)
                                         / sum(base[lab] for lab in labels) - 1))
        linear_regions.append([100 * (follow[lab] / base[lab] - 1) for lab in atlas.label_ids])
    with torch.no_grad():
        res.model.train(False)
        log_ratio = res.model(test.features, test.covariates, test.years).double().numpy()
    pred = group_percent_change(graph, log_ratio, test.base_volumes, atlas.label_ids,
                                atlas.key_groups)
    terms = res.model.head.prior_terms
    coef = np.asarray(res.model.head.config.prior_coef
                      or np.zeros((graph.num_nodes, num_prior_columns(terms))))
    design = prior_design(test.covariates.double(), test.years.double(), terms).numpy()
    prior_log_ratio = test.years.double().numpy()[:, None] * (design @ coef.T) / 100
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

    # every region on its own: mean over regions of each region's mean absolute error
    valid = (test.base_volumes > 0) & (train.base_volumes.min(axis=0) > 0)[None]
    region_truth = 100.0 * (test.follow_volumes / np.where(valid, test.base_volumes, 1.0) - 1.0)
    train_annual = 100.0 * (train.follow_volumes / np.maximum(train.base_volumes, 1e-9) - 1.0) \
        / train.years.double().numpy()[:, None]
    dx_train = np.array([p.earlier.diagnosis for p in train.pairs])
    region_rates = {d: train_annual[dx_train == d].mean(axis=0) if (dx_train == d).any()
                    else train_annual.mean(axis=0) for d in DIAGNOSES}
    region_pred = {
        "model": region_percent(log_ratio, graph, atlas.label_ids),
        "regional_prior": region_percent(prior_log_ratio, graph, atlas.label_ids),
        "population_rate": np.stack([region_rates[p.earlier.diagnosis] * p.years
                                     for p in test.pairs]),
        "regional_linear": np.array(linear_regions),
        "no_change": np.zeros_like(region_truth)}

    def region_mae(prediction: np.ndarray) -> float:
        err = np.where(valid, np.abs(prediction - region_truth), np.nan)
        return float(np.nanmean(np.nanmean(err, axis=0)))

    rows[ALL_REGIONS] = {k: region_mae(v) for k, v in region_pred.items()}
    rows[ALL_REGIONS]["mean_true_change"] = float(np.nanmean(np.where(valid, region_truth, np.nan)))
    for r in rows.values():
        r["model_over_no_change"] = r["model"] / r["no_change"]
    return {"train_pairs": len(train), "valid_pairs": len(res.valid) if res.valid else 0,
            "test_pairs": len(test), "subjects": len(manifest.subjects()), "train_s": train_s,
            "steps": steps, "seed": seed, "history": res.history, "key_groups": rows}


def linear_ceiling(manifest_path: Path, grid: str, ridge: float = 10.0) -> dict:
    """What a baseline's true regional volumes say about each region's future change, linearly.

    For every region, a ridge regression of its annual % change on the pairs' prior design
    (diagnosis × [1, age]) plus: nothing (``prior``), the region's own baseline
    ``log(V_r / V_brain)`` (``own``), and also the mean of its grey-matter neighbours' (``own +
    neighbours``, the anatomy graph's contact edges), all z-scored on the train pairs. Truth and
    inputs are the manifest's ``vol_r<label>`` columns, so this is the ceiling of a per-node and of
    a one-hop graph model when volumes are measured exactly, free of the network's training.
    Returns test mean absolute errors (% volume change) per key group and ``all_regions``.
    """
    atlas = load_atlas(grid=grid)
    manifest = Manifest.from_csv(manifest_path)
    graph = AnatomyGraph.from_atlas(atlas, homologue_edges=False)
    labels = list(atlas.label_ids)
    if [g[0] for g in graph.node_labels] != labels:
        raise ValueError("linear_ceiling needs one node per atlas label, in atlas order")
    grey = np.array([r.tissue == "gm" for r in atlas.regions])
    adjacency = (np.asarray(graph.weights) > 0) & grey[None]
    neighbours = adjacency / np.maximum(adjacency.sum(axis=1, keepdims=True), 1)
    brain = [labels.index(lab) for lab in atlas.key_groups["whole_brain"]]

    def rows(split: str):
        feats, target, years, cov = [], [], [], []
        for pair in manifest.select(split).pairs():
            base = np.array([float(pair.earlier.extra[f"vol_r{lab}"]) for lab in labels])
            follow = np.array([float(pair.later.extra[f"vol_r{lab}"]) for lab in labels])
            feats.append(np.log(base / base[brain].sum()))
            target.append(100.0 * (follow / base - 1.0))
            years.append(pair.years)
            cov.append((pair.earlier.age, pair.years, pair.earlier.sex, pair.earlier.diagnosis))
        from mambacontrol.data.covariates import CovariateNorm, encode_covariates

        c = encode_covariates(*[list(x) for x in zip(*cov)], CovariateNorm())
        design = prior_design(c.double(), torch.tensor(years).double()).numpy()
        return np.array(feats), np.array(target), np.array(years), design

    (f_tr, y_tr, t_tr, d_tr), (f_te, y_te, t_te, d_te) = rows("train"), rows("test")
    mu, sd = f_tr.mean(axis=0), f_tr.std(axis=0) + 1e-9
    z_tr, z_te = (f_tr - mu) / sd, (f_te - mu) / sd
    inputs = {"prior": lambda z, r: np.zeros((len(z), 0)),
              "own": lambda z, r: z[:, [r]],
              "own + neighbours": lambda z, r: np.column_stack([z[:, r], z @ neighbours[r]])}
    out: dict = {}
    for name, extra in inputs.items():
        pred = np.zeros_like(y_te)
        for r in range(len(labels)):
            x_tr = np.column_stack([d_tr, extra(z_tr, r)])
            x_te = np.column_stack([d_te, extra(z_te, r)])
            penalty = ridge * np.eye(x_tr.shape[1])
            penalty[: d_tr.shape[1], : d_tr.shape[1]] = 1e-6 * np.eye(d_tr.shape[1])
            coef = np.linalg.solve(x_tr.T @ x_tr + penalty, x_tr.T @ (y_tr[:, r] / t_tr))
            pred[:, r] = (x_te @ coef) * t_te
        err = np.abs(pred - y_te)
        out[name] = {g: float(err[:, [labels.index(lab) for lab in labs]].mean())
                     for g, labs in atlas.key_groups.items() if g != "whole_brain"}
        out[name][ALL_REGIONS] = float(err.mean())
    return out


def gate_json(runs: dict[str, list[dict]]) -> dict:
    """``{"groups": {group: {method: mean_abs_error}}}`` from each variant's runs (one per seed):
    ``trajectory_head`` (the full variant), ``per_node``, the other variants by name, and the
    baselines of the first run (``prior``: the head's regional prior alone)."""
    first = next(iter(runs.values()))[0]["key_groups"]
    out: dict = {"groups": {}, "seeds": {}}
    for group, row in first.items():
        methods = {"prior": row["regional_prior"], "population_rate": row["population_rate"],
                   "no_change": row["no_change"], "regional_linear": row["regional_linear"]}
        for variant, qs in runs.items():
            name = "trajectory_head" if variant == "full" else variant
            values = [q["key_groups"][group]["model"] for q in qs]
            methods[name] = float(np.mean(values))
            out["seeds"].setdefault(group, {})[name] = values
        out["groups"][group] = methods
    return out


def table(rows: dict) -> str:
    lines = ["| key group | mean true change (%) | no change | population rate | regional linear "
             "| head's prior alone | trajectory head | head / no change |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g, r in rows.items():
        lines.append(f"| {g} | {r['mean_true_change']:+.2f} | {r['no_change']:.3f} "
                     f"| {r['population_rate']:.3f} "
                     f"| {r['regional_linear']:.3f} | {r['regional_prior']:.3f} | {r['model']:.3f} "
                     f"| {100 * r['model_over_no_change']:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="4mm", help="atlas grid of the cohort (2mm, 1p5mm, 4mm)")
    parser.add_argument("--manifest", type=Path, help="cohort manifest with vol_r<label> columns")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0, help="training seed (see --seeds)")
    parser.add_argument("--seeds",
                        help="comma-separated training seeds, e.g. 0,1,2 (default: --seed)")
    parser.add_argument("--ablation", action="store_true",
                        help="also train the variants: per node (no edges), spectral parts off")
    parser.add_argument("--variants", help=f"comma-separated subset of {', '.join(ABLATIONS)} "
                                           "(default: all with --ablation, else full)")
    parser.add_argument("--config", type=json.loads, default={},
                        help="TrajectoryConfig fields as JSON, e.g. '{\"lr\": 1e-3}'")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_graph"))
    parser.add_argument("--cache", type=Path,
                        help="node-feature cache folder (default: OUT/features)")
    parser.add_argument("--json", type=Path, help="write {groups: {group: {method: MAE}}} here")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurements")
    parser.add_argument("--linear", action="store_true",
                        help="only the linear ceiling from true volumes "
                             "(no training; see linear_ceiling)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"grid": args.grid, "load_average": os.getloadavg()}
    if not args.no_speed:
        results["speed"] = speed(args.grid)
        print(json.dumps(results["speed"], indent=1))
    if args.manifest is not None and args.linear:
        results["linear_ceiling"] = linear_ceiling(args.manifest, args.grid)
        print(json.dumps(results["linear_ceiling"], indent=1))
    elif args.manifest is not None:
        names = (args.variants.split(",") if args.variants
                 else list(ABLATIONS) if args.ablation else ["full"])
        unknown = [n for n in names if n not in ABLATIONS]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {', '.join(ABLATIONS)}")
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
        results["quality"] = {}
        runs: dict[str, list[dict]] = {}
        for name in names:
            for seed in seeds:
                config = {"eval_every": 50, **args.config}
                config["encoder"] = {**config.get("encoder", {}), **ABLATIONS[name]}
                q = quality(args.manifest, args.grid, args.steps, seed, config,
                            args.cache or args.out / "features")
                q["config"] = config
                runs.setdefault(name, []).append(q)
                results["quality"][f"{name} seed {seed}"] = q
                print(f"\n{name}, seed {seed}: {q['test_pairs']} test pairs, "
                      f"{q['train_pairs']} train pairs, {q['subjects']} subjects, "
                      f"trained in {q['train_s']:.0f} s\n"
                      f"{table(q['key_groups'])}", flush=True)
        results["gate"] = gate_json(runs)
        print("\n" + gate_table(results["gate"]))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results["gate"], indent=1) + "\n")
    results["load_average_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


def gate_table(gate: dict) -> str:
    """Markdown table of :func:`gate_json` with the head's gain over the per-node network."""
    groups = gate["groups"]
    methods = list(next(iter(groups.values())))
    lines = ["| group | " + " | ".join(methods) + " | head vs per node |",
             "| --- |" + " ---: |" * (len(methods) + 1)]
    for g, row in groups.items():
        gain = (f"{100 * (1 - row['trajectory_head'] / row['per_node']):+.1f} %"
                if "trajectory_head" in row and "per_node" in row else "–")
        lines.append(f"| {g} | " + " | ".join(f"{row[m]:.3f}" for m in methods) + f" | {gain} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
