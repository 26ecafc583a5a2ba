import subprocess
import sys
import time

from mambacontrol.cli.main import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mambacontrol", *args],
                          capture_output=True, text=True)


def test_help_is_fast_and_light():
    code = ("import sys, time; t = time.perf_counter(); "
            "from mambacontrol.cli.main import build_parser;"
            "build_parser().format_help(); dt = time.perf_counter() - t;"
            "heavy = [m for m in ('torch', 'diffusers', 'torch_geometric', 'mamba_ssm', 'triton', "
            "'monai') if m in sys.modules]; print(dt, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, heavy = out.stdout.split(" ", 1)
    assert float(dt) < 1.0
    assert heavy.strip() == "[]"


def test_import_package_is_light():
    code = ("import sys, mambacontrol, mambacontrol.io, mambacontrol.data, mambacontrol.atlas;"
            "print([m for m in ('torch', 'diffusers', 'torch_geometric', 'mamba_ssm', 'triton')"
            " if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "atlas" in r.stdout
    t = time.perf_counter()
    r = run_cli("--version")
    assert r.returncode == 0 and "mambacontrol" in r.stdout
    assert time.perf_counter() - t < 5


def test_atlas_list_and_info(capsys):
    assert main(["atlas", "list"]) == 0
    assert "icbm152-2009a-nmm (default)" in capsys.readouterr().out
    assert main(["atlas", "info"]) == 0
    out = capsys.readouterr().out
    assert "96×112×96" in out and "120×144×120" in out and "hippocampus" in out and "134" in out


def test_unknown_atlas_is_one_line_error():
    r = run_cli("atlas", "info", "nope")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown atlas 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_manifest_check_errors_and_summary(tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("subject_id,image_uid,image_path,age,sex,diagnosis,split\ns,u,x.nii.gz,70,F,XX,train\n")
    r = run_cli("manifest", "check", str(bad), "--no-files")
    assert r.returncode == 2 and "row 1, column 'diagnosis'" in r.stderr
    assert r.stderr.count("\n") == 1
    good = tmp_path / "g.csv"
    good.write_text("subject_id,image_uid,image_path,age,sex,diagnosis,split\n"
                    "s,u1,x.nii.gz,70,F,CN,train\ns,u2,y.nii.gz,72,F,MCI,train\n")
    assert main(["manifest", "check", str(good), "--no-files"]) == 0
    assert "1 subjects, 2 visits, 1 visit pairs" in capsys.readouterr().out
