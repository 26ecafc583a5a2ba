"""One scored pair on disk: what lets ``evaluate`` resume per pair and split into job-array parts.

As soon as a pair is scored, ``evaluate`` writes its record into ``<out>/pairs/``:

- ``<name>.json``: every method's :class:`PairResult` of the pair, the seconds spent on it per
  kind of work (``timings_s``), the record's key (below) and, when the report shows the pair as
  slices, the panel's method, slice and the SHA-256 of its arrays;
- ``<name>.npz``: the panel's arrays (baseline, follow-up, prediction, mask, uncertainty), read
  back with ``np.load(allow_pickle=False)``. Nothing is ever pickled.

``<name>`` is made of the pair's uids (and a digest of them, so ids that give one file name never
collide). Both files are written atomically, the arrays first: a record exists only once its
JSON does, and a JSON whose arrays are missing or differ is no record.

The key is a SHA-256 of everything that decides the pair's scores (:func:`record_key`): the
settings (split, pairs, samples, steps, sampler, seed, baselines, ceiling, change threshold), the
models (their names and content digests, :func:`model_digest`), the linear baseline's fitted
rates, whether exact ground truth is scored, whether the pair gets a panel, and the pair itself
(uids, covariates, its manifest columns). A record is reused only when its key equals the key
the current run computes; anything else (another seed, other weights, an unreadable file) is
scored again and its record replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mambacontrol.data import VisitPair
from mambacontrol.evaluation.figures import SlicePanel
from mambacontrol.evaluation.metrics import VolumeChange
from mambacontrol.evaluation.records import PairInfo, PairResult
from mambacontrol.io.atomic import atomic_path, write_text_atomic
from mambacontrol.io.digest import sha256_file
from mambacontrol.io.outputs import safe_name

log = logging.getLogger(__name__)

RECORDS_NAME = "pairs"
"""The folder of the records inside the evaluation's output."""
FORMAT = 2
"""The records' layout; 2 added the trajectory-head rows, so a format-1 record is scored again."""
_PANEL_ARRAYS = ("baseline", "followup", "prediction", "mask", "uncertainty")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_IGNORED_COLUMNS = ("mask_path",)
"""Manifest columns that say where a file lies, not what the pair is (they change when scans are
prepared into the output folder)."""


def model_digest(folder: str | os.PathLike) -> str:
    """A model's identity: the SHA-256 over what :meth:`ProgressionPipeline.from_pretrained`
    reads, ``model_index.json`` and each listed component's ``config.json`` and weights (a
    training run's checkpoints, logs or card beside them do not count)."""
    # lazy: the pipeline's constants pull in torch, as evaluate does anyway
    from mambacontrol.nn.component import CONFIG_NAME, WEIGHTS_NAME
    from mambacontrol.pipeline.progression import INDEX_NAME

    root = Path(folder)
    digest = hashlib.sha256()
    index = root / INDEX_NAME
    files = [index]
    components = json.loads(index.read_text(encoding="utf-8")).get("components", {})
    for name in sorted(components):
        files += [root / name / CONFIG_NAME, root / name / WEIGHTS_NAME]
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def pair_identity(pair: VisitPair) -> dict:
    """What the pair is: its facts (uids, diagnosis, Δt, age, sex) and each visit's manifest
    columns (e.g. exact ground-truth volumes), without file locations."""
    return {"info": asdict(PairInfo.from_visit_pair(pair)),
            "earlier": {k: v for k, v in sorted(pair.earlier.extra.items())
                        if k not in _IGNORED_COLUMNS},
            "later": {k: v for k, v in sorted(pair.later.extra.items())
                      if k not in _IGNORED_COLUMNS}}


