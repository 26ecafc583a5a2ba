"""Predict follow-ups of a NIfTI scan and write them in the scan's own space.

For one scan: prepare it on the model grid (registration, brain extraction, normalisation,
labels), predict every horizon with :class:`ProgressionPipeline`, measure each prediction's
regional volumes sub-voxel (Jacobian of a deformable registration from the baseline to the
prediction, integrated over the baseline's regions), map the prediction and its uncertainty back
to the scan's exact grid, and write::

    OUT/summary.json                 inputs, model, versions, settings, timings
    OUT/years_<Y>/prediction.nii.gz  predicted scan in the input's intensities and field of view
                                     (the input plus the predicted change; ``intensity=
                                     "normalized"``: the model's 0–1 brain-only image)
    OUT/years_<Y>/uncertainty.nii.gz voxel-wise standard deviation of the samples (same units)
    OUT/years_<Y>/regions.csv        per region: baseline and predicted volume (mm³), % change,
                                     and the trajectory head's own prediction
    OUT/years_<Y>/montage.png        (optional) input, prediction and change in three planes

``OUT`` is claimed first (:class:`mambacontrol.io.OutputFolder`); everything is written into a
hidden staging folder inside it and moved into place entry by entry at the end, so a failure
leaves nothing half-written and nothing that the command did not create is ever replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambacontrol._version import package_versions
from mambacontrol.atlas.segformats import FORMATS as SEG_FORMATS
from mambacontrol.data.manifest import normalize_diagnosis, normalize_sex
from mambacontrol.errors import MambaControlError, ModelError
from mambacontrol.io import OutputFolder, load_nifti, safe_name, save_nifti, write_csv, write_json
from mambacontrol.io.digest import sha256_file
from mambacontrol.io.limits import check_limit
from mambacontrol.io.tables import dict_rows
from mambacontrol.pipeline.prepare import PreparedScan, prepare_scan
from mambacontrol.pipeline.progression import Prediction, ProgressionPipeline

log = logging.getLogger(__name__)

MIN_AGE, MAX_AGE = 40.0, 100.0
MAX_YEARS = 20.0
MAX_SEED = 2 ** 63 - 1
SUMMARY_NAME = "summary.json"
INTENSITY_MODES = ("input", "normalized")
"""``input``: the prediction in the input's own intensities and field of view (the input plus the
predicted change, so prediction − input is the change; outside the brain the input itself);
``normalized``: the model's brain-only image, 0–1 normalised intensities."""
FAILURES_NAME = "failures.json"


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
        mask: optional brain mask of the scan (e.g. SynthStrip's), in the scan's space.
    """

    image: Path
    age: float
    sex: str
    diagnosis: str
    years: list[float]
    segmentation: Path | None = None
    mask: Path | None = None

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

    def inputs(self, model_dir: str | os.PathLike | None = None) -> list[Path]:
        """Every file or folder the prediction reads (none may lie inside the output folder)."""
        return [p for p in (self.image, self.segmentation, self.mask, model_dir) if p is not None]


@dataclass
class PredictSettings:
    samples: int | None = None
    steps: int | None = None
    seed: int = 0
    png: bool = False
    registration_seed: int = 0
    measure_volumes: bool = True
    bias_correction: bool = True
    intensity: str = "input"
    seg_format: str = "auto"
    timings: dict = field(default_factory=dict)

    def check(self) -> PredictSettings:
        """Raise :class:`MambaControlError` (one line) for a bad value, before any work."""
        for name, value in (("samples", self.samples), ("steps", self.steps)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise MambaControlError(f"--{name} {value} must be a whole number ≥ 1")
        if self.samples is not None:
            check_limit("max_samples", self.samples, f"--samples {self.samples}")
        if self.steps is not None:
            check_limit("max_steps", self.steps, f"--steps {self.steps}")
        if self.seg_format not in SEG_FORMATS:
            raise MambaControlError(f"--seg-format {self.seg_format} is not one of "
                                    f"{', '.join(SEG_FORMATS)}")
        if self.intensity not in INTENSITY_MODES:
            raise MambaControlError(f"--intensity {self.intensity} is not one of "
                                    f"{', '.join(INTENSITY_MODES)}")
        for name, value in (("seed", self.seed), ("registration seed", self.registration_seed)):
            if isinstance(value, bool) or int(value) != value or not 0 <= value <= MAX_SEED:
                raise MambaControlError(f"{name} {value} must be a whole number in 0–{MAX_SEED}")
        return self


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


def predict_scan(pipe: ProgressionPipeline, request: PredictRequest,
                 out: str | os.PathLike | OutputFolder,
                 settings: PredictSettings | None = None, model_dir: str | None = None,
                 overwrite: bool = False) -> dict:
    """Predict one scan and write its outputs into ``out`` (see the module docstring).

    ``out`` is claimed first (:class:`mambacontrol.io.OutputFolder`; or pass one already claimed
    for ``predict``): a non-empty folder is refused unless it holds an earlier ``predict`` output
    and ``overwrite`` is set, which replaces only that output.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        MambaControlError: for bad input or an unusable ``out`` (before any work), failed
            registration, or a model that produces non-finite values.
    """
    s = settings or PredictSettings()
    request.check()
    s.check()
    with _claimed(out, "predict", request.inputs(model_dir), overwrite) as folder:
        folder.check_free([SUMMARY_NAME] + [horizon_folder(y) for y in request.years])
        with folder.staging() as staged:
            summary = _predict_into(pipe, request, staged, s, model_dir)
            produced = sorted(os.listdir(staged))
            for name in produced:
                folder.commit(staged / name, name)
        folder.remove_own(keep=produced)
    return summary


@contextlib.contextmanager
def _claimed(out: str | os.PathLike | OutputFolder, command: str, inputs, overwrite: bool,
             resume: bool = False) -> Iterator[OutputFolder]:
    """``out`` claimed for ``command`` and released afterwards, or, when the caller already
    claimed it (an :class:`OutputFolder`), used as it is."""
    if isinstance(out, OutputFolder):
        if out.command != command:
            raise ValueError(f"output folder claimed for {out.command}, not {command}")
        yield out
        return
    with OutputFolder.claim(out, command, inputs=inputs, overwrite=overwrite,
                            resume=resume) as folder:
        yield folder


def _predict_into(pipe: ProgressionPipeline, request: PredictRequest, folder: Path,
                  s: PredictSettings, model_dir: str | None) -> dict:
    """Predict one scan and write every output file into the (empty, staged) ``folder``."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    image = load_nifti(request.image)
    t = time.perf_counter()
    scan = prepare_scan(image, pipe.atlas, request.segmentation, seed=s.registration_seed,
                        bias_correction=s.bias_correction, mask_path=request.mask,
                        seg_format=s.seg_format)
    timings["registration"] = time.perf_counter() - t
    preds = pipe.predict(scan.image, scan.labels, request.age, request.sex, request.diagnosis,
                         request.years, mask=scan.mask, num_samples=s.samples,
                         num_inference_steps=s.steps, seed=s.seed, timings=timings)
    for pred in preds:
        if not (np.isfinite(pred.image).all() and np.isfinite(pred.uncertainty).all()):
            raise ModelError(f"the model produced non-finite values for {request.image} at "
                             f"{pred.years:g} years; its weights are corrupt or it diverged in "
                             "training: retrain it or use another model")
    volume_scale = scan.volume_scale
    horizons = []
    for pred in preds:
        sub = folder / horizon_folder(pred.years)
        measured = None
        if s.measure_volumes:
            from mambacontrol.registration import measure_regional_volumes

            t = time.perf_counter()
            measured = measure_regional_volumes(scan.image, pred.image, scan.labels,
                                                pipe.atlas.grid, pipe.atlas.label_ids,
                                                seed=s.registration_seed)
            timings["measurement"] = timings.get("measurement", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        if s.intensity == "input":
            change = scan.change_to_native(pred.image - scan.image)
            native = change.with_data(image.data + change.data)
            spread = scan.change_to_native(pred.uncertainty)
            spread = spread.with_data(np.abs(spread.data))
        else:
            native = scan.to_native(pred.image, order=1)
            spread = scan.to_native(pred.uncertainty, order=1)
        save_nifti(sub / "prediction.nii.gz", native.data, native.affine, inputs=[request.image])
        save_nifti(sub / "uncertainty.nii.gz", spread.data, spread.affine, inputs=[request.image])
        timings["back_mapping"] = timings.get("back_mapping", 0.0) + time.perf_counter() - t
        write_csv(sub / "regions.csv", *dict_rows(region_rows(pipe, scan, pred, measured,
                                                              volume_scale)))
        if s.png:
            from mambacontrol.pipeline.figures import prediction_montage

            prediction_montage(scan.image, pred.image, scan.mask, sub / "montage.png",
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
                                       if k in ("components", "atlas", "sampling",
                                                "mambacontrol_version")}},
        "settings": {"samples": s.samples or pipe.sampling.num_samples,
                     "steps": s.steps or pipe.sampling.num_inference_steps, "seed": s.seed,
                     "device": str(pipe.device), "registration_seed": s.registration_seed},
        "preparation": {"registered": scan.transform is not None, "similarity": scan.similarity,
                        "labels": scan.label_source,
                        "segmentation_format": scan.segmentation_format,
                        "native_mm3_per_atlas_mm3": volume_scale,
                        "bias_corrected": scan.bias_field is not None,
                        "brain_mask": str(request.mask) if request.mask else "atlas",
                        "intensity": s.intensity},
        "outputs": horizons,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
    }
    write_json(folder / SUMMARY_NAME, summary)
    s.timings = timings
    return summary


