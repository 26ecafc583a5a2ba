"""``mambacontrol manifest check``: validate a manifest and summarise it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="validate a manifest CSV")
    msub = p.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    pc = msub.add_parser("check", help="validate a manifest and print subjects, visits and pairs")
    pc.add_argument("csv", help="manifest CSV")
    pc.add_argument("--no-files", action="store_true", help="do not check that image files exist")
    pc.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from mambacontrol.data import DIAGNOSES, SPLITS, Manifest

    m = Manifest.from_csv(args.csv, check_files=not args.no_files)
    pairs = m.pairs()
    print(f"{args.csv}: valid; {len(m.subjects())} subjects, {len(m)} visits, {len(pairs)} visit pairs")
    print(f"  {'split':<8}" + "".join(f"{d:>6}" for d in DIAGNOSES) + f"{'visits':>8}")
    for split in SPLITS:
        sel = m.select(split)
        if len(sel) == 0:
            continue
        baseline = {s: vs[0] for s, vs in sel.by_subject().items()}
        counts = [sum(v.diagnosis == d for v in baseline.values()) for d in DIAGNOSES]
        print(f"  {split:<8}" + "".join(f"{c:>6}" for c in counts) + f"{len(sel):>8}")
    print("  (diagnosis columns count subjects by baseline diagnosis)")
    return 0
