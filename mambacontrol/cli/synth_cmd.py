"""``mambacontrol synth``: simulate a longitudinal cohort on the bundled atlas."""

from __future__ import annotations

import argparse
import os

from mambacontrol.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="simulate a longitudinal cohort (images, labels, manifest with ground truth)",
        description="Simulate a longitudinal cohort on the bundled atlas: NIfTI images, label maps "
                    "and masks, manifest.csv with ground-truth regional volumes, cohort.json and "
                    "overview.png. The same seed gives the same files.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=20, help="number of subjects (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default: 0)")
    p.add_argument("--spacing", default="2", choices=("2", "1.5", "4"),
                   help="atlas grid in mm: 2 (96×112×96), 1.5 (120×144×120) or 4 "
                        "(48×56×48, quick; demo and tests) (default: 2)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel processes (default: CPU count, at most 4; results do not depend "
                        "on it)")
    p.add_argument("--visits", default="2-5",
                   help="visits per subject, N or MIN-MAX (default: 2-5)")
    p.add_argument("--split", default="70/10/20",
                   help="train/valid/test percentages of subjects (default: 70/10/20)")
    p.add_argument("--dynamics", default="network", choices=("network", "independent"),
                   help="network: atrophy spreads from each subject's epicentres along the anatomy "
                        "graph; independent: every region's rate drawn on its own (the generator "
                        "before network dynamics, for comparison) (default: network)")
    p.add_argument("--no-figure", action="store_true", help="do not write overview.png")
    p.add_argument("--overwrite", action="store_true", help="replace a cohort already in --out")
    p.set_defaults(func=run)


def parse_visits(text: str) -> tuple[int, int]:
    """``"3"`` → (3, 3); ``"2-5"`` → (2, 5)."""
    parts = text.replace(" ", "").split("-")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ConfigError(f"--visits '{text}' is not N or MIN-MAX; e.g. --visits 3 or --visits 2-5")
    return values[0], values[-1]


def parse_split(text: str) -> tuple[float, float, float]:
    """``"70/10/20"`` → (0.7, 0.1, 0.2) (any positive total is normalised)."""
    try:
        values = [float(v) for v in text.replace(",", "/").split("/")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise ConfigError(f"--split '{text}' is not three non-negative numbers TRAIN/VALID/TEST; "
                          "e.g. --split 70/10/20")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def run(args: argparse.Namespace) -> int:
    from mambacontrol.synth import (  # lazy: keeps --help free of scipy and the simulator
        format_summary,
        generate_cohort,
        grid_for_spacing,
        summarize_cohort,
    )

    manifest = generate_cohort(
        args.out, subjects=args.subjects, seed=args.seed, grid=grid_for_spacing(args.spacing),
        visits=parse_visits(args.visits), split=parse_split(args.split),
        workers=args.workers if args.workers is not None else default_workers(),
        figure=not args.no_figure, overwrite=args.overwrite, dynamics=args.dynamics)
    print(f"wrote {args.out}/manifest.csv, cohort.json"
          + ("" if args.no_figure else ", overview.png"))
    print(format_summary(summarize_cohort(manifest)))
    return 0
