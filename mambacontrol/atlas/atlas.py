"""Bundled atlases: template, tissue maps, label map and region table on fixed grids."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from mambacontrol.errors import InputFileError, MambaControlError
from mambacontrol.io import Grid, Volume, load_nifti
from mambacontrol.io.digest import sha256_file

DEFAULT_ATLAS = "icbm152-2009a-nmm"
DEFAULT_GRID = "2mm"
ATLAS_PATH_ENV = "MAMBACONTROL_ATLAS_PATH"
MAPS = ("t1", "mask", "gm", "wm", "csf", "labels")
ATLAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""An atlas id: a plain folder name, so that an id read from a model's index cannot point outside
the atlas folders (no separators, no leading dot, so no ``..``)."""


@dataclass(frozen=True)
class Region:
    """One atlas region (a row of ``regions.csv``)."""

    label: int
    name: str
    hemisphere: str  # left | right | midline
    group: str  # hemisphere-free structure, e.g. "hippocampus"
    lobe: str
    tissue: str  # gm | wm | csf


def atlas_search_path() -> list[Path]:
    """Folders searched for atlases: ``$MAMBACONTROL_ATLAS_PATH``, the installed copy, the
    checkout."""
    dirs = [Path(p) for p in os.environ.get(ATLAS_PATH_ENV, "").split(os.pathsep) if p]
    here = Path(__file__).resolve()
    dirs += [here.parents[1] / "_atlases", here.parents[2] / "atlases"]
    return [d for d in dirs if d.is_dir()]


def list_atlases() -> list[str]:
    """Names of every atlas found on the search path (first occurrence wins)."""
    names: list[str] = []
    for folder in atlas_search_path():
        for meta in sorted(folder.glob("*/atlas.json")):
            if meta.parent.name not in names:
                names.append(meta.parent.name)
    return names


def _find(name: str) -> Path:
    if not isinstance(name, str) or not ATLAS_NAME.fullmatch(name):
        raise MambaControlError(
            f"atlas name {name!r} is not a plain folder name (letters, digits, '.', '-', '_'); "
            f"give one of {', '.join(list_atlases()) or 'none'}")
    for folder in atlas_search_path():
        if (folder / name / "atlas.json").is_file():
            return folder / name
    raise MambaControlError(
        f"unknown atlas '{name}'; available: {', '.join(list_atlases()) or 'none'} "
        f"(add folders to ${ATLAS_PATH_ENV} to find others)")


