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

:func:`write_prediction` is the one writer of these files; where each goes is its layout's
(:class:`FolderLayout` above, or the BIDS derivative of :mod:`.bids_output`). A
:class:`PredictRequest` and :class:`PredictSettings` are checked when they are built (the CLI
and the Python API build them), and nothing later checks them again.

``OUT`` is claimed first (:class:`mambacontrol.io.OutputFolder`); everything is written into a
hidden staging folder inside it and moved into place entry by entry at the end, so a failure
leaves nothing half-written and nothing that the command did not create is ever replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from mambacontrol._version import package_versions
from mambacontrol.atlas.segformats import FORMATS as SEG_FORMATS
from mambacontrol.data.manifest import normalize_diagnosis, normalize_sex
from mambacontrol.errors import MambaControlError, ModelError
from mambacontrol.io import (
    OutputFolder,
    Volume,
    inspect_nifti,
    load_nifti,
    safe_name,
    save_nifti,
    write_csv,
    write_json,
)
from mambacontrol.io.digest import sha256_file
from mambacontrol.io.tables import dict_rows
from mambacontrol.pipeline.figures import prediction_montage
from mambacontrol.pipeline.prepare import PreparedScan, prepare_scan
from mambacontrol.pipeline.progression import (
    Prediction,
    Predictions,
    ProgressionPipeline,
    SamplingDefaults,
    SamplingPlan,
    check_sampling_flags,
)
from mambacontrol.pipeline.shards import Shard, claim_shared
from mambacontrol.pipeline.timings import PhaseTimes
from mambacontrol.registration import BaselineMeasurement, RegionalVolumes

log = logging.getLogger(__name__)

MIN_MODEL_AGE, MAX_MODEL_AGE = 40.0, 100.0
"""Ages (years at the baseline) that ``predict`` accepts: the range the model is made for, the
ageing and dementia cohorts it learns from. Not the plausible ages a manifest may hold
(:data:`mambacontrol.data.manifest.MIN_AGE`–``MAX_AGE``, 18–120): another fact."""
MAX_YEARS = 20.0
"""The longest horizon ``predict`` accepts: the model has not seen longer ones."""
MAX_SEED = 2 ** 63 - 1
SUMMARY_NAME = "summary.json"
FAILURES_NAME = "failures.json"
PART_FAILURES = re.compile(r"failures\.part-\d+-of-\d+\.json")
"""A job-array part's failures (``predict --manifest --num-parts K --part-id I``)."""
INTENSITY_MODES = ("input", "normalized")
"""``input``: the prediction in the input's own intensities and field of view (the input plus the
predicted change, so prediction − input is the change; outside the brain the input itself);
``normalized``: the model's brain-only image, 0–1 normalised intensities."""


@dataclass(frozen=True)
class PredictRequest:
    """One scan to predict. Building one checks it; later steps take it as valid.

    Attributes:
        image: the baseline T1 NIfTI.
        age: years at the scan (:data:`MIN_MODEL_AGE`–:data:`MAX_MODEL_AGE`).
        sex: ``F``/``M`` (any accepted spelling; kept normalised).
        diagnosis: ``CN``/``MCI``/``AD`` (any accepted spelling; kept normalised).
        years: horizons in years (0–:data:`MAX_YEARS`); any sequence, kept as a tuple.
        segmentation: optional label map of the scan, in its space.
        mask: optional brain mask of the scan (e.g. SynthStrip's), in its space.

    Raises:
        MambaControlError: one line naming the bad value.
    """

    image: Path
    age: float
    sex: str
    diagnosis: str
    years: tuple[float, ...]
    segmentation: Path | None = None
    mask: Path | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.age) or not MIN_MODEL_AGE <= self.age <= MAX_MODEL_AGE:
            raise MambaControlError(f"age {self.age:g} is outside {MIN_MODEL_AGE:g}–"
                                    f"{MAX_MODEL_AGE:g} years; give the age in years at the "
                                    "baseline scan")
        try:
            sex, diagnosis = normalize_sex(self.sex), normalize_diagnosis(self.diagnosis)
        except ValueError as exc:
            raise MambaControlError(str(exc)) from None
        years = tuple(self.years)
        if not years:
            raise MambaControlError("give at least one horizon with --years")
        for horizon in years:
            if not np.isfinite(horizon) or horizon < 0:
                raise MambaControlError(f"horizon {horizon:g} years is negative or not a number; "
                                        "horizons are years after the baseline (≥ 0)")
            if horizon > MAX_YEARS:
                raise MambaControlError(f"horizon {horizon:g} years is beyond {MAX_YEARS:g}; "
                                        "the model has not seen such horizons")
        fields = {"image": Path(self.image), "sex": sex, "diagnosis": diagnosis, "years": years,
                  "segmentation": _optional_path(self.segmentation),
                  "mask": _optional_path(self.mask)}
        for name, value in fields.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def check_files(self) -> None:
        """Check every input file's header (cheap: before the model loads, so that a bad file
        fails first); the voxels are read once, when the scan is predicted."""
        inspect_nifti(self.image)
        for labels in (self.segmentation, self.mask):
            if labels is not None:
                inspect_nifti(labels, labels=True)

    def inputs(self, model_dir: str | os.PathLike | None = None) -> list[Path]:
        """Every file or folder the prediction reads (none may lie inside the output folder)."""
        return [p for p in (self.image, self.segmentation, self.mask, model_dir) if p is not None]


