"""``mambacontrol demo``: cohort → training → prediction → evaluation report, on a laptop CPU."""

from __future__ import annotations

import argparse
import time

from mambacontrol.cli.atlas_cmd import run_info
from mambacontrol.cli.synth_cmd import default_workers
from mambacontrol.demo import DEMO_GRID, DEMO_SUBJECTS, run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole demonstration (synthetic cohort, training, prediction, report)",
        description="Simulate a small cohort on the real atlas, train every stage with "
                    "train/configs/demo.yaml, predict a test subject and evaluate the test split. "
                    "Finished steps are skipped when run again with the same --out.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--subjects", type=int, default=DEMO_SUBJECTS,
                   help=f"subjects in the synthetic cohort (default: {DEMO_SUBJECTS})")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel processes for the cohort (default: CPU count, at most 4)")
    p.add_argument("--pairs", choices=("all", "last"), default="all",
                   help="test pairs to evaluate: all (every earlier/later pair, the default) or "
                        "last (each subject's first and last visit, quicker); an evaluation "
                        "already in --out is kept")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="training config overrides, e.g. unet.train.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print("mambacontrol demo: bundled atlas")
    code = run_info(argparse.Namespace(name=None, verify=True))
    if code:
        return code
    print(f"\nmambacontrol demo: {args.subjects} synthetic subjects on the {DEMO_GRID} grid, "
          f"everything in {args.out}")
    workers = args.workers if args.workers is not None else default_workers()
    result = run_demo(args.out, args.subjects, workers, args.overrides, pairs=args.pairs)
    print(f"\ndone in {time.perf_counter() - start:.0f} s.")
    print(f"  report:     {result.report}")
    print(f"  prediction: {result.prediction} (montage.png per horizon)")
    print(f"  model:      {result.model} (mambacontrol predict --model {result.model} ...)")
    return 0
