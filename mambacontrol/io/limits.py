"""Resource limits checked before the resources are spent.

Each limit has a name, a default sized for this package's real uses, and two ways to raise it:
the environment variable ``MAMBACONTROL_<NAME>`` (e.g. ``MAMBACONTROL_MAX_VOXELS=300000000``) or,
on the command line, ``mambacontrol --limit <name>=<value> ...``. A check that fails raises
:class:`ResourceLimitError`, one line naming the value, the limit and how to raise it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from mambacontrol.errors import MambaControlError


class ResourceLimitError(MambaControlError):
    """An input asks for more than a named resource limit allows."""


@dataclass(frozen=True)
class Limit:
    """A named limit: its default and what it bounds."""

    name: str
    default: float
    what: str

    @property
    def env(self) -> str:
        return f"MAMBACONTROL_{self.name.upper()}"


LIMITS: dict[str, Limit] = {lim.name: lim for lim in (
    # a 0.5 mm isotropic whole head (512 x 512 x 400) is about 1.1e8 voxels
    Limit("max_voxels", 2.0 ** 28, "voxels in one image, as its header declares them"),
    # BrLP's UNet, the largest peer network, has 5.5e8 parameters
    Limit("max_model_parameters", 2.0e9,
          "parameters of one model component, as its config builds it"),
    Limit("max_samples", 256, "samples averaged per prediction"),
    Limit("max_steps", 1000, "sampler steps per sample"),
)}

_overrides: dict[str, float] = {}


def limit(name: str) -> float:
    """The current value of a limit: a ``--limit`` override, else the environment, else the
    default."""
    spec = LIMITS[name]
    if name in _overrides:
        return _overrides[name]
    raw = os.environ.get(spec.env)
    if raw:
        return _parse(name, raw, f"${spec.env}")
    return spec.default


def _parse(name: str, raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise MambaControlError(f"{where}: limit {name} = '{raw}' is not a number") from None
    if not value > 0 or value == float("inf"):
        raise MambaControlError(f"{where}: limit {name} = '{raw}' must be a positive finite number")
    return value


def set_limits(assignments: Iterable[str]) -> None:
    """Apply ``name=value`` overrides (the CLI's ``--limit``) for this process."""
    for item in assignments:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in LIMITS:
            raise MambaControlError(f"--limit '{item}': give NAME=VALUE with NAME one of "
                                    f"{', '.join(LIMITS)}")
        _overrides[name] = _parse(name, raw.strip(), "--limit")


def reset_limits() -> None:
    """Forget every ``--limit`` override (for tests and long-lived processes)."""
    _overrides.clear()


def check_limit(name: str, value: float, subject: str) -> None:
    """Raise :class:`ResourceLimitError` when ``value`` exceeds the limit ``name``.

    Args:
        name: a key of :data:`LIMITS`.
        value: what the input asks for.
        subject: what asks for it, e.g. ``"scan.nii.gz: header declares 30000x30000x30000 voxels"``.
    """
    bound = limit(name)
    if value > bound:
        spec = LIMITS[name]
        raise ResourceLimitError(
            f"{subject} ({value:.3g}), above the limit {name} = {bound:.3g} ({spec.what}); if "
            f"this is intended, raise it with --limit {name}=N or ${spec.env}")
