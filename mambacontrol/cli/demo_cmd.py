"""``mambacontrol demo``: the end-to-end demonstration on the bundled atlas."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demonstration on the bundled atlas")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambacontrol.cli.atlas_cmd import run_info

    print("mambacontrol demo: bundled atlas")
    return run_info(argparse.Namespace(name=None, verify=True))
