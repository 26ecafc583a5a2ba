"""The bundled training configs (``train/configs/*.yaml``), found in a checkout or an install."""

from __future__ import annotations

import os
from pathlib import Path

from mambacontrol.errors import ConfigError


def config_folders() -> list[Path]:
    here = Path(__file__).resolve()
    candidates = (here.parents[1] / "_configs", here.parents[2] / "train" / "configs")
    return [d for d in candidates if d.is_dir()]


def bundled_config(name: str) -> Path:
    """Path of a bundled config by name (``demo``, ``synthetic-2mm``, ``synthetic-2mm-folded``,
    ``synthetic-2mm-4x``, ``brain-1p5mm``, ``brain-1p5mm-cpu``).

    Raises:
        ConfigError: naming the available configs.
    """
    for folder in config_folders():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"no bundled config '{name}'; available: "
                      f"{', '.join(bundled_names()) or 'none'}")


def bundled_names() -> list[str]:
    """Names of the bundled configs."""
    return sorted({p.stem for f in config_folders() for p in f.glob("*.yaml")})


def resolve_config_path(value: str | os.PathLike) -> Path:
    """A config given as a YAML path or as a bundled config's name (``synthetic-2mm`` or
    ``synthetic-2mm.yaml``); a file that exists wins over a bundled config of the same name.

    Raises:
        ConfigError: neither a file nor a bundled name, naming the bundled configs.
    """
    path = Path(value)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config {str(value)!r} is a folder; give a YAML file or a bundled "
                          f"config's name ({', '.join(bundled_names()) or 'none'})")
    name = str(value)
    if not any(sep in name for sep in ("/", os.sep)):
        stem = name.removesuffix(".yaml").removesuffix(".yml")
        for folder in config_folders():
            if (folder / f"{stem}.yaml").is_file():
                return folder / f"{stem}.yaml"
    raise ConfigError(f"config {name!r} is neither a file nor a bundled config; give a YAML path "
                      f"or one of the bundled names: {', '.join(bundled_names()) or 'none'}")
