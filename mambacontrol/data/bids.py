"""BIDS: a manifest from a BIDS dataset, and predictions written as a BIDS derivative.

Reading (:func:`manifest_from_bids`, ``mambacontrol manifest from-bids``), one manifest row per
T1w image (``sub-<X>/[ses-<Y>/]anat/*_T1w.nii[.gz]``, found by pybids; ``derivatives/`` is not
searched):

- ``subject_id`` is ``sub-<X>``; ``image_uid`` is ``sub-<X>_ses-<Y>``, plus the ``acq``, ``ce``,
  ``rec``, ``run`` entities that tell apart several T1w images of one session
  (``sub-01_ses-bl_run-2``); ``image_path`` the image. The manifest's extra column ``session``
  keeps ``ses-<Y>`` (empty without sessions).
- age: ``sub-<X>/sub-<X>_sessions.tsv``'s age column, per session, when it has one; otherwise
  ``participants.tsv``'s, read as the age at the subject's first session, each later session adding
  the years since it by ``sessions.tsv``'s ``acq_time`` (BIDS's acquisition date-time). A subject
  with one image needs only ``participants.tsv``.
- sex and diagnosis: ``sessions.tsv``'s column when it has one (a diagnosis may change between
  visits), else ``participants.tsv``'s. Column names are arguments (``--age-column`` ...); values as
  :func:`mambacontrol.data.manifest.normalize_sex` / ``normalize_diagnosis`` read them (ADNI's
  EMCI/LMCI/SMC included); ``n/a`` or empty is refused naming the file, subject and column.
- split: ``participants.tsv``'s split column when it has one, else assigned by subject: the sorted
  subjects shuffled by ``numpy.random.default_rng(seed)``, cut by the fractions (largest remainder).

Writing (the ``predict --bids-out`` layout), a derivative dataset::

    <out>/dataset_description.json                         DatasetType derivative, GeneratedBy
    <out>/sub-<X>/ses-<Y>/anat/sub-<X>_ses-<Y>_desc-pred2p5y_T1w.nii.gz      prediction (2.5 y)
    <out>/sub-<X>/ses-<Y>/anat/sub-<X>_ses-<Y>_desc-pred2p5y_T1w.json        its sidecar
    <out>/sub-<X>/ses-<Y>/anat/sub-<X>_ses-<Y>_desc-pred2p5yStd_T1w.nii.gz   spread of the samples
    <out>/sub-<X>/ses-<Y>/anat/sub-<X>_ses-<Y>_desc-pred2p5yStd_T1w.json

BIDS labels are alphanumeric, so a horizon's ``.`` becomes ``p`` (:func:`horizon_label`).
pybids is imported inside the functions that need it, so ``import mambacontrol`` stays light.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from mambacontrol._version import __version__
from mambacontrol.data.manifest import (
    _SPLIT_ALIASES,
    MAX_AGE,
    MIN_AGE,
    Manifest,
    Visit,
    normalize_diagnosis,
    normalize_sex,
)
from mambacontrol.errors import InputFileError, MambaControlError, ManifestError
from mambacontrol.io.tables import write_json

BIDS_LABEL = re.compile(r"[A-Za-z0-9]+")
UID_ENTITIES = ("acquisition", "ceagent", "reconstruction", "run")
_ENTITY_KEYS = {"acquisition": "acq", "ceagent": "ce", "reconstruction": "rec", "run": "run"}
BIDS_VERSION = "1.9.0"
MISSING = ("", "n/a", "na", "nan")


def _read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(
            f"{path}: cannot read this TSV ({exc}); re-save it as UTF-8 text") from None
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    header = [h.strip() for h in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    return header, rows


def _value(row: Mapping[str, str] | None, col: str) -> str | None:
    """A cell's text, or None when the column is absent or the cell is empty / ``n/a``."""
    if row is None or col not in row:
        return None
    v = row[col]
    return None if v.lower() in MISSING else v


