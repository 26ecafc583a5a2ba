"""OutputFolder: what a command may write, replace and delete; safe and unique names; limits;
spreadsheet-safe CSV and strict JSON."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mambacontrol.errors import InputFileError, MambaControlError
from mambacontrol.io import OutputFolder, OutputFolderError, safe_name, unique_names
from mambacontrol.io.atomic import replace_dir
from mambacontrol.io.limits import ResourceLimitError, check_limit, limit, reset_limits, set_limits
from mambacontrol.io.outputs import LOCK, MARKER
from mambacontrol.io.tables import csv_cell, csv_text, csv_uncell, json_text


def _commit_file(folder, name, text):
    with folder.staging() as tmp:
        (tmp / name).write_text(text)
        folder.commit(tmp / name, name)


def test_new_folder_is_claimed_written_and_released(tmp_path):
    out = tmp_path / "new"
    with OutputFolder.claim(out, "predict") as folder:
        assert (out / LOCK).is_file()
        _commit_file(folder, "summary.json", "{}")
    assert not (out / LOCK).exists()
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"command": "predict", "entries": ["summary.json"]}
    assert sorted(os.listdir(out)) == sorted([MARKER, "summary.json"])


def test_failure_in_a_new_folder_leaves_nothing(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError), OutputFolder.claim(out, "predict") as folder:
        with folder.staging() as tmp:
            (tmp / "half.nii.gz").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not out.exists()


def test_a_file_or_an_input_inside_is_refused(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        OutputFolder.claim(f, "predict")
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.csv").write_text("a")
    with pytest.raises(OutputFolderError, match="holds the input"):
        OutputFolder.claim(data, "evaluate", inputs=[data / "x.csv"], overwrite=True)
    assert f.read_text() == "mine" and (data / "x.csv").read_text() == "a"


def test_foreign_content_is_refused_and_never_replaced(tmp_path):
    out = tmp_path / "user"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "summary.json").write_text("user's own")
    with pytest.raises(OutputFolderError, match="holds no mambacontrol output"):
        OutputFolder.claim(out, "predict")
    with OutputFolder.claim(out, "predict", overwrite=True) as folder:
        with pytest.raises(OutputFolderError, match="never replaced"):
            folder.check_free(["summary.json"])
        _commit_file(folder, "years_1", "ok")
    assert (out / "notes.txt").read_text() == "keep"
    assert (out / "summary.json").read_text() == "user's own"
    assert not (out / LOCK).exists()


def test_own_output_needs_overwrite_and_only_own_entries_go(tmp_path):
    out = tmp_path / "o"
    with OutputFolder.claim(out, "predict") as folder:
        _commit_file(folder, "summary.json", "first")
        _commit_file(folder, "years_1", "first")
    (out / "user.txt").write_text("keep")
    with pytest.raises(OutputFolderError, match="earlier `mambacontrol predict` output"):
        OutputFolder.claim(out, "predict")
    with OutputFolder.claim(out, "predict", overwrite=True) as folder:
        _commit_file(folder, "summary.json", "second")
        folder.remove_own(keep=["summary.json"])
    assert (out / "summary.json").read_text() == "second"
    assert not (out / "years_1").exists() and (out / "user.txt").read_text() == "keep"


def test_another_commands_output_is_refused(tmp_path):
    out = tmp_path / "o"
    with OutputFolder.claim(out, "synth") as folder:
        _commit_file(folder, "manifest.csv", "x")
    with pytest.raises(OutputFolderError, match="output of `mambacontrol synth`"):
        OutputFolder.claim(out, "evaluate", overwrite=True)


def test_resume_keeps_earlier_entries(tmp_path):
    out = tmp_path / "batch"
    with OutputFolder.claim(out, "predict-batch", resume=True) as folder:
        _commit_file(folder, "scan1", "x")
    with OutputFolder.claim(out, "predict-batch", resume=True) as folder:
        assert folder.owns("scan1") and not folder.owns("scan2")


def test_concurrent_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                            "command": "predict"}))
        with pytest.raises(OutputFolderError, match=f"pid {sleeper.pid}.*is writing there"):
            OutputFolder.claim(out, "predict")
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutputFolder.claim(out, "predict") as folder:  # its process is gone: stale
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputFolderError, match="is writing there"):
            OutputFolder.claim(out, "predict")  # one writer at a time, even in one process
        _commit_file(folder, "a", "x")


def test_parts_write_side_by_side_and_a_whole_claim_merges_them(tmp_path):
    """Job-array parts hold their own locks and record in side markers; a whole-folder claim
    refuses a running part (and the reverse), and folds the side markers into the marker."""
    out = tmp_path / "batch"
    part0 = OutputFolder.claim(out, "predict-batch", resume=True, part="part-0-of-2")
    part1 = OutputFolder.claim(out, "predict-batch", resume=True, part="part-1-of-2")
    with pytest.raises(OutputFolderError, match="is writing there"):
        OutputFolder.claim(out, "predict-batch", resume=True)
    with pytest.raises(OutputFolderError, match="is writing there"):
        OutputFolder.claim(out, "predict-batch", resume=True, part="part-0-of-3")
    _commit_file(part0, "scan0", "a")
    _commit_file(part1, "scan1", "b")
    assert not (out / MARKER).exists()  # parts never write the marker
    part0.release()
    part1.release()
    with OutputFolder.claim(out, "predict-batch", resume=True, part="part-0-of-2") as again:
        assert again.owns("scan0") and again.owns("scan1")  # the union of the records
    with OutputFolder.claim(out, "predict-batch", resume=True) as whole:
        assert whole.owns("scan0") and whole.owns("scan1")
        with pytest.raises(OutputFolderError, match="is writing there"):
            OutputFolder.claim(out, "predict-batch", resume=True, part="part-1-of-2")
    assert json.loads((out / MARKER).read_text())["entries"] == ["scan0", "scan1"]
    assert sorted(os.listdir(out)) == [MARKER, "scan0", "scan1"]  # side markers folded


def test_a_joined_writer_records_beside_the_main_claim(tmp_path):
    """A launch's other process joins the main process's claim: it stages and commits on its own,
    recorded in its side marker, which the main process folds in at the end."""
    out = tmp_path / "batch"
    with OutputFolder.claim(out, "predict-batch", resume=True) as main:
        other = OutputFolder.join(out, "predict-batch", "rank-1")
        _commit_file(other, "scan1", "b")
        _commit_file(main, "failures.json", "{}")
        with pytest.raises(OutputFolderError, match="was not written"):
            (out / "foreign").write_text("x")
            other.check_free(["foreign"])
        assert not main.owns("scan1")
        main.fold_writers()
    assert json.loads((out / MARKER).read_text())["entries"] == ["failures.json", "scan1"]
    assert not list(out.glob(".mambacontrol-output.*.json")) and not (out / LOCK).exists()


def test_a_failed_part_leaves_the_other_parts_work(tmp_path):
    out = tmp_path / "batch"
    with OutputFolder.claim(out, "predict-batch", resume=True, part="part-0-of-2") as part0:
        with pytest.raises(RuntimeError), OutputFolder.claim(
                out, "predict-batch", resume=True, part="part-1-of-2") as part1:
            with part1.staging():
                raise RuntimeError("boom")
        _commit_file(part0, "scan0", "a")
    assert (out / "scan0").read_text() == "a"
    assert not list(out.glob(".staging-*")) and not list(out.glob(".mambacontrol.*.lock"))


def test_entry_names_are_plain():
    folder = OutputFolder.__new__(OutputFolder)
    folder.entries = set()
    for bad in ("", ".", "..", "a/b", MARKER, LOCK):
        with pytest.raises(ValueError):
            folder.record(bad)


@pytest.mark.parametrize("text,name", [
    ("..", "_."), (".", "_"), ("", "_"), ("scan/1", "scan_1"), (".hidden", "_hidden"),
    ("sub-01_ses-1", "sub-01_ses-1"), ("a b:c", "a_b_c"), ("é", "_"),
])
def test_safe_name(text, name):
    assert safe_name(text) == name


def test_unique_names_refuse_collisions_naming_both_rows():
    assert unique_names([("row 1", "a"), ("row 2", "b"), ("row 3", "a")]) == {"a": "a", "b": "b"}
    with pytest.raises(InputFileError, match=r"'scan/1' \(row 1\) and 'scan_1' \(row 2\)"):
        unique_names([("row 1", "scan/1"), ("row 2", "scan_1")], "image_uid")
    with pytest.raises(InputFileError, match="same file name"):
        unique_names([("row 1", "Scan"), ("row 2", "scan")])


def test_limits_name_themselves_and_can_be_raised(monkeypatch):
    with pytest.raises(ResourceLimitError,
                       match=r"--limit max_samples=N or \$MAMBACONTROL_MAX_SAMPLES"):
        check_limit("max_samples", 1e9, "--samples 1e9")
    monkeypatch.setenv("MAMBACONTROL_MAX_SAMPLES", "2e9")
    check_limit("max_samples", 1e9, "--samples 1e9")
    try:
        set_limits(["max_samples=10"])
        assert limit("max_samples") == 10
        with pytest.raises(MambaControlError, match="NAME one of"):
            set_limits(["max_cats=3"])
        with pytest.raises(MambaControlError, match="positive finite"):
            set_limits(["max_samples=-1"])
    finally:
        reset_limits()
    assert limit("max_samples") == 2e9


def test_csv_cells_never_run_as_formulas():
    assert csv_cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    for text in ("+1", "-cmd", "@SUM(A1)", "\tx"):
        assert csv_cell(text).startswith("'") and csv_uncell(csv_cell(text)) == text
    assert csv_cell(-3.5) == "-3.5" and csv_cell(float("nan")) == "" and csv_cell(7) == "7"
    assert csv_cell(1691532.104) == "1691532.104" and csv_cell(1691532.104, ".6g") == "1.69153e+06"
    assert csv_text(["id", "x"], [["=1+1", -2.0]], ".6g") == "id,x\n'=1+1,-2\n"


def test_json_is_strict():
    text = json_text({"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(text) == {"a": None, "b": [None, 1.0]} and "NaN" not in text


def test_a_folder_emptied_by_its_user_is_new_again(tmp_path):
    out = tmp_path / "o"
    with OutputFolder.claim(out, "synth") as folder:
        _commit_file(folder, "manifest.csv", "x")
    (out / "manifest.csv").unlink()
    with OutputFolder.claim(out, "predict") as folder:  # only the stale marker was left
        _commit_file(folder, "summary.json", "{}")
    assert json.loads((out / MARKER).read_text())["command"] == "predict"


def test_replace_dir_swaps_whole_folders_and_restores_on_failure(tmp_path, monkeypatch):
    target, staged = tmp_path / "unet", tmp_path / ".unet.new"
    target.mkdir()
    (target / "w").write_text("old")
    staged.mkdir()
    (staged / "w").write_text("new")
    replace_dir(staged, target)
    assert (target / "w").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["unet"]
    staged.mkdir()
    (staged / "w").write_text("newer")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        replace_dir(staged, target)
    assert (target / "w").read_text() == "new"  # the old version is back in place


def test_replace_dir_swaps_files_and_links_and_leaves_nothing_aside(tmp_path):
    target, staged, aside = tmp_path / "a.json", tmp_path / ".a.new", tmp_path / ".old-a"
    target.write_text("old")
    staged.write_text("new")
    replace_dir(staged, target, aside=aside)
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["a.json"]
    (tmp_path / "folder").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "folder")
    staged.write_text("file")
    replace_dir(staged, link)
    assert not link.is_symlink() and link.read_text() == "file"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "folder", "link"]
