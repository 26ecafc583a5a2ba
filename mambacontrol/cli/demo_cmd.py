"""``mambacontrol demo``: the end-to-end demonstration on the bundled atlas."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_SUBJECTS = 24
DEMO_GRID = "4mm"
DEMO_SEED = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demonstration on the bundled atlas")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--subjects", type=int, default=DEMO_SUBJECTS,
                   help=f"subjects in the synthetic cohort (default: {DEMO_SUBJECTS})")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel processes for the cohort (default: CPU count, at most 4)")
    p.set_defaults(func=run)


def build_demo_cohort(out: Path, subjects: int = DEMO_SUBJECTS, workers: int = 1):
    """The demo's synthetic cohort in ``out/cohort`` (4 mm grid, seed 0; rewritten on every run).

    Returns:
        its :class:`~mambacontrol.data.Manifest`.
    """
    from mambacontrol.synth import generate_cohort

    return generate_cohort(Path(out) / "cohort", subjects=subjects, seed=DEMO_SEED, grid=DEMO_GRID,
                           workers=workers, overwrite=True)


def run(args: argparse.Namespace) -> int:
    from mambacontrol.cli.atlas_cmd import run_info
    from mambacontrol.cli.synth_cmd import default_workers
    from mambacontrol.synth import format_summary, summarize_cohort

    print("mambacontrol demo: bundled atlas")
    code = run_info(argparse.Namespace(name=None, verify=True))
    if code:
        return code
    print(f"\nmambacontrol demo: synthetic cohort of {args.subjects} subjects on the {DEMO_GRID} grid "
          f"in {args.out}/cohort")
    workers = args.workers if args.workers is not None else default_workers()
    manifest = build_demo_cohort(Path(args.out), args.subjects, workers)
    print(format_summary(summarize_cohort(manifest)))
    print(f"  images, labels and manifest: {args.out}/cohort; figure: {args.out}/cohort/overview.png")
    return 0
