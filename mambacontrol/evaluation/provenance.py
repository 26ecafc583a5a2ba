"""What produced a report: the exact command, the models, the data and the software versions."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence

PACKAGES = ("mambacontrol", "torch", "monai", "numpy", "scipy", "nibabel", "diffusers",
            "torch-geometric", "antspyx", "matplotlib", "jinja2")


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` when absent), plus Python's."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


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
