"""``mambacontrol evaluate``: metrics, baselines, ablations and an HTML report on a manifest
split; resumable per pair, and split into job-array parts with ``--num-parts K --part-id I``."""

from __future__ import annotations

import argparse
import sys

from mambacontrol.cli.predict_cmd import (
    add_part_arguments,
    add_sampling_flags,
    device_from_flag,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a model on a manifest split, beside baselines, with a report",
        description="Predict every (earlier, later) pair of a split and compare with the truth and "
                    "with the copy-baseline and regional linear extrapolation. Writes "
                    "metrics.json, pairs.csv, regions.csv and report.html. Each scored pair is "
                    "recorded in --out/pairs/ at once: the same command run again reuses every "
                    "pair recorded under the same settings and models and scores only the rest.")
    p.add_argument("--manifest", required=True, help="manifest CSV with a split column")
    p.add_argument("--model", required=True,
                   help="trained model folder, or a Hugging Face Hub id (org/name)")
    p.add_argument("--compare", nargs="*", default=[], metavar="DIR",
                   help="more models (folders or Hub ids) evaluated on the same pairs (ablations)")
    p.add_argument("--out", required=True,
                   help="output folder (new or empty; an earlier evaluation there resumes: its "
                        "pairs scored under the same settings and models are reused)")
    p.add_argument("--overwrite", action="store_true",
                   help="score every pair again, replacing an earlier evaluation's records and "
                        "outputs in --out (nothing else there)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--pairs", choices=("all", "last"), default="all",
                   help="every earlier/later pair, or first and last visit per subject")
    p.add_argument("--baselines", default="copy,linear", help="comma-separated: copy, linear")
    p.add_argument("--linear-fit", choices=("auto", "measured"), default="auto",
                   help="what the linear extrapolation's rates are fitted on: auto (the train "
                        "pairs' ground-truth vol_r<label> columns where every pair has them, "
                        "else their volumes measured by registration) or measured (always "
                        "measured: the same ruler as the truth it is scored against; one "
                        "registration per train visit)")
    add_sampling_flags(p, "samples per prediction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pairs", type=int, help="evaluate only the first N pairs")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="leave out the autoencoder-ceiling rows (the true later scan through each "
                        "model's representation; one encode and decode per pair)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes registering the scans that are not on the atlas grid (under "
                        "accelerate launch, the pairs are split over the launch's processes)")
    add_part_arguments(p, "pairs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate; under ``accelerate launch`` every process scores its share of the pairs and the
    main one writes the outputs and the report line. A job-array part scores its pairs into
    --out/pairs/ only; a later run without parts merges them and writes the outputs."""
    # lazy: torch
    from mambacontrol.evaluation.evaluate import EvaluationSettings, evaluate
    from mambacontrol.pipeline.shards import Shard, process_device

    settings = EvaluationSettings(
        split=args.split, pairs=args.pairs,
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        num_samples=args.num_samples, num_inference_steps=args.num_inference_steps,
        sampler=args.sampler, guidance=args.guidance, seed=args.seed, max_pairs=args.max_pairs,
        ceiling=args.ceiling, linear_fit=args.linear_fit,
        workers=args.workers)
    settings.check()
    shard = Shard.current(args.num_parts, args.part_id)
    device = device_from_flag(args.device)
    if shard.distributed and device == "cuda":
        device = process_device()  # each process its own GPU
    summary = evaluate(args.manifest, [args.model, *args.compare], args.out, settings,
                       command=["mambacontrol", *sys.argv[1:]], device=device,
                       overwrite=args.overwrite, shard=shard)
    n = max(summary["n_pairs"].values(), default=0)
    if shard.is_main and shard.part is not None:
        print(f"part {args.part_id} of {args.num_parts}: {n} pairs recorded in {args.out}/pairs "
              "(scored now or reused); run once without --num-parts/--part-id to merge and write "
              "the report")
    elif shard.is_main:
        print(f"evaluated {n} pairs × {len(summary['methods'])} methods; "
              f"report: {args.out}/report.html")
    return 0
