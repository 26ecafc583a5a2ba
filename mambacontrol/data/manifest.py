"""The manifest CSV real users bring (BrLP-compatible), its validation, and visit pairs.

Schema, one row per scan:

============  =========================================================================
column        meaning
============  =========================================================================
subject_id    subject identifier (visits of one subject share it)
image_uid     unique scan identifier
image_path    T1 NIfTI; absolute, or relative to the CSV's folder
age           age in years at the scan (BrLP's age/100 is refused with a hint)
sex           ``F``/``M`` (also ``female``/``male``, or BrLP's 1 = female, 0 = male)
diagnosis     ``CN``/``MCI``/``AD``, also as cohorts write them (:func:`normalize_diagnosis`)
split         ``train``/``valid``/``test`` (``val``/``validation`` accepted)
segm_path     optional label map, same rules as image_path; in the atlas's label ids or
              FreeSurfer's (aseg, aparc+aseg, SynthSeg, FastSurfer: ``atlas.segformats``)
============  =========================================================================

Other columns are kept verbatim in :attr:`Visit.extra` (the synthetic cohort adds ground truth).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mambacontrol.errors import ManifestError
from mambacontrol.io.tables import csv_uncell, write_csv

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("subject_id", "image_uid", "image_path", "age", "sex", "diagnosis", "split")
OPTIONAL_COLUMNS = ("segm_path",)
DIAGNOSES = ("CN", "MCI", "AD")
SEXES = ("F", "M")
SPLITS = ("train", "valid", "test")
MIN_AGE, MAX_AGE = 18.0, 120.0
"""A plausible adult's age in years: what a manifest (or a BIDS participants table) may hold.
Prediction accepts a narrower range, the model's own (``pipeline.scan_prediction.MIN_MODEL_AGE``
–``MAX_MODEL_AGE``, 40–100): another fact."""

_SEX_ALIASES = {"f": "F", "female": "F", "1": "F", "1.0": "F",
                "m": "M", "male": "M", "0": "M", "0.0": "M"}
_DX_ALIASES: dict[str, tuple[str, str]] = {
    # spelling (lower case; '-', '_' read as spaces, apostrophes dropped) -> (diagnosis, source)
    "cn": ("CN", ""), "mci": ("MCI", ""), "ad": ("AD", ""),
    "0": ("CN", "BrLP's 0"), "0.0": ("CN", "BrLP's 0"),
    "0.5": ("MCI", "BrLP's 0.5"), ".5": ("MCI", "BrLP's 0.5"),
    "1": ("AD", "BrLP's 1"), "1.0": ("AD", "BrLP's 1"),
    "nc": ("CN", "normal control"), "hc": ("CN", "healthy control"),
    "normal": ("CN", "cognitively normal"), "normal control": ("CN", "normal control"),
    "healthy": ("CN", "healthy control"), "healthy control": ("CN", "healthy control"),
    "control": ("CN", "control"), "cognitively normal": ("CN", "cognitively normal"),
    "smc": ("CN", "ADNI's significant memory concern"),
    "scd": ("CN", "subjective cognitive decline"),
    "emci": ("MCI", "ADNI's early MCI"), "early mci": ("MCI", "ADNI's early MCI"),
    "lmci": ("MCI", "ADNI's late MCI"), "late mci": ("MCI", "ADNI's late MCI"),
    "mild cognitive impairment": ("MCI", "mild cognitive impairment"),
    "dementia": ("AD", "dementia"), "ad dementia": ("AD", "AD dementia"),
    "alzheimers": ("AD", "Alzheimer's disease"),
    "alzheimers disease": ("AD", "Alzheimer's disease"),
    "alzheimer disease": ("AD", "Alzheimer's disease"),
    "alzheimers dementia": ("AD", "Alzheimer's dementia"),
}
_DX_LOGGED: set[str] = set()
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                  "validation": "valid", "test": "test", "testing": "test"}


def normalize_sex(value: str) -> str:
    """``F``/``M`` from the accepted spellings; raises ValueError otherwise."""
    out = _SEX_ALIASES.get(str(value).strip().lower())
    if out is None:
        raise ValueError(f"sex '{value}' is not one of F, M (or female/male, 1 = female, 0 = male)")
    return out


def normalize_diagnosis(value: str) -> str:
    """``CN``/``MCI``/``AD`` from the accepted spellings; raises ValueError otherwise.

    Accepted besides CN, MCI, AD (case, ``-``/``_``/spaces and apostrophes do not matter): BrLP's
    0 / 0.5 / 1; ADNI's EMCI, LMCI (→ MCI) and SMC (→ CN); SCD (→ CN); NC, HC, normal, healthy
    control, cognitively normal (→ CN); early/late MCI, mild cognitive impairment (→ MCI); dementia,
    AD dementia, Alzheimer's (disease/dementia) (→ AD). Each spelling other than CN/MCI/AD is
    logged once per process (INFO), e.g. ``diagnosis 'LMCI' read as MCI (ADNI's late MCI)``.
    """
    raw = str(value).strip()
    key = " ".join(raw.lower().replace("-", " ").replace("_", " ").replace("'", "")
                   .replace("\u2019", "").split())
    hit = _DX_ALIASES.get(key)
    if hit is None:
        raise ValueError(f"diagnosis '{value}' is not one of CN, MCI, AD (or 0, 0.5, 1; EMCI, "
                         "LMCI, SMC, SCD, NC, HC, dementia, Alzheimer's are also read)")
    dx, source = hit
    if source and raw not in _DX_LOGGED:
        _DX_LOGGED.add(raw)
        log.info("diagnosis '%s' read as %s (%s)", raw, dx, source)
    return dx


@dataclass(frozen=True)
class Visit:
    """One scan of one subject."""

    subject_id: str
    image_uid: str
    image_path: Path
    age: float
    sex: str
    diagnosis: str
    split: str
    segm_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class VisitPair:
    """An (earlier, later) pair of visits of one subject."""

    earlier: Visit
    later: Visit

    @property
    def subject_id(self) -> str:
        return self.earlier.subject_id

    @property
    def years(self) -> float:
        """Δt in years between the two visits."""
        return self.later.age - self.earlier.age


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value.strip()))
    return p if p.is_absolute() else (base / p)


class Manifest:
    """A validated list of visits.

    Args:
        visits: the rows.
        path: the CSV it came from, if any (relative paths were resolved against its folder).
    """

    def __init__(self, visits: Iterable[Visit], path: Path | None = None):
        self.visits: list[Visit] = list(visits)
        self.path = path

    def __len__(self) -> int:
        return len(self.visits)

    def __iter__(self) -> Iterator[Visit]:
        return iter(self.visits)

    def __repr__(self) -> str:
        return f"Manifest({len(self.visits)} visits, {len(self.subjects())} subjects)"

    @classmethod
    def from_csv(cls, path: str | os.PathLike, *, check_files: bool = True,
                 require_split: bool = True) -> Manifest:
        """Read and validate a manifest.

        Args:
            path: the CSV.
            check_files: fail when an image or segmentation file does not exist.
            require_split: fail when the ``split`` column is missing (prediction does not need it;
                then every row's split is ``""``).

        Raises:
            ManifestError: naming the file, row (1 = first data row) and column of the first
                problem.
        """
        p = Path(path)
        if not p.is_file():
            raise ManifestError(f"{p}: manifest not found; check the path")
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[: exc.start].count(b"\n") + 1
            raise ManifestError(f"{p}: line {line} is not UTF-8 text "
                                f"(byte 0x{exc.object[exc.start]:02x}); "
                                "re-save the CSV as UTF-8") from None
        except OSError as exc:
            raise ManifestError(f"{p}: cannot read the manifest ({exc.strerror}); check the path "
                                "and its permissions") from None
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            header = [h.strip() for h in (reader.fieldnames or [])]
            required = REQUIRED_COLUMNS if require_split else tuple(
                c for c in REQUIRED_COLUMNS if c != "split")
            missing = [c for c in required if c not in header]
            if missing:
                raise ManifestError(
                    f"{p}: missing column(s) {', '.join(missing)}; "
                    f"found {', '.join(header) or 'none'}. "
                    f"A manifest needs {', '.join(REQUIRED_COLUMNS)} (segm_path optional)")
            rows = [{(k or "").strip(): csv_uncell(v if isinstance(v, str) else "")
                     for k, v in r.items()} for r in reader]
        except csv.Error as exc:
            raise ManifestError(f"{p}: not a readable CSV ({exc}); re-save it as CSV") from None
        if not rows:
            raise ManifestError(f"{p}: manifest has a header but no rows")
        visits = [cls._parse_row(p, i + 1, row, check_files) for i, row in enumerate(rows)]
        manifest = cls(visits, p)
        manifest._check_consistency()
        return manifest

    @staticmethod
    def _parse_row(p: Path, row_no: int, row: dict[str, str], check_files: bool) -> Visit:
        def bad(col: str, msg: str) -> ManifestError:
            return ManifestError(f"{p}: row {row_no}, column '{col}': {msg}")

        for col in ("subject_id", "image_uid", "image_path"):
            if not row.get(col, "").strip():
                raise bad(col, "is empty")
        try:
            age = float(row["age"])
        except ValueError:
            raise bad("age", f"'{row['age']}' is not a number (age in years)") from None
        if not math.isfinite(age):
            raise bad("age", f"'{row['age']}' is not a finite number")
        if 0 < age <= 1.2:
            raise bad("age", f"{age:g} looks like BrLP's age/100; give the age in years (× 100)")
        if not MIN_AGE <= age <= MAX_AGE:
            raise bad("age", f"{age:g} is outside {MIN_AGE:g}–{MAX_AGE:g} years")
        try:
            sex = normalize_sex(row["sex"])
        except ValueError as exc:
            raise bad("sex", str(exc)) from None
        try:
            dx = normalize_diagnosis(row["diagnosis"])
        except ValueError as exc:
            raise bad("diagnosis", str(exc)) from None
        split = ""
        if "split" in row:
            split = _SPLIT_ALIASES.get(row["split"].strip().lower(), "")
            if not split:
                raise bad("split", f"'{row['split']}' is not one of train, valid, test")
        image = _resolve(p.parent, row["image_path"])
        if check_files and not image.is_file():
            raise bad("image_path", f"file {image} not found")
        segm = None
        if row.get("segm_path", "").strip():
            segm = _resolve(p.parent, row["segm_path"])
            if check_files and not segm.is_file():
                raise bad("segm_path", f"file {segm} not found")
        extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
        return Visit(row["subject_id"].strip(), row["image_uid"].strip(), image, age, sex, dx,
                     split, segm, extra)

    def _check_consistency(self) -> None:
        where = f"{self.path}: " if self.path else ""
        seen: dict[str, int] = {}
        for i, v in enumerate(self.visits, start=1):
            if v.image_uid in seen:
                raise ManifestError(f"{where}row {i}, column 'image_uid': '{v.image_uid}' repeats "
                                    f"row {seen[v.image_uid]}; image_uid must be unique")
            seen[v.image_uid] = i
        first: dict[str, tuple[int, Visit]] = {}
        for i, v in enumerate(self.visits, start=1):
            if v.subject_id not in first:
                first[v.subject_id] = (i, v)
                continue
            j, w = first[v.subject_id]
            if v.sex != w.sex:
                raise ManifestError(f"{where}row {i}, column 'sex': subject '{v.subject_id}' is "
                                    f"{w.sex} in row {j} and {v.sex} here; one sex per subject")
            if v.split != w.split:
                raise ManifestError(f"{where}row {i}, column 'split': subject '{v.subject_id}' is "
                                    f"in '{w.split}' in row {j} and '{v.split}' here; split by "
                                    "subject")

    def to_csv(self, path: str | os.PathLike, *, relative_to: Path | None = None) -> Path:
        """Write the manifest atomically; paths relative to ``relative_to`` (default: the CSV's
        folder)."""
        out = Path(path)
        base = (relative_to or out.parent).resolve()
        extra_cols: list[str] = []
        for v in self.visits:
            extra_cols += [k for k in v.extra if k not in extra_cols]
        cols = list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS) + extra_cols

        def rel(q: Path | None) -> str:
            if q is None:
                return ""
            try:
                return str(q.resolve().relative_to(base))
            except ValueError:
                return str(q.resolve())

        rows = [[v.subject_id, v.image_uid, rel(v.image_path), f"{v.age:.4f}", v.sex, v.diagnosis,
                 v.split, rel(v.segm_path)] + [v.extra.get(c, "") for c in extra_cols]
                for v in self.visits]
        return write_csv(out, cols, rows)

    def subjects(self) -> list[str]:
        """Subject ids in order of first appearance."""
        return list(dict.fromkeys(v.subject_id for v in self.visits))

    def mask_path(self, visit: Visit) -> Path | None:
        """The visit's brain mask (its ``mask_path`` column, relative to the manifest's folder
        or absolute), or None without one."""
        raw = visit.extra.get("mask_path", "").strip()
        if not raw:
            return None
        return _resolve(self.path.parent if self.path is not None else Path(), raw)

    def select(self, split: str | None = None) -> Manifest:
        """The visits of one split (``None``: all)."""
        if split is None:
            return Manifest(self.visits, self.path)
        if split not in SPLITS:
            raise ManifestError(f"split '{split}' is not one of {', '.join(SPLITS)}")
        return Manifest([v for v in self.visits if v.split == split], self.path)

    def by_subject(self) -> dict[str, list[Visit]]:
        """Visits of each subject, sorted by age."""
        out: dict[str, list[Visit]] = {}
        for v in self.visits:
            out.setdefault(v.subject_id, []).append(v)
        return {s: sorted(vs, key=lambda v: v.age) for s, vs in out.items()}

    def pairs(self, which: str = "all") -> list[VisitPair]:
        """Ordered visit pairs of each subject.

        Args:
            which: ``all`` every (earlier, later) pair; ``last`` only (first visit, last visit).

        Visits at the same age give no pair (Δt = 0); they are logged and skipped.
        """
        if which not in ("all", "last"):
            raise ValueError(f"pairs '{which}' is not one of all, last")
        out: list[VisitPair] = []
        for sid, visits in self.by_subject().items():
            cand = [(a, b) for i, a in enumerate(visits) for b in visits[i + 1:]]
            if which == "last" and len(visits) >= 2:
                cand = [(visits[0], visits[-1])]
            for a, b in cand:
                if b.age - a.age <= 0:
                    log.warning("subject %s: visits %s and %s share age %.3f; pair skipped",
                                sid, a.image_uid, b.image_uid, a.age)
                    continue
                out.append(VisitPair(a, b))
        return out