def _optional_path(value: str | os.PathLike | None) -> Path | None:
    return Path(value) if value else None


@dataclass(frozen=True)
class PredictSettings:
    """How to predict and what to write. Building one checks it (one line per bad value).

    Attributes:
        num_samples: samples averaged per horizon (``--samples``; None: the model's).
        num_inference_steps: sampler steps (``--steps``; None: the model's).
        sampler: ``ddim``, ``dpm-solver`` or ``ddpm`` (``--sampler``; None: the model's).
        guidance: guidance weight against the zero horizon (``--guidance``; None: the model's).
        seed: seed of the samples.
        png: also write a montage per horizon (the folder layout).
        registration_seed: seed of every registration (preparation, measurement).
        measure_volumes: measure each prediction's regional volumes (sub-voxel).
        bias_correction: N4 bias-field correction of a registered scan.
        intensity: one of :data:`INTENSITY_MODES`.
        seg_format: the segmentation's ids (``auto``, ``atlas``, ``freesurfer``).
    """

    num_samples: int | None = None
    num_inference_steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    seed: int = 0
    png: bool = False
    registration_seed: int = 0
    measure_volumes: bool = True
    bias_correction: bool = True
    intensity: str = "input"
    seg_format: str = "auto"

    def __post_init__(self) -> None:
        check_sampling_flags(self.num_samples, self.num_inference_steps, self.sampler,
                             self.guidance)
        if self.seg_format not in SEG_FORMATS:
            raise MambaControlError(f"--seg-format {self.seg_format} is not one of "
                                    f"{', '.join(SEG_FORMATS)}")
        if self.intensity not in INTENSITY_MODES:
            raise MambaControlError(f"--intensity {self.intensity} is not one of "
                                    f"{', '.join(INTENSITY_MODES)}")
        for name, value in (("seed", self.seed), ("registration seed", self.registration_seed)):
            if isinstance(value, bool) or int(value) != value or not 0 <= value <= MAX_SEED:
                raise MambaControlError(f"{name} {value} must be a whole number in 0–{MAX_SEED}")

    def sampling(self, defaults: SamplingDefaults) -> SamplingPlan:
        """These settings' sampling, the model's ``defaults`` where they give none."""
        return SamplingPlan.resolve(defaults, num_samples=self.num_samples,
                                    num_inference_steps=self.num_inference_steps,
                                    sampler=self.sampler, guidance=self.guidance)


# ---- where the files go -----------------------------------------------------------------------
@dataclass(frozen=True)
class HorizonFiles:
    """Where one horizon's outputs go, relative to the scan's output folder (None: not written).

    Attributes:
        prediction, uncertainty: the NIfTI images (the scan's own space).
        regions: the regional volumes table.
        montage: the montage PNG.
        prediction_sidecar, uncertainty_sidecar: JSON sidecars of the images.
    """

    prediction: Path
    uncertainty: Path
    regions: Path
    montage: Path | None = None
    prediction_sidecar: Path | None = None
    uncertainty_sidecar: Path | None = None


@dataclass(frozen=True, eq=False)
class ScanRecord:
    """How a scan's outputs were made: what ``summary.json`` and sidecars record.

    Attributes:
        request: the scan.
        settings: the settings.
        sampling: the sampling the model used (its defaults filled in).
        model_dir: the model folder or Hub id (as given).
        preparation: the ``preparation`` section of ``summary.json``.
    """

    request: PredictRequest
    settings: PredictSettings
    sampling: SamplingPlan
    model_dir: str | None
    preparation: dict


