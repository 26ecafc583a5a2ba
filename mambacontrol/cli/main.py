"""``mambacontrol`` command: parses arguments, calls the library, prints errors in one line.

Subcommands import what they need when they run, so ``mambacontrol --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where the help is."""

    def error(self, message: str):
        self.exit(2, f"mambacontrol: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mambacontrol",
        description="Predict how a brain MRI changes with Alzheimer's disease "
                    "(latent diffusion + Mamba ControlNet + anatomy graph).")
    parser.add_argument("--version", action="version", version=f"mambacontrol {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                        help="raise a resource limit for this run: max_voxels (per image), "
                             "max_model_parameters, max_samples, max_steps (also "
                             "$MAMBACONTROL_<NAME>)")
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
    # imported here, not at the top: mambacontrol.io loads nibabel and numpy, which --help skips
    from mambacontrol.io.limits import reset_limits, set_limits

    try:
        set_limits(args.limit)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mambacontrol: interrupted", file=sys.stderr)
        return 130
    except (MambaControlError, OSError, MemoryError, ValueError, RuntimeError) as exc:
        message = failure_message(exc)
        if message is None:  # not an expected failure: a bug, shown in full
            raise
        logging.getLogger("mambacontrol").debug("details", exc_info=True)
        print(f"mambacontrol: error: {message}", file=sys.stderr)
        return 2
    finally:
        reset_limits()


def failure_message(exc: BaseException) -> str | None:
    """One line for an expected failure (bad input, the file system, memory), or None for a bug.

    Every message names the problem and the fix; ``-v`` also logs the traceback.
    """
    if isinstance(exc, MambaControlError):
        return str(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(
            s in str(exc) for s in ("out of memory", "can't allocate memory", "not enough memory"))):
        return ("out of memory; use fewer --samples, a smaller grid or a machine with more memory "
                "(or a GPU with --device cuda)")
    if isinstance(exc, UnicodeError):
        return (f"a text file is not UTF-8 ({exc.reason} at byte {getattr(exc, 'start', '?')}); "
                "re-save it as UTF-8")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        fixes = {errno.ENOSPC: "free disk space or choose another --out",
                 errno.EDQUOT: "free disk space or choose another --out",
                 errno.EACCES: "check the permissions, or choose another --out",
                 errno.EPERM: "check the permissions, or choose another --out",
                 errno.EROFS: "the file system is read-only: choose another --out",
                 errno.ENOENT: "check the path",
                 errno.EISDIR: "give a file, not a folder",
                 errno.ENOTDIR: "a part of the path is a file, not a folder: check the path"}
        fix = fixes.get(exc.errno, "check the path and the disk")
        return f"{exc.strerror or exc}{where}; {fix}"
    if isinstance(exc, ValueError) and not isinstance(exc, RuntimeError):
        return f"invalid value ({exc}); check the arguments and input files"
    return None


if __name__ == "__main__":
    sys.exit(main())