class Atlas:
    """An atlas on one of its grids. Maps load lazily, once.

    Attributes:
        id: atlas name, e.g. ``icbm152-2009a-nmm``.
        grid_name: e.g. ``2mm`` or ``1p5mm``.
        grid: shape and affine of the maps.
        regions: region table, sorted by label.
        key_groups: named label sets (``hippocampus``, ``lateral_ventricles``, ``whole_brain``...).
    """

    def __init__(self, root: Path, grid_name: str = DEFAULT_GRID):
        self.root = Path(root)
        self.meta = json.loads((self.root / "atlas.json").read_text())
        self.id: str = self.meta["id"]
        if grid_name not in self.meta["grids"]:
            raise MambaControlError(
                f"atlas '{self.id}' has no grid '{grid_name}'; available: "
                f"{', '.join(self.meta['grids'])}")
        self.grid_name = grid_name
        g = self.meta["grids"][grid_name]
        self.grid = Grid(tuple(g["shape"]), np.asarray(g["affine"], dtype=np.float64))
        self.regions = self._read_regions()
        self.key_groups: dict[str, list[int]] = {k: list(v)
                                                 for k, v in self.meta["key_groups"].items()}

    def _read_regions(self) -> list[Region]:
        with open(self.root / "regions.csv", newline="") as fh:
            rows = [Region(int(r["label"]), r["name"], r["hemisphere"], r["group"],
                           r["lobe"], r["tissue"])
                    for r in csv.DictReader(fh)]
        return sorted(rows, key=lambda r: r.label)

    def __repr__(self) -> str:
        return (f"Atlas({self.id!r}, grid={self.grid_name!r}, shape={self.grid.shape}, "
                f"regions={len(self.regions)})")

    @property
    def spacing(self) -> float:
        return float(self.meta["grids"][self.grid_name]["spacing_mm"])

    @property
    def licence(self) -> dict[str, str]:
        """The licences of the atlas's sources (``template``, ``labels``, ``use``), from atlas.json;
        empty when the atlas does not state them."""
        return {str(k): str(v) for k, v in dict(self.meta.get("licence") or {}).items()}

    @property
    def voxel_volume(self) -> float:
        return self.spacing**3

    def path(self, map_name: str) -> Path:
        if map_name not in MAPS:
            raise MambaControlError(f"unknown atlas map '{map_name}'; choose one of "
                                    f"{', '.join(MAPS)}")
        return self.root / self.grid_name / f"{map_name}.nii.gz"

    def _load(self, map_name: str) -> np.ndarray:
        vol = load_nifti(self.path(map_name), labels=map_name in ("labels", "mask"))
        if not Grid.of(vol).same_as(self.grid):
            raise InputFileError(f"{self.path(map_name)}: grid differs from atlas.json; rebuild "
                                 "the atlas")
        data = vol.data
        data.setflags(write=False)
        return data

    @cached_property
    def template(self) -> np.ndarray:
        """(X, Y, Z) float32 brain-extracted T1 template, intensities normalised to [0, 1]."""
        return self._load("t1")

    @cached_property
    def mask(self) -> np.ndarray:
        """(X, Y, Z) bool brain mask."""
        m = self._load("mask") > 0
        m.setflags(write=False)
        return m

    @cached_property
    def gm(self) -> np.ndarray:
        """(X, Y, Z) float32 grey-matter fraction."""
        return self._load("gm")

    @cached_property
    def wm(self) -> np.ndarray:
        """(X, Y, Z) float32 white-matter fraction."""
        return self._load("wm")

    @cached_property
    def csf(self) -> np.ndarray:
        """(X, Y, Z) float32 CSF fraction (mask − GM − WM)."""
        return self._load("csf")

    @cached_property
    def labels(self) -> np.ndarray:
        """(X, Y, Z) int32 region label map (0 = background)."""
        return self._load("labels")

    def volume(self, map_name: str) -> Volume:
        """One map as a :class:`Volume` with the grid's affine."""
        return Volume(np.array(getattr(self, "template" if map_name == "t1" else map_name)),
                      self.grid.affine.copy(), self.path(map_name))

    @property
    def label_ids(self) -> list[int]:
        return [r.label for r in self.regions]

    def region(self, label: int) -> Region:
        for r in self.regions:
            if r.label == label:
                return r
        raise MambaControlError(f"atlas '{self.id}' has no region with label {label}")

    def group_names(self) -> list[str]:
        """Hemisphere-free structure names, in first-label order."""
        seen: list[str] = []
        for r in self.regions:
            if r.group not in seen:
                seen.append(r.group)
        return seen

    def labels_in_group(self, group: str) -> list[int]:
        ids = [r.label for r in self.regions if r.group == group]
        if not ids:
            raise MambaControlError(f"atlas '{self.id}' has no region group '{group}'")
        return ids

    def region_volumes(self, labels: np.ndarray | None = None) -> dict[int, float]:
        """Volume in mm³ of every region in a label map on this grid (default: the atlas's own)."""
        lab = self.labels if labels is None else labels
        counts = np.bincount(lab.ravel(), minlength=max(self.label_ids) + 1)
        return {i: float(counts[i]) * self.voxel_volume for i in self.label_ids}

    def key_group_volumes(self, labels: np.ndarray | None = None) -> dict[str, float]:
        """Volume in mm³ of every key group (sum over its labels)."""
        vols = self.region_volumes(labels)
        return {k: sum(vols[i] for i in ids) for k, ids in self.key_groups.items()}

    @cached_property
    def checksum(self) -> str:
        """SHA-256 over this grid's map checksums and the region table, as recorded in
        atlas.json."""
        g = self.meta["grids"][self.grid_name]["sha256"]
        parts = [self.id, self.grid_name, self.meta["regions_sha256"]] + [g[m] for m in MAPS]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def verify(self) -> None:
        """Check every file of this grid against the checksums in atlas.json.

        Raises:
            InputFileError: naming the first file whose content differs.
        """
        expected = self.meta["grids"][self.grid_name]["sha256"]
        for m in MAPS:
            if sha256_file(self.path(m)) != expected[m]:
                raise InputFileError(f"{self.path(m)}: checksum differs from atlas.json; "
                                     "rebuild with atlases/build_atlas.py")
        if sha256_file(self.root / "regions.csv") != self.meta["regions_sha256"]:
            raise InputFileError(f"{self.root / 'regions.csv'}: checksum differs from atlas.json")


def load_atlas(name: str = DEFAULT_ATLAS, grid: str = DEFAULT_GRID) -> Atlas:
    """Load a bundled atlas by name on one of its grids (``2mm``, ``1p5mm``)."""
    return Atlas(_find(name), grid)