def predict_many(pipe: ProgressionPipeline, requests: Sequence[tuple[str, PredictRequest]],
                 out: str | os.PathLike | OutputFolder, settings: PredictSettings | None = None,
                 model_dir: str | None = None, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()) -> tuple[list[str], dict[str, str]]:
    """Predict every ``(name, request)`` into ``out/<name>``, and write ``out/failures.json``.

    ``out`` is claimed for ``predict-batch``: an earlier batch there resumes (its finished scans
    are skipped, unless ``overwrite``). Names must be unique safe names (see
    :func:`mambacontrol.io.unique_names`).

    Args:
        inputs: further files the batch reads (e.g. the manifest), which must not lie in ``out``.

    Returns:
        (names done now or before, {name: error} for scans that failed).
    """
    from tqdm.auto import tqdm

    s = settings or PredictSettings()
    s.check()
    names = [name for name, _ in requests]
    if len(set(names)) != len(names) or any(safe_name(n) != n for n in names):
        raise ValueError("predict_many needs unique safe names (mambacontrol.io.unique_names)")
    every_input = [*inputs, *(p for _, r in requests for p in r.inputs(model_dir))]
    done, failed = [], {}
    with _claimed(out, "predict-batch", every_input, overwrite, resume=True) as folder:
        folder.check_free([*names, FAILURES_NAME])
        for name, req in tqdm(list(requests), desc="scans", disable=None):
            if folder.owns(name) and (folder.path / name / SUMMARY_NAME).is_file() and not overwrite:
                done.append(name)
                continue
            try:
                with folder.staging() as staged:
                    _predict_into(pipe, req, staged, s, model_dir)
                    folder.commit(staged, name)
                done.append(name)
            except MambaControlError as exc:
                failed[name] = str(exc)
                log.warning("%s: %s", name, exc)
        with folder.staging() as staged:
            write_json(staged / FAILURES_NAME, failed)
            folder.commit(staged / FAILURES_NAME, FAILURES_NAME)
    return done, failed
