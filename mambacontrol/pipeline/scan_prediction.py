"""Predict follow-ups of a NIfTI scan and write them in the scan's own space.

For one scan: prepare it on the model grid (registration, brain extraction, normalisation,
labels), predict every horizon with :class:`ProgressionPipeline`, measure each prediction's
regional volumes sub-voxel (Jacobian of a deformable registration from the baseline to the
prediction, integrated over the baseline's regions), map the prediction and its uncertainty back
to the scan's exact grid, and write::

    OUT/summary.json                 inputs, model, versions, settings, timings
    OUT/years_<Y>/prediction.nii.gz  predicted scan (normalised intensities, brain only)
    OUT/years_<Y>/uncertainty.nii.gz voxel-wise standard deviation of the samples
    OUT/years_<Y>/regions.csv        per region: baseline and predicted volume (mm³), % change,
                                     and the trajectory head's own prediction
    OUT/years_<Y>/montage.png        (optional) input, prediction and change in three planes

Everything is written into a temporary folder that is renamed onto ``OUT`` at the end, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambacontrol._version import package_versions
from mambacontrol.data.manifest import normalize_diagnosis, normalize_sex
from mambacontrol.errors import InputFileError, MambaControlError
from mambacontrol.io import load_nifti, save_nifti, write_text_atomic
from mambacontrol.io.digest import sha256_file
from mambacontrol.pipeline.prepare import PreparedScan, prepare_scan
from mambacontrol.pipeline.progression import Prediction, ProgressionPipeline

log = logging.getLogger(__name__)

MIN_AGE, MAX_AGE = 40.0, 100.0
MAX_YEARS = 20.0


@dataclass
class PredictRequest:
    """One scan to predict, validated by :meth:`check`.

    Attributes:
        image: the baseline T1 NIfTI.
        age: years at the scan (40–100).
        sex: ``F``/``M`` (any accepted spelling).
        diagnosis: ``CN``/``MCI``/``AD`` (any accepted spelling).
        years: horizons in years (0–20).
        segmentation: optional label map in the atlas's label ids, in the scan's space.
    """

    image: Path
    age: float
    sex: str
    diagnosis: str
    years: list[float]
    segmentation: Path | None = None

    def check(self) -> PredictRequest:
        """Normalise spellings and raise :class:`MambaControlError` (one line) for bad values."""
        if not np.isfinite(self.age) or not MIN_AGE <= self.age <= MAX_AGE:
            raise MambaControlError(f"age {self.age:g} is outside {MIN_AGE:g}–{MAX_AGE:g} years; "
                                    "give the age in years at the baseline scan")
        try:
            self.sex = normalize_sex(self.sex)
            self.diagnosis = normalize_diagnosis(self.diagnosis)
        except ValueError as exc:
            raise MambaControlError(str(exc)) from None
        if not self.years:
            raise MambaControlError("give at least one horizon with --years")
        for y in self.years:
            if not np.isfinite(y) or y < 0:
                raise MambaControlError(f"horizon {y:g} years is negative or not a number; "
                                        "horizons are years after the baseline (≥ 0)")
            if y > MAX_YEARS:
                raise MambaControlError(f"horizon {y:g} years is beyond {MAX_YEARS:g}; "
                                        "the model has not seen such horizons")
        return self


@dataclass
class PredictSettings:
    samples: int | None = None
    steps: int | None = None
    seed: int = 0
    png: bool = False
    registration_seed: int = 0
    measure_volumes: bool = True
    timings: dict = field(default_factory=dict)


def horizon_folder(years: float) -> str:
    return f"years_{years:g}"


def region_rows(pipe: ProgressionPipeline, scan: PreparedScan, pred: Prediction,
                measured, volume_scale: float) -> list[dict]:
    """One row per atlas region: baseline and predicted volume in the scan's space (mm³)."""
    atlas = pipe.atlas
    base_counts = atlas.region_volumes(scan.labels)
    head = {}
    if pred.node_log_ratio is not None and pipe.graph is not None:
        for node, labels in enumerate(pipe.graph.node_labels):
            for lab in labels:
                head[int(lab)] = float(pred.node_log_ratio[node])
    measured_by_label = measured.as_dict() if measured is not None else {}
    rows = []
    for region in atlas.regions:
        base = base_counts[region.label] * volume_scale
        row = {"label": region.label, "name": region.name, "hemisphere": region.hemisphere,
               "group": region.group, "baseline_mm3": round(base, 2)}
        if region.label in measured_by_label:
            b, o = measured_by_label[region.label]
            row["predicted_mm3"] = round(o * volume_scale, 2)
            row["change_pct"] = round(100.0 * (o / b - 1.0), 4) if b > 0 else ""
        if region.label in head:
            ratio = head[region.label]
            row["head_predicted_mm3"] = round(base * float(np.exp(ratio)), 2)
            row["head_change_pct"] = round(100.0 * float(np.expm1(ratio)), 4)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def predict_scan(pipe: ProgressionPipeline, request: PredictRequest, out: str | os.PathLike,
                 settings: PredictSettings | None = None, model_dir: str | None = None,
                 overwrite: bool = False) -> dict:
    """Predict one scan and write its outputs (see the module docstring).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        MambaControlError: for bad input (before anything is written), failed registration, or an
            output folder that exists (unless ``overwrite``).
    """
    s = settings or PredictSettings()
    request.check()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputFileError(f"{out}: output folder exists and is not empty; choose another --out")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    load_nifti(request.image)
    if request.segmentation is not None:
        load_nifti(request.segmentation, labels=True)
    for p in (request.image, request.segmentation):
        if p is not None and Path(p).resolve().is_relative_to(out.resolve()):
            raise InputFileError(f"{p}: input lies inside the output folder {out}; choose another --out")

    t = time.perf_counter()
    scan = prepare_scan(request.image, pipe.atlas, request.segmentation, seed=s.registration_seed)
    timings["registration"] = time.perf_counter() - t
    preds = pipe.predict(scan.image, scan.labels, request.age, request.sex, request.diagnosis,
                         request.years, mask=scan.mask, num_samples=s.samples,
                         num_inference_steps=s.steps, seed=s.seed, timings=timings)
    volume_scale = 1.0
    if scan.transform is not None:
        from mambacontrol.registration import AtlasTransform

        volume_scale = AtlasTransform.from_dict(scan.transform).volume_scale

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        horizons = []
        for pred in preds:
            folder = tmp / horizon_folder(pred.years)
            measured = None
            if s.measure_volumes:
                from mambacontrol.registration import measure_regional_volumes

                t = time.perf_counter()
                measured = measure_regional_volumes(scan.image, pred.image, scan.labels,
                                                    pipe.atlas.grid, pipe.atlas.label_ids,
                                                    seed=s.registration_seed)
                timings["measurement"] = timings.get("measurement", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            image = scan.to_native(pred.image, order=1)
            spread = scan.to_native(pred.uncertainty, order=1)
            save_nifti(folder / "prediction.nii.gz", image.data, image.affine, inputs=[request.image])
            save_nifti(folder / "uncertainty.nii.gz", spread.data, spread.affine, inputs=[request.image])
            timings["back_mapping"] = timings.get("back_mapping", 0.0) + time.perf_counter() - t
            rows = region_rows(pipe, scan, pred, measured, volume_scale)
            _write_csv(folder / "regions.csv", rows)
            if s.png:
                from mambacontrol.pipeline.figures import prediction_montage

                prediction_montage(scan.image, pred.image, scan.mask, folder / "montage.png",
                                   title=f"{request.image.name}: +{pred.years:g} years")
            horizons.append({"years": pred.years, "folder": horizon_folder(pred.years),
                             "mean_uncertainty": float(pred.uncertainty[scan.mask].mean())})
        timings["total"] = time.perf_counter() - start
        summary = {
            "inputs": {"image": str(request.image), "image_sha256": sha256_file(request.image),
                       "segmentation": str(request.segmentation) if request.segmentation else None,
                       "age": request.age, "sex": request.sex, "diagnosis": request.diagnosis,
                       "years": request.years},
            "model": {"dir": model_dir, **{k: v for k, v in pipe.index().items()
                                           if k in ("components", "atlas", "sampling", "mambacontrol_version")}},
            "settings": {"samples": s.samples or pipe.sampling.num_samples,
                         "steps": s.steps or pipe.sampling.num_inference_steps, "seed": s.seed,
                         "device": str(pipe.device), "registration_seed": s.registration_seed},
            "preparation": {"registered": scan.transform is not None, "similarity": scan.similarity,
                            "labels": scan.label_source, "native_mm3_per_atlas_mm3": volume_scale},
            "outputs": horizons,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "versions": package_versions(),
        }
        write_text_atomic(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    s.timings = timings
    return summary


def predict_many(pipe: ProgressionPipeline, requests: Sequence[tuple[str, PredictRequest]],
                 out: str | os.PathLike, settings: PredictSettings | None = None,
                 model_dir: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Predict every ``(name, request)`` into ``out/<name>``; finished scans are skipped.

    Returns:
        (names done now or before, {name: error} for scans that failed).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    done, failed = [], {}
    for name, req in tqdm(list(requests), desc="scans", disable=None):
        target = out / name
        if (target / "summary.json").is_file():
            done.append(name)
            continue
        try:
            predict_scan(pipe, req, target, settings, model_dir, overwrite=True)
            done.append(name)
        except MambaControlError as exc:
            failed[name] = str(exc)
            log.warning("%s: %s", name, exc)
    return done, failed
