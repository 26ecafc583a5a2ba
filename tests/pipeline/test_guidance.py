"""``--guidance``: the weight reaches the sampler, is saved with a model and recorded, 0 is the
model as trained, and a bad weight is refused in one line."""

import json

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import main
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.evaluate import EvaluationSettings, _run_identity
from mambacontrol.io import load_nifti
from mambacontrol.pipeline.progression import ProgressionPipeline, SamplingPlan
from mambacontrol.pipeline.scan_prediction import PredictSettings, write_prediction
from tests.pipeline.test_progression import build
from tests.pipeline.test_sampler_choice import template_request


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


def test_guidance_reaches_the_prediction_and_is_recorded(atlas, tmp_path):
    pipe = build(atlas)
    request = template_request(atlas, tmp_path)
    images = {}
    for weight in (None, 0.0, 2.0):
        settings = PredictSettings(num_samples=1, num_inference_steps=3, guidance=weight,
                                   measure_volumes=False)
        out = tmp_path / f"w{weight}"
        write_prediction(pipe, request, out, settings, "model")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["settings"]["guidance"] == (0.0 if weight is None else weight)
        images[weight] = load_nifti(out / "years_2" / "prediction.nii.gz").data
    assert np.array_equal(images[None], images[0.0])  # the model's default is no guidance
    assert not np.array_equal(images[0.0], images[2.0])


def test_the_weight_is_saved_with_the_model_and_overridable(atlas, tmp_path):
    pipe = build(atlas)
    pipe.sampling.guidance = 1.5
    loaded = ProgressionPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "model"))
    assert loaded.sampling.guidance == 1.5
    assert SamplingPlan.resolve(loaded.sampling).guidance == 1.5
    assert SamplingPlan.resolve(loaded.sampling, guidance=0.0).guidance == 0.0  # 0 is a choice


def test_evaluation_records_keep_their_keys_unless_guidance_is_chosen():
    """Pair records written before ``--guidance`` existed are reused; a chosen weight makes a
    record of its own."""
    kwargs = dict(names={}, linear=None, exact=False)
    before = _run_identity(EvaluationSettings(), **kwargs)
    assert "guidance" not in before
    assert _run_identity(EvaluationSettings(guidance=1.0), **kwargs)["guidance"] == 1.0


@pytest.mark.parametrize("weight", [-1.0, 21.0, float("nan")])
def test_a_bad_weight_is_refused_in_one_line(weight, capsys):
    with pytest.raises(MambaControlError, match="--guidance .* must be a number from 0"):
        PredictSettings(guidance=weight)
    with pytest.raises(MambaControlError, match="--guidance"):
        EvaluationSettings(guidance=weight).check()
    code = main(["predict", "scan.nii.gz", "--years", "1", "--model", "m", "--out", "o",
                 "--guidance", str(weight)])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--guidance" in err[0]