class OutputLayout(Protocol):
    """Names of a scan's output files (:class:`FolderLayout`, or
    :class:`~mambacontrol.pipeline.bids_output.BidsLayout`)."""

    @property
    def summary(self) -> Path | None:
        """Where ``summary.json`` goes (None: not written)."""

    def files(self, years: float) -> HorizonFiles:
        """Where one horizon's files go."""

    def sidecars(self, record: ScanRecord, years: float) -> dict[Path, dict]:
        """JSON sidecars of one horizon: ``{path: content}``."""


def horizon_folder(years: float) -> str:
    return f"years_{years:g}"


@dataclass(frozen=True)
class FolderLayout:
    """``summary.json`` and one ``years_<Y>/`` folder per horizon (the module docstring)."""

    png: bool = False

    @property
    def summary(self) -> Path:
        return Path(SUMMARY_NAME)

    def files(self, years: float) -> HorizonFiles:
        folder = Path(horizon_folder(years))
        return HorizonFiles(folder / "prediction.nii.gz", folder / "uncertainty.nii.gz",
                            folder / "regions.csv", folder / "montage.png" if self.png else None)

    def sidecars(self, record: ScanRecord, years: float) -> dict[Path, dict]:
        return {}

    def entries(self, years: Sequence[float]) -> list[str]:
        """The top-level entries written for these horizons."""
        return [SUMMARY_NAME, *(horizon_folder(horizon) for horizon in years)]


# ---- the one writer ---------------------------------------------------------------------------
def write_prediction(pipe: ProgressionPipeline, request: PredictRequest, folder: Path,
                     settings: PredictSettings, model_dir: str | None = None,
                     layout: OutputLayout | None = None) -> dict:
    """Predict one scan and write every output file into the (empty, staged) ``folder``.

    Each input file is read once. Files are named by ``layout`` (default: :class:`FolderLayout`
    with ``settings.png``).

    Returns:
        The summary (written to ``summary.json`` when the layout has one), with the seconds
        spent per phase in ``timings_s``.

    Raises:
        MambaControlError: a bad file, a failed registration, or a model that produces
            non-finite values.
    """
    layout = layout if layout is not None else FolderLayout(png=settings.png)
    start = time.perf_counter()
    clock = PhaseTimes()
    image = load_nifti(request.image)
    with clock.phase("registration"):
        scan = prepare_scan(image, pipe.atlas, request.segmentation,
                            seed=settings.registration_seed,
                            bias_correction=settings.bias_correction, mask=request.mask,
                            seg_format=settings.seg_format)
    sampling = settings.sampling(pipe.sampling)
    predictions = pipe.predict_checked(scan.image, scan.labels, request.age, request.sex,
                                       request.diagnosis, request.years, sampling,
                                       torch.Generator().manual_seed(settings.seed),
                                       mask=scan.mask)
    _check_finite(predictions, request)
    clock.add_all(predictions.timings)
    record = ScanRecord(request, settings, sampling, model_dir,
                        _preparation(scan, request, settings))
    measurer = None
    if settings.measure_volumes:
        with clock.phase("measurement"):
            measurer = BaselineMeasurement(scan.image, scan.labels, pipe.atlas.grid,
                                           pipe.atlas.label_ids, seed=settings.registration_seed)
    outputs = []
    for prediction in predictions:
        output, seconds = _write_horizon(pipe, image, scan, prediction, folder, layout, record,
                                         measurer)
        outputs.append(output)
        clock.add_all(seconds)
    clock.add("total", time.perf_counter() - start)
    summary = _summary(pipe, record, outputs, clock.seconds)
    if layout.summary is not None:
        write_json(folder / layout.summary, summary)
    return summary


def _check_finite(predictions: Predictions, request: PredictRequest) -> None:
    for prediction in predictions:
        if not (np.isfinite(prediction.image).all()
                and np.isfinite(prediction.uncertainty).all()):
            raise ModelError(f"the model produced non-finite values for {request.image} at "
                             f"{prediction.years:g} years; its weights are corrupt or it diverged "
                             "in training: retrain it or use another model")


