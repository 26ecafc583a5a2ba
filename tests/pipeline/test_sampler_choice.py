"""``--sampler``: the choice reaches the sampler, is recorded, and a bad name is refused."""

import json

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import main
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.evaluate import EvaluationSettings
from mambacontrol.io import load_nifti, save_nifti
from mambacontrol.pipeline.progression import SamplingDefaults
from mambacontrol.pipeline.scan_prediction import PredictRequest, PredictSettings, write_prediction
from tests.pipeline.test_progression import build


def test_default_sampler_is_dpm_solver_at_ten_steps():
    defaults = SamplingDefaults()
    assert (defaults.sampler, defaults.num_inference_steps) == ("dpm-solver", 10)


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


def template_request(atlas, folder) -> PredictRequest:
    """A 2-year prediction request for the atlas template and its labels, written to ``folder``
    (a scan already on the model grid)."""
    scan = folder / "scan.nii.gz"
    save_nifti(scan, atlas.template, atlas.grid.affine)
    labels = folder / "labels.nii.gz"
    save_nifti(labels, atlas.labels, atlas.grid.affine, dtype=np.int16)
    return PredictRequest(scan, 70.0, "F", "AD", [2.0], labels)


def test_the_chosen_sampler_predicts_and_is_recorded(atlas, tmp_path):
    pipe = build(atlas)
    request = template_request(atlas, tmp_path)
    images = {}
    for sampler in ("ddim", "dpm-solver"):
        settings = PredictSettings(num_samples=1, num_inference_steps=3, sampler=sampler,
                                   measure_volumes=False)
        out = tmp_path / sampler
        write_prediction(pipe, request, out, settings, "model")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["sampler"] == sampler
        images[sampler] = load_nifti(out / "years_2" / "prediction.nii.gz").data
    assert not np.array_equal(images["ddim"], images["dpm-solver"])


def test_an_unknown_sampler_is_refused(capsys):
    with pytest.raises(MambaControlError, match="--sampler euler is not one of ddim, dpm-solver"):
        PredictSettings(sampler="euler")
    with pytest.raises(MambaControlError, match="--sampler euler is not one of"):
        EvaluationSettings(sampler="euler").check()
    with pytest.raises(SystemExit) as exc:
        main(["predict", "scan.nii.gz", "--years", "1", "--model", "m", "--out", "o",
              "--sampler", "euler"])
    assert exc.value.code == 2
    assert "invalid choice: 'euler'" in capsys.readouterr().err
