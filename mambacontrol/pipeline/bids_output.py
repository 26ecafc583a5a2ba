"""Predictions of a batch written as a BIDS derivative dataset (``predict --bids``).

For every scan and horizon::

    OUT/dataset_description.json                        DatasetType derivative, GeneratedBy
    OUT/sub-X/ses-Y/anat/sub-X_ses-Y[_acq-..][_run-..]_desc-pred<Y>y_T1w.nii.gz     prediction
    OUT/sub-X/ses-Y/anat/..._desc-pred<Y>y_T1w.json     sidecar: source, model, horizon, samples
    OUT/sub-X/ses-Y/anat/..._desc-pred<Y>yStd_T1w.nii.gz (+ .json)   spread of the samples
    OUT/sub-X/ses-Y/anat/..._desc-pred<Y>y_regions.csv  regional volumes (as ``regions.csv``)
    OUT/failures.json                                   scans that could not be predicted

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

from mambacontrol.data.bids import bids_derivative_paths, dataset_description, sidecar
from mambacontrol.errors import MambaControlError
from mambacontrol.io import OutputFolder, write_json
from mambacontrol.pipeline.progression import ProgressionPipeline
from mambacontrol.pipeline.scan_prediction import (
    FAILURES_NAME,
    PredictRequest,
    PredictSettings,
    horizon_folder,
    write_prediction,
)

log = logging.getLogger(__name__)

DESCRIPTION_NAME = "dataset_description.json"
_ENTITY = re.compile(r"(?:^|_)(acq|ce|rec|run)-([A-Za-z0-9]+)")


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

    def paths(self, years: float) -> dict[str, Path]:
        """The relative derivative paths for one horizon (see ``bids_derivative_paths``)."""
        return bids_derivative_paths(".", self.subject, self.session, years, dict(self.entities))


def predict_bids(pipe: ProgressionPipeline, requests: Sequence[tuple[BidsTarget, PredictRequest]],
                 folder: OutputFolder, settings: PredictSettings, model_dir: str | None = None,
                 overwrite: bool = False) -> tuple[list[str], dict[str, str]]:
    """Predict every scan into the claimed ``folder`` as a BIDS derivative dataset.

    A scan whose every prediction exists (written by an earlier run of this batch) is skipped
    unless ``overwrite``.

    Returns:
        (scans done now or before, {scan: error}), scans named by their first image path.
    """
    from tqdm.auto import tqdm

    targets = {}
    for target, req in requests:
        for y in req.years:
            key = target.paths(y)["image"]
            if key in targets:
                raise MambaControlError(f"{req.image} and {targets[key]} both give {key}; give "
                                        "them different sessions or run/acq entities")
            targets[key] = req.image
    folder.check_free([DESCRIPTION_NAME, FAILURES_NAME])
    done, failed = [], {}
    for target, req in tqdm(list(requests), desc="scans", disable=None):
        name = str(req.image)
        paths = [target.paths(y) for y in req.years]
        if not overwrite and all(folder.owns(p["image"].parts[0])
                                 and (folder.path / p["image"]).is_file() for p in paths):
            done.append(name)
            continue
        try:
            with folder.staging() as staged:
                summary = write_prediction(pipe, req, staged, settings, model_dir)
                for y, p in zip(req.years, paths):
                    _commit_horizon(folder, staged / horizon_folder(y), p, req, y, summary,
                                    model_dir)
            done.append(name)
        except MambaControlError as exc:
            failed[name] = str(exc)
            log.warning("%s: %s", name, exc)
    with folder.staging() as staged:
        write_json(staged / DESCRIPTION_NAME, dataset_description())
        write_json(staged / FAILURES_NAME, failed)
        for entry in (DESCRIPTION_NAME, FAILURES_NAME):
            folder.commit(staged / entry, entry)
    return done, failed


def _commit_horizon(folder: OutputFolder, staged: Path, paths: dict[str, Path],
                    req: PredictRequest, years: float, summary: dict,
                    model_dir: str | None) -> None:
    settings = summary["settings"]
    extra = {"Age": req.age, "Sex": req.sex, "Diagnosis": req.diagnosis,
             "Steps": settings["steps"], "Preparation": summary["preparation"]}
    common = dict(source=req.image, model=str(model_dir), years=years,
                  samples=settings["samples"], seed=settings["seed"])
    write_json(staged / "prediction.json", sidecar(**common, **extra))
    write_json(staged / "uncertainty.json", sidecar(**common, uncertainty=True))
    regions = paths["image"].name.replace("_T1w.nii.gz", "_regions.csv")
    moves = {"prediction.nii.gz": paths["image"], "prediction.json": paths["sidecar"],
             "uncertainty.nii.gz": paths["uncertainty"],
             "uncertainty.json": paths["uncertainty_sidecar"],
             "regions.csv": paths["image"].with_name(regions)}
    for src, dst in moves.items():
        folder.commit_file(staged / src, dst)