def _write_horizon(pipe: ProgressionPipeline, image: Volume, scan: PreparedScan,
                   prediction: Prediction, folder: Path, layout: OutputLayout,
                   record: ScanRecord,
                   measurer: BaselineMeasurement | None) -> tuple[dict, dict[str, float]]:
    """Write one horizon's files.

    ``measurer`` (built once per scan; None: no regional measurement) measures the horizon's
    prediction, the mean of its samples, against the baseline.

    Returns:
        Its entry of the summary's ``outputs``, and the seconds it spent per phase.
    """
    settings, request = record.settings, record.request
    files = layout.files(prediction.years)
    clock = PhaseTimes()
    measured = None
    if measurer is not None:
        with clock.phase("measurement"):
            measured = measurer.measure(prediction.image)
    with clock.phase("back_mapping"):
        native, spread = _in_scan_space(image, scan, prediction, settings.intensity)
        save_nifti(folder / files.prediction, native.data, native.affine, inputs=[request.image])
        save_nifti(folder / files.uncertainty, spread.data, spread.affine, inputs=[request.image])
    write_csv(folder / files.regions, *dict_rows(region_rows(pipe, scan, prediction, measured)))
    if files.montage is not None:
        prediction_montage(scan.image, prediction.image, scan.mask, folder / files.montage,
                           title=f"{request.image.name}: +{prediction.years:g} years")
    for path, content in layout.sidecars(record, prediction.years).items():
        write_json(folder / path, content)
    output = {"years": prediction.years, "folder": horizon_folder(prediction.years),
              "mean_uncertainty": float(prediction.uncertainty[scan.mask].mean())}
    return output, clock.seconds


def _in_scan_space(image: Volume, scan: PreparedScan, prediction: Prediction,
                   intensity: str) -> tuple[Volume, Volume]:
    """The prediction and its uncertainty on the input's own grid (see :data:`INTENSITY_MODES`)."""
    if intensity == "input":
        change = scan.change_to_native(prediction.image - scan.image)
        spread = scan.change_to_native(prediction.uncertainty)
        return change.with_data(image.data + change.data), spread.with_data(np.abs(spread.data))
    return (scan.to_native(prediction.image, order=1),
            scan.to_native(prediction.uncertainty, order=1))


def region_rows(pipe: ProgressionPipeline, scan: PreparedScan, prediction: Prediction,
                measured: RegionalVolumes | None) -> list[dict]:
    """One row per atlas region: baseline and predicted volume in the scan's space (mm³)."""
    atlas = pipe.atlas
    volume_scale = scan.volume_scale
    base_counts = atlas.region_volumes(scan.labels)
    head = {}
    if prediction.node_log_ratio is not None and pipe.graph is not None:
        head = pipe.graph.label_values(prediction.node_log_ratio)
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


def _preparation(scan: PreparedScan, request: PredictRequest, settings: PredictSettings) -> dict:
    return {"registered": scan.transform is not None, "similarity": scan.similarity,
            "labels": scan.label_source, "segmentation_format": scan.segmentation_format,
            "native_mm3_per_atlas_mm3": scan.volume_scale,
            "bias_corrected": scan.bias_field is not None,
            "brain_mask": str(request.mask) if request.mask else "atlas",
            "intensity": settings.intensity}


def _summary(pipe: ProgressionPipeline, record: ScanRecord, outputs: list[dict],
             timings: dict[str, float]) -> dict:
    request, settings = record.request, record.settings
    model = {k: v for k, v in pipe.index().items()
             if k in ("components", "atlas", "sampling", "mambacontrol_version")}
    return {
        "inputs": {"image": str(request.image), "image_sha256": sha256_file(request.image),
                   "segmentation": str(request.segmentation) if request.segmentation else None,
                   "age": request.age, "sex": request.sex, "diagnosis": request.diagnosis,
                   "years": request.years},
        "model": {"dir": record.model_dir, **model},
        "settings": {"sampler": record.sampling.sampler,
                     "samples": record.sampling.num_samples,
                     "steps": record.sampling.num_inference_steps,
                     "guidance": record.sampling.guidance,
                     **({"guidance_groups": dict(record.sampling.guidance_groups)}
                        if record.sampling.guidance_groups else {}),
                     "seed": settings.seed,
                     "device": str(pipe.device), "registration_seed": settings.registration_seed},
        "preparation": record.preparation,
        "outputs": outputs,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
    }


# ---- commands -----------------------------------------------------------------------------------
def predict_scan(pipe: ProgressionPipeline, request: PredictRequest,
                 out: str | os.PathLike | OutputFolder,
                 settings: PredictSettings | None = None, model_dir: str | None = None,
                 overwrite: bool = False) -> dict:
    """Predict one scan and write its outputs into ``out`` (see the module docstring).

    ``out`` is claimed first (:class:`mambacontrol.io.OutputFolder`; or pass one already claimed
    for ``predict``): a non-empty folder is refused unless it holds an earlier ``predict`` output
    and ``overwrite`` is set, which replaces only that output.

    Returns:
        The summary written to ``summary.json`` (with ``timings_s``).

    Raises:
        MambaControlError: for an unusable ``out`` (before any work), a bad file, failed
            registration, or a model that produces non-finite values.
    """
    settings = settings or PredictSettings()
    layout = FolderLayout(png=settings.png)
    with _claimed(out, "predict", request.inputs(model_dir), overwrite) as folder:
        folder.check_free(layout.entries(request.years))
        with folder.staging() as staged:
            summary = write_prediction(pipe, request, staged, settings, model_dir, layout)
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


