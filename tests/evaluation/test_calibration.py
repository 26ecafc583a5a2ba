"""``calibrate``: the guidance weight whose predicted change has the right size is chosen on a
split, saved in a copy of the model, and a rerun resumes."""

import hashlib
import json
import math

import pytest

from mambacontrol.cli.main import main
from mambacontrol.evaluation import calibration
from mambacontrol.evaluation import evaluate as evaluation
from mambacontrol.evaluation.calibration import calibrate_guidance, ratio_distance
from mambacontrol.evaluation.evaluate import EvaluationSettings
from mambacontrol.pipeline.progression import ProgressionPipeline


def test_ratio_distance():
    assert ratio_distance({"a": 1.0, "b": 1.0}) == 0
    assert ratio_distance({"a": 0.5, "b": 2.0}) == pytest.approx(math.log(2))
    assert ratio_distance({"a": 0.5, "b": None}) == pytest.approx(math.log(2))  # no true change
    assert ratio_distance({"a": -0.3}) == pytest.approx(-math.log(calibration.WRONG_SIGN_RATIO))
    assert ratio_distance({"a": None}) == math.inf


def test_the_closest_weight_is_chosen_and_the_top_of_the_grid_is_flagged(caplog):
    assert calibration.choose_weight({"0": 0.5, "1": 0.1, "2": 0.1}, [0, 1, 2]) == 1  # tie: less
    assert not caplog.records
    assert calibration.choose_weight({"0": 0.5, "2": 0.3, "4": 0.2}, [0, 2, 4]) == 4
    assert "largest weight tried" in caplog.text and "--weights 4,6,8,12" in caplog.text
    caplog.clear()
    assert calibration.choose_weight({"3": 0.2}, [3]) == 3  # one weight: nothing to widen
    assert not caplog.records


def test_the_ratios_are_the_model_rows():
    groups = calibration.KEY_GROUPS
    row = {"change_ratio": 0.5, "abs_error_pct": {"mean": 1.0, "sd": 0.1, "n": 3}}
    summary = {"methods": ["m", "copy-baseline"],
               "method_kinds": {"m": "model", "copy-baseline": "baseline"},
               "key_groups": {"m": {g: row for g in groups},
                              "copy-baseline": {g: {"change_ratio": 0.0} for g in groups}}}
    ratios = calibration.model_ratios(summary)
    assert ratios["hippocampus"] == {"change_ratio": 0.5, "abs_error_pct": 1.0}
    assert set(ratios) == set(groups)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_best_weight_is_chosen_saved_and_a_rerun_resumes(tiny_model, tiny_cohort, tmp_path,
                                                             monkeypatch):
    settings = EvaluationSettings(split="test", pairs="last", max_pairs=1, baselines=("copy",),
                                  ceiling=False, num_samples=1, num_inference_steps=1)
    before = _digest(tiny_model)
    out = tmp_path / "calibration"
    result = calibrate_guidance(tiny_cohort, tiny_model, out, [2, 0], settings)
    assert _digest(tiny_model) == before  # the model is read, never written
    assert set(result["weights"]) == {"0", "2"} and result["split"] == "test"
    assert result["chosen"] == min((0.0, 2.0), key=lambda w: result["distance"][f"{w:g}"])
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["chosen"] == result["chosen"]
    calibrated = ProgressionPipeline.from_pretrained(out / "model")
    assert calibrated.sampling.guidance == result["chosen"]
    for w in ("0", "2"):
        metrics = json.loads((out / "evaluations" / f"guidance-{w}" / "metrics.json").read_text())
        assert metrics["settings"]["guidance"] == w

    scored = []
    monkeypatch.setattr(evaluation, "_score_pair", lambda *a, **k: scored.append(a))
    again = calibrate_guidance(tiny_cohort, tiny_model, out, [0, 2], settings)
    assert scored == [] and again["weights"] == result["weights"]  # every pair reused


def test_bad_weights_are_refused_in_one_line(tiny_model, tiny_cohort, tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["calibrate", "--manifest", str(tiny_cohort), "--model", str(tiny_model),
                 "--out", str(out), "--weights", "0,25"])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights 25" in err[0]
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(SystemExit):
        main(["calibrate", "--manifest", str(tiny_cohort), "--model", str(tiny_model),
              "--out", str(out), "--weights", "one,two"])
