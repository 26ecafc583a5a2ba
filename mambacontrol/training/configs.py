"""The bundled training configs (``train/configs/*.yaml``), found in a checkout or an install."""

from __future__ import annotations

from pathlib import Path

from mambacontrol.errors import ConfigError


def config_folders() -> list[Path]:
    here = Path(__file__).resolve()
    return [d for d in (here.parents[1] / "_configs", here.parents[2] / "train" / "configs") if d.is_dir()]


def bundled_config(name: str) -> Path:
    """Path of a bundled config by name (``demo``, ``synthetic-2mm``, ``brain-1p5mm``).

    Raises:
        ConfigError: naming the available configs.
    """
    for folder in config_folders():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    names = sorted({p.stem for f in config_folders() for p in f.glob("*.yaml")})
    raise ConfigError(f"no bundled config '{name}'; available: {', '.join(names) or 'none'}")