def predict_many(pipe: ProgressionPipeline, requests: Sequence[tuple[str, PredictRequest]],
                 out: str | os.PathLike | OutputFolder, settings: PredictSettings | None = None,
                 model_dir: str | None = None, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike] = (),
                 shard: Shard | None = None) -> tuple[list[str], dict[str, str]]:
    """Predict every ``(name, request)`` into ``out/<name>``, and write ``out/failures.json``.

    ``out`` is claimed for ``predict-batch``: an earlier batch there resumes (its finished scans
    are skipped, unless ``overwrite``). Names must be unique safe names (see
    :func:`mambacontrol.io.unique_names`).

    With a ``shard`` (:meth:`Shard.current`), this process predicts only its share of the
    requests: under ``accelerate launch`` every process calls this with the same requests and
    the main one writes the merged ``failures.json``; a job-array part writes
    ``failures.part-<I>-of-<K>.json`` instead, which a later run without parts (skipping every
    scan done) merges into ``failures.json``.

    Args:
        inputs: further files the batch reads (e.g. the manifest), which must not lie in ``out``.
        shard: this process's share (default: every request).

    Returns:
        (names done now or before, {name: error} for scans that failed), over every process of
        the launch (of the part, with parts), in request order.
    """
    settings = settings or PredictSettings()
    shard = shard or Shard()
    names = [name for name, _ in requests]
    if len(set(names)) != len(names) or any(safe_name(n) != n for n in names):
        raise ValueError("predict_many needs unique safe names (mambacontrol.io.unique_names)")
    every_input = [*inputs, *(p for _, r in requests for p in r.inputs(model_dir))]
    with _claimed_batch(out, "predict-batch", every_input, overwrite, shard,
                        [*names, FAILURES_NAME]) as folder:
        layout = FolderLayout(png=settings.png)
        done, failed = [], {}
        for name, request in tqdm(shard.select(list(requests)), desc="scans", disable=None):
            if (folder.owns(name) and (folder.path / name / SUMMARY_NAME).is_file()
                    and not overwrite):
                done.append(name)
                continue
            try:
                with folder.staging() as staged:
                    write_prediction(pipe, request, staged, settings, model_dir, layout)
                    folder.commit(staged, name)
                done.append(name)
            except MambaControlError as exc:
                failed[name] = str(exc)
                log.warning("%s: %s", name, exc)
        done, failed = shard.merge(names, done, failed)
        if shard.is_main:
            commit_failures(folder, shard, failed)
    return done, failed


@contextlib.contextmanager
def _claimed_batch(out: str | os.PathLike | OutputFolder, command: str, inputs, overwrite: bool,
                   shard: Shard, free: Sequence[str]) -> Iterator[OutputFolder]:
    """``out`` claimed for a batch by every process of the launch (:func:`claim_shared`), or,
    when the caller already claimed it (an :class:`OutputFolder`), used as it is."""
    if isinstance(out, OutputFolder):
        if out.command != command:
            raise ValueError(f"output folder claimed for {out.command}, not {command}")
        yield out
        return
    with claim_shared(shard, out, command, inputs=inputs, overwrite=overwrite, resume=True,
                      free=free) as folder:
        yield folder


def commit_failures(folder: OutputFolder, shard: Shard, failed: dict[str, str]) -> None:
    """Write a batch's failures: ``failures.json``, or a part's ``failures.<part>.json``. A run
    without parts then removes the parts' files (its ``failures.json`` covers every scan)."""
    if shard.part is not None:
        commit_json(folder, f"failures.{shard.part}.json", failed)
        return
    commit_json(folder, FAILURES_NAME, failed)
    folder.remove_own(keep=[e for e in folder.entries if not PART_FAILURES.fullmatch(e)])


def commit_json(folder: OutputFolder, name: str, content) -> None:
    """Write a batch's own JSON file (``failures.json``...) through staging into ``folder``."""
    with folder.staging() as staged:
        write_json(staged / name, content)
        folder.commit(staged / name, name)
