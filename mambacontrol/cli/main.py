"""``mambacontrol`` command: parses arguments, calls the library, prints errors in one line.

Subcommands import what they need when they run, so ``mambacontrol --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from mambacontrol._version import __version__
from mambacontrol.cli import (
    atlas_cmd,
    calibrate_cmd,
    demo_cmd,
    evaluate_cmd,
    manifest_cmd,
    predict_cmd,
    synth_cmd,
    train_cmd,
)
from mambacontrol.errors import MambaControlError

COMMANDS = (atlas_cmd, manifest_cmd, synth_cmd, train_cmd, predict_cmd, evaluate_cmd, calibrate_cmd,
            demo_cmd)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where the help is."""

    def error(self, message: str):
        self.exit(2, f"mambacontrol: error: {message} (see `{self.prog} --help`)\n")


def _threads(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads {value!r} is not a whole number ≥ 1")
    return n


def add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after the command's name.

    The top-level parser holds the defaults; each subcommand's copy defaults to
    ``argparse.SUPPRESS``, so it sets a value only when given there and never overwrites the one
    given before the command. ``--limit`` after the command goes to ``limit_after`` (merged in
    :func:`main`), so limits given in both places all count.
    """
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    group = parser.add_argument_group("global options (before or after the command)")
    taken = set(parser._option_string_actions)  # a command's own option of that name wins

    def add(*names: str, **kwargs) -> None:
        free = [n for n in names if n not in taken]
        if free:
            group.add_argument(*free, **kwargs)

    add("-v", "--verbose", dest="verbose", action="store_true", default=default(False),
        help="debug logging (and the traceback of an error)")
    add("-q", "--quiet", dest="quiet", action="store_true", default=default(False),
        help="warnings and errors only")
    add("--threads", dest="threads", type=_threads, default=default(None), metavar="N",
        help="CPU threads for torch, OpenMP and ANTs/ITK registration (default: their own choice)")
    add("--limit", action="append", default=default([]), metavar="NAME=VALUE",
        dest="limit" if top else "limit_after",
        help="raise a resource limit for this run: max_voxels (per image), max_model_parameters, "
             "max_samples, max_steps (also $MAMBACONTROL_<NAME>)")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (nested) subcommand parser of ``parser``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found += [sub, *_subparsers(sub)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mambacontrol",
        description="Predict how a brain MRI changes with Alzheimer's disease "
                    "(latent diffusion + Mamba ControlNet + anatomy graph).")
    parser.add_argument("--version", action="version", version=f"mambacontrol {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    for subparser in _subparsers(parser):
        add_global_options(subparser, top=False)
    return parser


def set_threads(n: int | None) -> None:
    """``--threads N``: torch's intra-op threads, and the environment that OpenMP/MKL and ITK
    (ANTs registration, which reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when it first
    runs) read: set before any command imports them."""
    if n is None:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(n)
    import torch  # lazy: keeps --help free of torch

    torch.set_num_threads(n)


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
    args.limit = list(args.limit) + list(getattr(args, "limit_after", []))
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # lazy: mambacontrol.io loads nibabel and numpy, which --help skips
    from mambacontrol.io.limits import reset_limits, set_limits

    try:
        set_limits(args.limit)
        set_threads(args.threads)
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
            s in str(exc) for s in ("out of memory", "can't allocate memory",
                                    "not enough memory"))):
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
