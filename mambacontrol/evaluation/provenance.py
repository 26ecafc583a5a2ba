"""What produced a report: the exact command, the models, the data and the software versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence

from mambacontrol._version import package_versions


def collect_provenance(*, command: Sequence[str] | str | None = None,
                       models: Mapping[str, str | os.PathLike] | None = None,
                       manifest: str | os.PathLike | None = None,
                       split: str | None = None,
                       extra: Mapping[str, object] | None = None) -> dict:
    """A JSON-able record of how an evaluation was run.

    Args:
        command: the argv (quoted into one shell line) or the command line; default: this
            process's ``sys.argv``.
        models: method name → model directory.
        manifest: the manifest CSV.
        split: the evaluated split.
        extra: more facts to show (seed, samples, threshold...), shown as given.
    """
    if command is None:
        command = sys.argv
    line = command if isinstance(command, str) else shlex.join(str(c) for c in command)
    return {
        "command": line,
        "models": {str(k): str(v) for k, v in (models or {}).items()},
        "manifest": "" if manifest is None else str(manifest),
        "split": split or "",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": f"{platform.system()} {platform.machine()}",
        "versions": package_versions(),
        "extra": {str(k): str(v) for k, v in (extra or {}).items()},
    }
