"""``mambacontrol synth`` and the demo's cohort step, through the command line."""

import json
import subprocess
import sys

import pytest

from mambacontrol.cli.main import main
from mambacontrol.cli.synth_cmd import parse_split, parse_visits
from mambacontrol.data import Manifest
from mambacontrol.errors import ConfigError


def test_synth_command_writes_a_valid_cohort(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["-q", "synth", "--out", str(out), "--subjects", "3", "--spacing", "4",
                 "--visits", "2", "--workers", "1", "--seed", "4", "--no-figure"])
    assert code == 0
    text = capsys.readouterr().out
    assert "3 subjects, 6 visits, 3 visit pairs" in text and "lateral ventricles" in text
    manifest = Manifest.from_csv(out / "manifest.csv")
    assert all(len(vs) == 2 for vs in manifest.by_subject().values())
    assert not (out / "overview.png").exists()
    assert main(["-q", "synth", "--out", str(out), "--subjects", "3", "--spacing", "4"]) == 2
    assert "holds an earlier `mambacontrol synth` output" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mambacontrol", "synth", "--out", str(tmp_path / "x"),
                        "--visits", "1-3", "--spacing", "4"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "visits" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x" / "manifest.csv").exists()


def test_parse_visits_and_split():
    assert parse_visits("3") == (3, 3) and parse_visits("2-5") == (2, 5)
    assert parse_split("70/10/20") == pytest.approx((0.7, 0.1, 0.2))
    assert parse_split("7,1,2") == pytest.approx((0.7, 0.1, 0.2))
    for bad in ("x", "2-3-4"):
        with pytest.raises(ConfigError, match="--visits"):
            parse_visits(bad)
    for bad in ("70/30", "a/b/c", "-1/1/1"):
        with pytest.raises(ConfigError, match="--split"):
            parse_split(bad)


def test_synth_dynamics_flag(tmp_path, capsys):
    for dynamics in ("network", "independent"):
        out = tmp_path / dynamics
        assert main(["-q", "synth", "--out", str(out), "--subjects", "2", "--spacing", "4",
                     "--visits", "2", "--workers", "1", "--no-figure", "--dynamics", dynamics]) == 0
        config = json.loads((out / "cohort.json").read_text())["config"]
        assert config.get("dynamics", "independent") == dynamics
