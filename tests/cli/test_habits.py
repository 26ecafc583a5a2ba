"""Global flags anywhere, --threads, bundled config names, the licences (issue 18, part B)."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mambacontrol.io.limits as limits
from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import add_global_options, build_parser, main
from mambacontrol.errors import ConfigError
from mambacontrol.training.configs import bundled_config, resolve_config_path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mambacontrol", *args], capture_output=True,
                          text=True, **kwargs)


@pytest.mark.parametrize("argv", [
    ["-v", "--threads", "2", "--limit", "max_steps=9", "atlas", "info"],
    ["atlas", "info", "-v", "--threads", "2", "--limit", "max_steps=9"],
    ["atlas", "-v", "info", "--threads", "2", "--limit", "max_steps=9"],
])
def test_global_flags_before_or_after_the_command(argv):
    args, extra = build_parser().parse_known_args(argv)
    assert not extra
    assert args.verbose is True and args.quiet is False and args.threads == 2
    assert [*args.limit, *getattr(args, "limit_after", [])] == ["max_steps=9"]


def test_flags_on_both_sides_all_count(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(limits, "set_limits", lambda given: seen.append(list(given)))
    assert main(["--limit", "max_steps=5", "atlas", "list", "-q", "--limit", "max_samples=7"]) == 0
    assert seen == [["max_steps=5", "max_samples=7"]]
    args, _ = build_parser().parse_known_args(["-v", "atlas", "list", "-q"])
    assert args.verbose and args.quiet  # a subcommand's default never undoes the global flag


def test_verbose_after_the_command_shows_the_traceback():
    quiet = run_cli("atlas", "info", "nope")
    loud = run_cli("atlas", "info", "nope", "-v")
    assert quiet.returncode == loud.returncode == 2
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert "unknown atlas 'nope'" in loud.stderr.splitlines()[-1]


def test_threads_sets_torch_openmp_and_itk():
    code = ("import os, torch; from mambacontrol.cli.main import main; "
            "main(['atlas', 'list', '--threads', '3']); "
            "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], "
            "os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["3", "3", "3"]
    bad = run_cli("atlas", "list", "--threads", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--threads '0' is not a whole number ≥ 1" in bad.stderr


def test_bundled_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = bundled_config("demo")
    assert resolve_config_path("demo") == resolve_config_path("demo.yaml") == demo
    assert resolve_config_path("synthetic-2mm") == bundled_config("synthetic-2mm")
    (tmp_path / "demo.yaml").write_text("seed: 1\n")  # a file that exists wins
    assert resolve_config_path("demo.yaml") == Path("demo.yaml")
    with pytest.raises(ConfigError) as err:
        resolve_config_path("nope")
    assert "'nope' is neither a file nor a bundled config" in str(err.value)
    assert "brain-1p5mm, brain-1p5mm-cpu, demo, synthetic-2mm, synthetic-2mm-4x" in str(err.value)
    with pytest.raises(ConfigError, match="neither a file"):
        resolve_config_path("configs/demo")  # a path is never taken for a name


def test_train_takes_a_config_name_and_refuses_an_unknown_tracker(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id\n")
    base = ["train", "all", "--out", str(tmp_path / "run"), f"data.manifest={manifest}"]
    assert main([*base, "--config", "nope"]) == 2
    bundled = "bundled names: brain-1p5mm, brain-1p5mm-cpu, demo, synthetic-2mm, synthetic-2mm-4x"
    assert bundled in capsys.readouterr().err
    assert main([*base, "--config", "demo", "engine.trackers=[tensorboard, nope]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "engine.trackers: unknown experiment tracker 'nope'; choose from tensorboard" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_licence_file_metadata_and_atlas_info(capsys):
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "License :: OSI Approved :: Apache Software License" in pyproject
    assert "CC BY-NC" in pyproject
    assert main(["atlas", "info"]) == 0
    out = capsys.readouterr().out
    assert "licence:" in out
    assert "labels: Neuromorphometrics labels" in out and "(CC BY-NC)" in out
    assert "use: non-commercial research only" in out
    assert "template: ICBM152 2009a: MNI copyright notice" in out


def test_atlas_licence_is_what_the_build_script_writes():
    spec = importlib.util.spec_from_file_location("build_atlas",
                                                  ROOT / "atlases" / "build_atlas.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    atlas = load_atlas()
    assert atlas.licence == build.LICENCE
    path = atlas.root / "atlas.json"
    meta = json.loads(path.read_text())
    assert list(meta)[:5] == ["id", "description", "sources", "licence", "regions_sha256"]
    assert json.dumps(meta, indent=2) + "\n" == path.read_text()  # the script's own formatting
    sources = (ROOT / "atlases" / "SOURCES.md").read_text()
    assert "Creative Commons Attribution-NonCommercial\n(CC BY-NC)" in sources


def test_a_commands_own_option_of_a_global_name_wins():
    parser = argparse.ArgumentParser()
    parser.add_argument("-q", dest="query")
    add_global_options(parser, top=False)
    args = parser.parse_args(["-q", "x", "--quiet", "--verbose"])
    assert args.query == "x" and args.quiet and args.verbose
