"""Predictions of a batch written as a BIDS derivative dataset (``predict --bids``).

For every scan and horizon::

    OUT/dataset_description.json                        DatasetType derivative, GeneratedBy
    OUT/sub-X/ses-Y/anat/sub-X_ses-Y[_acq-..][_run-..]_desc-pred<Y>y_T1w.nii.gz     prediction
    OUT/sub-X/ses-Y/anat/..._desc-pred<Y>y_T1w.json     sidecar: source, model, horizon, samples
    OUT/sub-X/ses-Y/anat/..._desc-pred<Y>yStd_T1w.nii.gz (+ .json)   spread of the samples
    OUT/sub-X/ses-Y/anat/..._desc-pred<Y>y_regions.csv  regional volumes (as ``regions.csv``)
    OUT/failures.json                                   scans that could not be predicted

Under ``accelerate launch`` every process predicts its share of the scans into the one dataset
(:mod:`mambacontrol.pipeline.shards`).

Names come from :func:`mambacontrol.data.bids.bids_derivative_paths`; the images are those of
:func:`mambacontrol.pipeline.scan_prediction.write_prediction` (the input's own space).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mambacontrol.data.bids import bids_derivative_paths, dataset_description, sidecar
from mambacontrol.data.manifest import Visit
from mambacontrol.errors import MambaControlError
from mambacontrol.io import OutputFolder
from mambacontrol.pipeline.progression import ProgressionPipeline
from mambacontrol.pipeline.scan_prediction import (
    FAILURES_NAME,
    HorizonFiles,
    PredictRequest,
    PredictSettings,
    ScanRecord,
    commit_failures,
    commit_json,
    write_prediction,
)
from mambacontrol.pipeline.shards import Shard

log = logging.getLogger(__name__)

DESCRIPTION_NAME = "dataset_description.json"
_ENTITY = re.compile(r"(?:^|_)(acq|ce|rec|run)-([A-Za-z0-9]+)")
_SESSION = re.compile(r"(?:^|_)ses-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class BidsTarget:
    """Where a scan's predictions go: its BIDS subject, session and acquisition entities."""

    subject: str
    session: str | None = None
    entities: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, subject: str, session: str | None, image: str | os.PathLike) -> BidsTarget:
        """The target of a scan: ``acq``/``ce``/``rec``/``run`` entities read from its file name."""
        return cls(subject, session or None, tuple(_ENTITY.findall(Path(image).name)))

    @classmethod
    def of_visit(cls, visit: Visit) -> BidsTarget:
        """A manifest row's target: its session from a ``session`` column (``manifest
        from-bids``), else from its file name (``ses-<label>``)."""
        session = visit.extra.get("session", "").strip()
        if not session:
            found = _SESSION.search(Path(visit.image_path).name)
            session = found.group(1) if found else None
        return cls.of(visit.subject_id, session, visit.image_path)

    def paths(self, years: float) -> dict[str, Path]:
        """The relative derivative paths for one horizon (see ``bids_derivative_paths``)."""
        return bids_derivative_paths(".", self.subject, self.session, years, dict(self.entities))


@dataclass(frozen=True)
class BidsLayout:
    """A scan's files in the BIDS derivative (the module docstring): no ``summary.json``, no
    montage; a JSON sidecar beside each image."""

    target: BidsTarget

    @property
    def summary(self) -> None:
        return None

    def files(self, years: float) -> HorizonFiles:
        paths = self.target.paths(years)
        regions = paths["image"].name.replace("_T1w.nii.gz", "_regions.csv")
        return HorizonFiles(paths["image"], paths["uncertainty"], paths["image"].with_name(regions),
                            prediction_sidecar=paths["sidecar"],
                            uncertainty_sidecar=paths["uncertainty_sidecar"])

    def sidecars(self, record: ScanRecord, years: float) -> dict[Path, dict]:
        request, files = record.request, self.files(years)
        common = dict(source=request.image, model=str(record.model_dir), years=years,
                      samples=record.sampling.num_samples, seed=record.settings.seed)
        extra = {"Age": request.age, "Sex": request.sex, "Diagnosis": request.diagnosis,
                 "Steps": record.sampling.num_inference_steps, "Preparation": record.preparation}
        return {files.prediction_sidecar: sidecar(**common, **extra),
                files.uncertainty_sidecar: sidecar(**common, uncertainty=True)}


def predict_bids(pipe: ProgressionPipeline, requests: Sequence[tuple[BidsTarget, PredictRequest]],
                 folder: OutputFolder, settings: PredictSettings, model_dir: str | None = None,
                 overwrite: bool = False,
                 shard: Shard | None = None) -> tuple[list[str], dict[str, str]]:
    """Predict every scan into the claimed ``folder`` as a BIDS derivative dataset.

    A scan whose every prediction exists (written by an earlier run of this batch) is skipped
    unless ``overwrite``. With a ``shard`` (every process of an ``accelerate launch`` calls this
    with the same requests, in a folder from :func:`~.shards.claim_shared`), this process predicts
    its share; the main process then writes ``dataset_description.json`` and the merged
    ``failures.json`` (a job-array part writes only ``failures.<part>.json``: a run without parts
    completes the dataset).

    Returns:
        (scans done now or before, {scan: error}), scans named by their first image path, over
        every process, in request order.
    """
    shard = shard or Shard()
    _check_distinct(requests)
    if shard.is_main:
        folder.check_free([DESCRIPTION_NAME, FAILURES_NAME])
    done, failed = [], {}
    for target, request in tqdm(shard.select(list(requests)), desc="scans", disable=None):
        name = str(request.image)
        layout = BidsLayout(target)
        if not overwrite and _all_present(folder, layout, request.years):
            done.append(name)
            continue
        try:
            with folder.staging() as staged:
                write_prediction(pipe, request, staged, settings, model_dir, layout)
                for path in sorted(p for p in staged.rglob("*") if p.is_file()):
                    folder.commit_file(path, path.relative_to(staged))
            done.append(name)
        except MambaControlError as exc:
            failed[name] = str(exc)
            log.warning("%s: %s", name, exc)
    done, failed = shard.merge([str(r.image) for _, r in requests], done, failed)
    if shard.is_main:
        if shard.part is None:
            commit_json(folder, DESCRIPTION_NAME, dataset_description())
        commit_failures(folder, shard, failed)
    return done, failed


def _check_distinct(requests: Sequence[tuple[BidsTarget, PredictRequest]]) -> None:
    """Refuse two scans whose predictions would get one file name."""
    owners: dict[Path, Path] = {}
    for target, request in requests:
        for horizon in request.years:
            key = target.paths(horizon)["image"]
            if key in owners:
                raise MambaControlError(f"{request.image} and {owners[key]} both give {key}; "
                                        "give them different sessions or run/acq entities")
            owners[key] = request.image


def _all_present(folder: OutputFolder, layout: BidsLayout, years: Sequence[float]) -> bool:
    """Whether an earlier run of this batch wrote every horizon's prediction."""
    images = [layout.files(horizon).prediction for horizon in years]
    return all(folder.owns(p.parts[0]) and (folder.path / p).is_file() for p in images)