def record_key(run: Mapping, pair: VisitPair, panel: bool) -> str:
    """The SHA-256 that a pair's record must carry to be reused: ``run`` (everything of the
    evaluation that decides scores, JSON-able) with the pair's identity and whether it has a
    panel."""
    doc = {"format": FORMAT, "run": run, "pair": pair_identity(pair), "panel": bool(panel)}
    text = json.dumps(doc, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_name(pair: VisitPair) -> str:
    """The pair's record file name (without suffix): readable, and unique per pair."""
    uids = f"{pair.subject_id}\0{pair.earlier.image_uid}\0{pair.later.image_uid}"
    tag = hashlib.sha256(uids.encode("utf-8")).hexdigest()[:10]
    return safe_name(f"{pair.earlier.image_uid}__{pair.later.image_uid}", 90) + f"-{tag}"


@dataclass
class PairRecord:
    """One pair's scores: every method's result, its panel (or None) and the seconds spent."""

    results: list[PairResult]
    panel: SlicePanel | None = None
    timings: dict[str, float] = field(default_factory=dict)


# --- writing -------------------------------------------------------------------------------------

def _float(value) -> float | None:
    return None if value is None else float(value)


def _result_to_json(r: PairResult) -> dict:
    return {"pair": asdict(r.pair), "method": r.method,
            "metrics": {k: _float(v) for k, v in r.metrics.items()},
            "regions": [[int(k), _float(c.true_pct), _float(c.pred_pct)]
                        for k, c in r.regions.items()],
            "groups": [[str(g), _float(c.true_pct), _float(c.pred_pct)]
                       for g, c in r.groups.items()]}


def _panel_arrays(panel: SlicePanel) -> dict[str, np.ndarray]:
    arrays = {k: np.asarray(getattr(panel, k)) for k in _PANEL_ARRAYS
              if getattr(panel, k) is not None}
    for k, a in arrays.items():
        if a.dtype == object:
            raise ValueError(f"panel array {k} is not numeric")
    return arrays


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed``'s format with a fixed time stamp per member, so the same arrays
    give the same bytes (as every other output of a run does)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def write_record(folder: str | os.PathLike, pair: VisitPair, key: str, record: PairRecord) -> Path:
    """Write the pair's record into ``folder`` (created when missing), atomically: the panel's
    ``.npz`` first, then the ``.json`` that names it. Returns the JSON's path."""
    folder = Path(folder)
    name = record_name(pair)
    doc: dict = {"format": FORMAT, "key": key,
                 "pair": [pair.subject_id, pair.earlier.image_uid, pair.later.image_uid],
                 "results": [_result_to_json(r) for r in record.results],
                 "timings_s": {k: float(v) for k, v in record.timings.items()}, "panel": None}
    if record.panel is not None:
        p = record.panel
        with atomic_path(folder / f"{name}.npz") as tmp:
            _write_npz(tmp, _panel_arrays(p))
        doc["panel"] = {"file": f"{name}.npz", "sha256": sha256_file(folder / f"{name}.npz"),
                        "pair": asdict(p.pair), "method": p.method,
                        "slice_index": None if p.slice_index is None else int(p.slice_index)}
    return write_text_atomic(folder / f"{name}.json", json.dumps(doc, indent=1) + "\n")


# --- reading -------------------------------------------------------------------------------------

def _info(d: Mapping) -> PairInfo:
    return PairInfo(**{k: d[k] for k in ("subject_id", "baseline_uid", "followup_uid",
                                          "diagnosis", "years", "age", "sex")})


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _result_from_json(d: Mapping) -> PairResult:
    return PairResult(_info(d["pair"]), str(d["method"]),
                      {str(k): _nan(v) for k, v in d["metrics"].items()},
                      {int(k): VolumeChange(_nan(t), _nan(p)) for k, t, p in d["regions"]},
                      {str(g): VolumeChange(_nan(t), _nan(p)) for g, t, p in d["groups"]})


def read_record(folder: str | os.PathLike, pair: VisitPair, key: str) -> PairRecord | None:
    """The pair's record in ``folder`` when it was made under ``key`` and is whole; None when
    there is none, it was made under other settings, or it cannot be read (it is then scored
    again)."""
    folder = Path(folder)
    path = folder / f"{record_name(pair)}.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("key") != key:
            log.debug("%s: made under other settings; scoring the pair again", path)
            return None
        results = [_result_from_json(r) for r in doc["results"]]
        timings = {str(k): float(v) for k, v in doc["timings_s"].items()}
        panel = None
        if doc["panel"] is not None:
            meta = doc["panel"]
            arrays_path = folder / meta["file"]
            if (Path(meta["file"]).name != meta["file"]
                    or sha256_file(arrays_path) != meta["sha256"]):
                raise ValueError("panel arrays differ from the record")
            with np.load(arrays_path, allow_pickle=False) as arrays:
                a = {k: arrays[k] for k in arrays.files}
            panel = SlicePanel(_info(meta["pair"]), str(meta["method"]), a["baseline"],
                               a["followup"], a["prediction"], a["mask"], a.get("uncertainty"),
                               meta["slice_index"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("%s: unreadable record (%s); scoring the pair again", path, exc)
        return None
    return PairRecord(results, panel, timings)


@dataclass
class PairRecords:
    """The records folder of one evaluation run.

    Attributes:
        folder: ``<out>/pairs``.
        run: everything of the run that decides a pair's scores (see :func:`record_key`).
        reuse: whether valid records are reused (False: every pair is scored again).
    """

    folder: Path
    run: dict
    reuse: bool = True

    def key(self, pair: VisitPair, panel: bool) -> str:
        return record_key(self.run, pair, panel)

    def load(self, pair: VisitPair, key: str) -> PairRecord | None:
        """The pair's valid record (None: score it)."""
        return read_record(self.folder, pair, key) if self.reuse else None

    def save(self, pair: VisitPair, key: str, record: PairRecord) -> Path:
        return write_record(self.folder, pair, key, record)
