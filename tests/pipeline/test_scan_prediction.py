"""The prediction path: checked once when a request is built, each file read once, timings
returned, the UNet's context computed once per horizon."""

import dataclasses
import json

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.errors import MambaControlError
from mambacontrol.io import load_nifti, save_nifti
from mambacontrol.pipeline import prepare, scan_prediction
from mambacontrol.pipeline.progression import SamplingPlan
from mambacontrol.pipeline.scan_prediction import (
    FolderLayout,
    PredictRequest,
    PredictSettings,
    write_prediction,
)
from tests.pipeline.test_progression import build


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


@pytest.fixture(scope="module")
def pipe(atlas):
    return build(atlas)


def test_a_request_is_checked_and_normalised_when_built():
    request = PredictRequest("scan.nii.gz", 70.0, "female", "Early MCI", [1, 2.5], "seg.nii.gz")
    assert (request.sex, request.diagnosis, request.years) == ("F", "MCI", (1, 2.5))
    assert request.image.name == "scan.nii.gz" and request.segmentation.name == "seg.nii.gz"
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.age = 30.0
    for kwargs, message in [({"age": 30.0}, "age 30 is outside 40–100"),
                            ({"sex": "X"}, "sex 'X'"),
                            ({"years": []}, "at least one horizon"),
                            ({"years": [1.0, -1.0]}, "horizon -1 years is negative"),
                            ({"years": [25.0]}, "beyond 20")]:
        values = {"image": "scan.nii.gz", "age": 70.0, "sex": "F", "diagnosis": "CN",
                  "years": [1.0]} | kwargs
        with pytest.raises(MambaControlError, match=message):
            PredictRequest(**values)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_samples": 0}, "--samples 0 must be a whole number ≥ 1"),
    ({"num_inference_steps": 2.5}, "--steps 2.5 must be a whole number ≥ 1"),
    ({"num_samples": 10 ** 9}, "above the limit max_samples"),
    ({"intensity": "raw"}, "--intensity raw is not one of"),
    ({"seed": -1}, "seed -1 must be a whole number"),
])
def test_settings_are_checked_when_built(kwargs, message):
    with pytest.raises(MambaControlError, match=message):
        PredictSettings(**kwargs)


def test_model_defaults_fill_in_once(pipe):
    plan = PredictSettings(num_samples=3).sampling(pipe.sampling)
    assert plan == SamplingPlan(pipe.sampling.sampler, pipe.sampling.num_inference_steps, 3,
                                pipe.sampling.decode)


def test_predictions_return_their_timings_and_compute_the_context_once_per_horizon(
        pipe, atlas, monkeypatch):
    calls = []
    context = pipe.unet.context
    monkeypatch.setattr(pipe.unet, "context", lambda *a: calls.append(1) or context(*a))
    preds = pipe.predict(atlas.template, atlas.labels, 70.0, "F", "AD", [1.0, 2.0],
                         num_inference_steps=3, seed=0)
    assert [p.years for p in preds] == [1.0, 2.0] and len(calls) == 2
    assert list(preds.timings) == ["encoding", "sampling", "decoding"]
    assert all(seconds >= 0 for seconds in preds.timings.values())


def test_each_input_file_is_read_once(pipe, atlas, tmp_path, monkeypatch):
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("scan", "labels", "mask")}
    save_nifti(paths["scan"], atlas.template, atlas.grid.affine)
    save_nifti(paths["labels"], atlas.labels, atlas.grid.affine, dtype=np.int16)
    save_nifti(paths["mask"], atlas.mask.astype(np.uint8), atlas.grid.affine, dtype=np.uint8)
    reads = []

    def counting(path, **kwargs):
        reads.append(path.name)
        return load_nifti(path, **kwargs)

    monkeypatch.setattr(scan_prediction, "load_nifti", counting)
    monkeypatch.setattr(prepare, "load_nifti", counting)
    request = PredictRequest(paths["scan"], 70.0, "F", "AD", [1.0, 3.0], paths["labels"],
                             paths["mask"])
    settings = PredictSettings(num_samples=2, num_inference_steps=2, measure_volumes=False)
    out = tmp_path / "out"
    summary = write_prediction(pipe, request, out, settings, "model")
    assert sorted(reads) == ["labels.nii.gz", "mask.nii.gz", "scan.nii.gz"]
    assert json.loads((out / "summary.json").read_text())["settings"]["samples"] == 2
    assert list(summary["timings_s"]) == ["registration", "encoding", "sampling", "decoding",
                                          "back_mapping", "total"]
    expected = FolderLayout().entries(request.years)
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert sorted(p.name for p in (out / "years_1").iterdir()) == [
        "prediction.nii.gz", "regions.csv", "uncertainty.nii.gz"]


def test_the_baseline_is_prepared_for_measurement_once_and_each_horizon_measured(
        pipe, atlas, tmp_path, monkeypatch):
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("scan", "labels")}
    save_nifti(paths["scan"], atlas.template, atlas.grid.affine)
    save_nifti(paths["labels"], atlas.labels, atlas.grid.affine, dtype=np.int16)
    built, measured = [], []

    class Counting(scan_prediction.BaselineMeasurement):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

        def measure(self, other):
            measured.append(other)
            return super().measure(other)

    monkeypatch.setattr(scan_prediction, "BaselineMeasurement", Counting)
    request = PredictRequest(paths["scan"], 70.0, "F", "AD", [1.0, 3.0], paths["labels"])
    settings = PredictSettings(num_samples=2, num_inference_steps=2)
    summary = write_prediction(pipe, request, tmp_path / "out", settings, "model")
    assert len(built) == 1 and len(measured) == 2
    assert not np.array_equal(measured[0], measured[1])  # each horizon's mean prediction
    assert list(summary["timings_s"]) == ["registration", "encoding", "sampling", "decoding",
                                          "measurement", "back_mapping", "total"]
    for folder in ("years_1", "years_3"):
        rows = (tmp_path / "out" / folder / "regions.csv").read_text().splitlines()
        assert "predicted_mm3" in rows[0] and len(rows) == len(atlas.regions) + 1
