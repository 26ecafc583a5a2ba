"""``mambacontrol evaluate`` on the tiny model: outputs, baselines, floor, compare."""

import json
import subprocess
import sys

from mambacontrol.cli.main import main


def test_evaluate_writes_report_with_baselines_floor_and_ablation(tiny_model, tiny_cohort,
                                                                  tmp_path):
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--manifest", str(tiny_cohort), "--model", str(tiny_model),
                 "--compare", str(tiny_model), "--out", str(out), "--max-pairs", "2",
                 "--samples", "2", "--steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    name = tiny_model.name
    assert set(metrics["summary"]["methods"]) >= {name, f"{name}-2", "copy-baseline",
                                                  "linear-extrapolation", "autoencoder-ceiling",
                                                  "measurement-floor"}
    # the compared model shares the main model's representation, graph and head: one ceiling
    # row and one trajectory-head row for both
    assert [m for m in metrics["summary"]["methods"] if "ceiling" in m] == ["autoencoder-ceiling"]
    assert [m for m in metrics["summary"]["methods"] if "head" in m] == ["trajectory-head"]
    pairs = (out / "pairs.csv").read_text().splitlines()
    assert len(pairs) == 1 + 2 * 7
    html = (out / "report.html").read_text()
    assert "<img" in html and "src=\"http" not in html
    assert (out / "regions.csv").is_file()


def test_evaluate_errors(tiny_model, tiny_cohort, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mambacontrol", "evaluate",
                        "--manifest", str(tiny_cohort), "--model", str(tiny_model),
                        "--out", str(tmp_path / "e"), "--baselines", "copy,oracle"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "oracle" in r.stderr and r.stderr.count("\n") == 1


def test_the_linear_fit_flag_reaches_the_evaluation(monkeypatch, tmp_path):
    import mambacontrol.evaluation.evaluate as evaluate_module

    seen = {}

    def fake_evaluate(manifest, models, out, settings, **kwargs):
        seen["settings"] = settings
        return {"n_pairs": {}, "methods": []}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    args = ["-q", "evaluate", "--manifest", "m.csv", "--model", "model", "--out",
            str(tmp_path / "e")]
    assert main([*args, "--linear-fit", "measured"]) == 0
    assert seen["settings"].linear_fit == "measured"
    assert main(args) == 0
    assert seen["settings"].linear_fit == "auto"
