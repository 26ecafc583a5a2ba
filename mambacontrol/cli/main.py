"""``mambacontrol`` command: parses arguments, calls the library, prints errors in one line.

Subcommands import what they need when they run, so ``mambacontrol --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mambacontrol._version import __version__
from mambacontrol.cli import (
    atlas_cmd,
    demo_cmd,
    evaluate_cmd,
    manifest_cmd,
    predict_cmd,
    synth_cmd,
    train_cmd,
)
from mambacontrol.errors import MambaControlError

COMMANDS = (atlas_cmd, manifest_cmd, synth_cmd, train_cmd, predict_cmd, evaluate_cmd, demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambacontrol",
        description="Predict how a brain MRI changes with Alzheimer's disease "
                    "(latent diffusion + Mamba ControlNet + anatomy graph).")
    parser.add_argument("--version", action="version", version=f"mambacontrol {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`train all --config X a.b=1`); argparse leaves them
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except MambaControlError as exc:
        print(f"mambacontrol: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mambacontrol: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