def _prefixed(value: str, prefix: str) -> str:
    """``sub-01`` from ``sub-01`` or ``01`` (tables written without the prefix are read too)."""
    return value if value.startswith(prefix + "-") else f"{prefix}-{value}"


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def check_split_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``(train, valid, test)`` fractions, each >= 0, summing to 1; MambaControlError otherwise."""
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(not math.isfinite(x) or x < 0 for x in f) or abs(sum(f) - 1) > 1e-6:
        raise MambaControlError(f"split fractions {','.join(str(x) for x in fractions)} are not "
                                "three numbers >= 0 summing to 1 (train,valid,test), e.g. "
                                "0.7,0.1,0.2")
    return f  # type: ignore[return-value]


def assign_splits(subjects: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Subject -> ``train``/``valid``/``test``: the sorted subjects shuffled with ``seed``, cut by
    ``fractions`` (largest remainder, so the counts add up)."""
    f = check_split_fractions(fractions)
    subs = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(subs))
    counts = _split_counts(len(subs), f)
    names = ["train"] * counts[0] + ["valid"] * counts[1] + ["test"] * counts[2]
    return {subs[i]: names[k] for k, i in enumerate(order)}


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def manifest_from_bids(bids_dir: str | os.PathLike, *, age_column: str = "age",
                       sex_column: str = "sex", diagnosis_column: str = "diagnosis",
                       split_column: str = "split", split: Sequence[float] = (0.7, 0.1, 0.2),
                       seed: int = 0) -> Manifest:
    """Build a manifest from a BIDS dataset's T1w images (rules in the module docstring).

    Args:
        bids_dir: the dataset's root (holding ``dataset_description.json``).
        age_column, sex_column, diagnosis_column: column names in ``sessions.tsv`` /
            ``participants.tsv``.
        split_column: ``participants.tsv``'s split column, used when present.
        split: ``(train, valid, test)`` fractions for subjects without a split column.
        seed: seed of the split assignment.

    Returns:
        A validated :class:`Manifest` (``path`` None; write it with ``Manifest.to_csv``), sorted by
        subject and age.

    Raises:
        InputFileError: not a BIDS dataset, no T1w images, a missing or unreadable table.
        ManifestError: a missing column (naming the columns found) or value (naming the file,
            subject, session and column).
    """
    root = Path(bids_dir).expanduser()
    if not (root / "dataset_description.json").is_file():
        raise InputFileError(f"{root}: not a BIDS dataset (no dataset_description.json); give the "
                             "dataset's root folder")
    check_split_fractions(split)
    from bids import BIDSLayout  # lazy: pybids is slow to import

    schema_log = logging.getLogger("bidsschematools")  # its "no schema path" INFO line each run
    if schema_log.level == logging.NOTSET:
        schema_log.setLevel(logging.WARNING)

    try:
        layout = BIDSLayout(str(root), validate=False)
    except Exception as exc:  # pybids raises its own BIDS*Error/ValueError types
        raise InputFileError(f"{root}: pybids cannot index this dataset ({exc})") from None
    images = layout.get(suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"])
    if not images:
        raise InputFileError(f"{root}: no T1w images (sub-<X>/[ses-<Y>/]anat/*_T1w.nii[.gz]); "
                             "check the folder is a BIDS dataset with anatomical scans")

    part_path = root / "participants.tsv"
    part_header, part_rows = _read_tsv(part_path) if part_path.is_file() else ([], [])
    if part_rows and "participant_id" not in part_header:
        raise ManifestError(f"{part_path}: no 'participant_id' column; found "
                            f"{', '.join(part_header) or 'none'}")
    participants = {_prefixed(r["participant_id"], "sub"): r for r in part_rows}

    by_session: dict[tuple[str, str], list] = {}
    for img in images:
        ent = img.get_entities()
        by_session.setdefault((f"sub-{ent['subject']}", str(ent.get("session", ""))),
                              []).append(img)

    sessions: dict[str, tuple[Path, list[str], dict[str, dict[str, str]]]] = {}
    for sub in sorted({s for s, _ in by_session}):
        path = root / sub / f"{sub}_sessions.tsv"
        if path.is_file():
            header, rows = _read_tsv(path)
            if "session_id" not in header:
                raise ManifestError(f"{path}: no 'session_id' column; found {', '.join(header)}")
            sessions[sub] = (path, header, {_prefixed(r["session_id"], "ses"): r for r in rows})

    def column_error(col: str, what: str) -> ManifestError:
        found = ", ".join(part_header) or "no participants.tsv"
        ses_cols = sorted({c for _, h, _ in sessions.values() for c in h})
        return ManifestError(
            f"{root}: no {what} column '{col}' in participants.tsv ({found}) or sessions.tsv "
            f"({', '.join(ses_cols) or 'none'}); name it with --{what}-column")

    for col, what in ((age_column, "age"), (sex_column, "sex"), (diagnosis_column, "diagnosis")):
        if col not in part_header and not any(col in h for _, h, _ in sessions.values()):
            raise column_error(col, what)

    splits: dict[str, str] = {}
    if split_column in part_header:
        for sid, row in participants.items():
            raw = _value(row, split_column) or ""
            splits[sid] = _SPLIT_ALIASES.get(raw.lower(), "")
            if not splits[sid]:
                raise ManifestError(f"{part_path}: {sid}, column '{split_column}': '{raw}' is not "
                                    "one of train, valid, test")
    else:
        splits = assign_splits([s for s, _ in by_session], split, seed)

    visits: list[Visit] = []
    for (sub, ses), imgs in sorted(by_session.items()):
        ses_id = f"ses-{ses}" if ses else ""
        n_ses = sum(1 for s, _ in by_session if s == sub)
        ctx = _SessionRow(sub, ses_id, participants.get(sub), part_path, sessions.get(sub), n_ses)
        age = ctx.age(age_column)
        sex_raw, sex_file = ctx.pick(sex_column)
        dx_raw, dx_file = ctx.pick(diagnosis_column)
        try:
            sex = normalize_sex(sex_raw)
        except ValueError as exc:
            raise ctx.bad(sex_column, str(exc), sex_file) from None
        try:
            dx = normalize_diagnosis(dx_raw)
        except ValueError as exc:
            raise ctx.bad(diagnosis_column, str(exc), dx_file) from None
        if sub not in splits:
            raise ManifestError(f"{part_path}: {sub} has no row, so no '{split_column}'; add it")
        for img in sorted(imgs, key=lambda f: f.path):
            ent = img.get_entities()
            uid = sub + (f"_{ses_id}" if ses_id else "")
            if len(imgs) > 1:
                uid += "".join(f"_{_ENTITY_KEYS[k]}-{ent[k]}" for k in UID_ENTITIES if k in ent)
            visits.append(Visit(sub, uid, Path(img.path), age, sex, dx, splits[sub],
                                extra={"session": ses_id}))
    visits.sort(key=lambda v: (v.subject_id, v.age, v.image_uid))
    manifest = Manifest(visits)
    dup = sorted(u for u, n in Counter(v.image_uid for v in visits).items() if n > 1)
    if dup:
        raise ManifestError(f"{root}: several T1w images share the id {dup[0]} (their entities do "
                            "not tell them apart); keep one per session or give them acq/run "
                            "labels")
    manifest._check_consistency()
    return manifest


class _SessionRow:
    """One session's rows in participants.tsv and sessions.tsv, and the rules reading them."""

    def __init__(self, sub: str, ses_id: str, prow: dict[str, str] | None, part_path: Path,
                 ses_table: tuple[Path, list[str], dict[str, dict[str, str]]] | None,
                 n_sessions: int = 1):
        self.sub, self.ses_id, self.prow, self.part_path = sub, ses_id, prow, part_path
        self.n_sessions = n_sessions
        self.ses_path, self.ses_header, self.ses_rows = ses_table or (None, [], {})
        self.srow = self.ses_rows.get(ses_id) if ses_id else None
        self.where = sub + (f" {ses_id}" if ses_id else "")

    def bad(self, col: str, msg: str, file: Path | None) -> ManifestError:
        return ManifestError(f"{file or self.part_path}: {self.where}, column '{col}': {msg}")

    def pick(self, col: str) -> tuple[str, Path]:
        """The session's value (sessions.tsv), else the subject's (participants.tsv)."""
        v = _value(self.srow, col)
        if v is not None:
            return v, self.ses_path  # type: ignore[return-value]
        v = _value(self.prow, col)
        if v is not None:
            return v, self.part_path
        if self.ses_path is not None and col in self.ses_header:
            raise self.bad(col, "is empty or n/a" if self.srow else f"{self.ses_id} has no row",
                           self.ses_path)
        raise self.bad(col, "is empty or n/a" if self.prow else f"{self.sub} has no row",
                       self.part_path)

    def age(self, col: str) -> float:
        """sessions.tsv's age, else participants.tsv's (at the first session) plus the years
        since the first session by acq_time."""
        raw = _value(self.srow, col)
        if raw is not None:
            return self._number(raw, col, self.ses_path)
        base = _value(self.prow, col)
        if base is None:
            raise self.bad(col, "no age in sessions.tsv or participants.tsv (empty, n/a or no "
                           "row)", self.ses_path if col in self.ses_header else self.part_path)
        age = self._number(base, col, self.part_path)
        if not self.ses_id or (self.n_sessions <= 1 and len(self.ses_rows) <= 1):
            return age
        if self.ses_path is None:
            raise self.bad(col, f"{self.sub} has {self.n_sessions} sessions and participants.tsv "
                           f"one age; add {self.sub}/{self.sub}_sessions.tsv with an '{col}' or "
                           "'acq_time' column", self.part_path)
        times = {s: _parse_time(r.get("acq_time", "")) for s, r in self.ses_rows.items()}
        if times.get(self.ses_id) is None:
            raise self.bad(col, f"participants.tsv's age is the age at the first session, and "
                           f"{self.ses_path.name} has no '{col}' or valid 'acq_time' for "
                           f"{self.ses_id}; add one of them", self.ses_path)
        first = min(t for t in times.values() if t is not None)
        return self._check(age + (times[self.ses_id] - first).total_seconds() / (365.25 * 86400),
                           col, self.ses_path)

    def _number(self, raw: str, col: str, file: Path | None) -> float:
        try:
            age = float(raw)
        except ValueError:
            raise self.bad(col, f"'{raw}' is not a number (age in years)", file) from None
        return self._check(age, col, file)

    def _check(self, age: float, col: str, file: Path | None) -> float:
        if not math.isfinite(age) or not MIN_AGE <= age <= MAX_AGE:
            raise self.bad(col, f"{age:g} is not an age in {MIN_AGE:g}–{MAX_AGE:g} years", file)
        return age


# --- writing predictions as a BIDS derivative -------------------------------------------------

def horizon_label(years: float) -> str:
    """A horizon as a BIDS-valid ``desc`` value: 2 -> ``pred2y``, 2.5 -> ``pred2p5y``."""
    y = float(years)
    if not math.isfinite(y) or y < 0:
        raise MambaControlError(f"horizon {years!r} is not a number of years >= 0")
    text = f"{round(y, 4):.4f}".rstrip("0").rstrip(".")
    return f"pred{text.replace('.', 'p')}y"


def _entity(value: str | None, prefix: str, what: str) -> str:
    v = str(value or "").strip()
    v = v[len(prefix) + 1:] if v.startswith(prefix + "-") else v
    if not BIDS_LABEL.fullmatch(v):
        raise MambaControlError(f"{what} '{value}' is not a BIDS label (letters and digits, e.g. "
                                f"{prefix}-01); give the BIDS {what}")
    return v


def bids_derivative_paths(out_root: str | os.PathLike, subject: str, session: str | None,
                          years: float,
                          entities: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Where one prediction goes in a BIDS derivative dataset.

    Args:
        out_root: the derivative dataset's root.
        subject: ``sub-01`` or ``01``.
        session: ``ses-bl`` or ``bl``; None or ``""`` for datasets without sessions.
        years: the horizon (``desc-pred<years>y``).
        entities: the source image's ``acq``/``ce``/``rec``/``run`` labels (keys as in file names),
            kept in the names so that several T1w of one session do not collide.

    Returns:
        ``image``, ``sidecar`` (its JSON), ``uncertainty`` (``desc-pred<years>yStd``),
        ``uncertainty_sidecar``: absolute-or-relative as ``out_root`` is.
    """
    sub = _entity(subject, "sub", "subject")
    ses = _entity(session, "ses", "session") if session else ""
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else [])
    for key in ("acq", "ce", "rec", "run"):
        if entities and entities.get(key):
            parts.append(f"{key}-{_entity(entities[key], key, key + ' label')}")
    folder = Path(out_root) / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    desc = horizon_label(years)
    stem = "_".join(parts)
    return {"image": folder / f"{stem}_desc-{desc}_T1w.nii.gz",
            "sidecar": folder / f"{stem}_desc-{desc}_T1w.json",
            "uncertainty": folder / f"{stem}_desc-{desc}Std_T1w.nii.gz",
            "uncertainty_sidecar": folder / f"{stem}_desc-{desc}Std_T1w.json"}


def dataset_description(*, name: str = "mambacontrol predictions",
                        source_datasets: Sequence[str] = ()) -> dict:
    """``dataset_description.json`` content of a derivative dataset written by this package."""
    out = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
           "GeneratedBy": [{"Name": "mambacontrol", "Version": __version__,
                            "Description": "predicted follow-up T1w images (latent diffusion, "
                                           "Mamba ControlNet, anatomy graph)"}]}
    if source_datasets:
        out["SourceDatasets"] = [{"URL": str(s)} for s in source_datasets]
    return out


def write_dataset_description(out_root: str | os.PathLike, *,
                              name: str = "mambacontrol predictions",
                              source_datasets: Sequence[str] = ()) -> Path:
    """Write ``<out_root>/dataset_description.json`` (atomic; see :func:`dataset_description`)."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    return write_json(root / "dataset_description.json",
                      dataset_description(name=name, source_datasets=source_datasets))


def sidecar(*, source: str | os.PathLike, model: str, years: float, samples: int, seed: int,
            uncertainty: bool = False, **extra) -> dict:
    """JSON sidecar content of a predicted image (or, ``uncertainty=True``, of its spread map).

    Args:
        source: the input scan (a path or a BIDS URI such as ``bids:raw:sub-01/ses-bl/anat/...``).
        model: the model used (its folder or Hub id).
        years, samples, seed: the horizon, the number of samples averaged and the sampling seed.
        **extra: more keys (e.g. ``Age``, ``Diagnosis``, ``Steps``), written as given.
    """
    what = ("voxelwise standard deviation across the samples of the predicted T1w image"
            if uncertainty else "predicted T1w image")
    out = {"Description": f"{what} {float(years):g} years after the source scan, in its space",
           "Sources": [str(source)], "SpatialReference": "orig", "Model": str(model),
           "PredictionHorizonYears": float(years), "NumberOfSamples": int(samples),
           "Seed": int(seed), "GeneratedBy": {"Name": "mambacontrol", "Version": __version__}}
    out.update(extra)
    return out
