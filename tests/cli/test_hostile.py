"""Hostile input, tried as a careless or malicious user would: every case must end in a one-line
refusal (exit 2, no traceback) or be handled, and lose nothing of the user's.

One test (or parameter) per class of issue 16: output folders (data loss), names from ids,
resources, model files, brain check, spreadsheet cells and JSON, the CLI boundary, training
configs; plus the failures users meet most (missing, corrupt, wrong-dimension files).
"""

import errno
import gzip
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mambacontrol.cli.synth_cmd as synth_cmd
from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.evaluation.outputs import write_pairs_csv
from mambacontrol.io import load_nifti, save_nifti
from mambacontrol.io.outputs import LOCK, MARKER
from tests.evaluation.fabricate import build_tiny_run

FAST = ["--samples", "1", "--steps", "1", "--no-volumes"]


def refused(capsys, argv, *messages, code=2):
    """Run the CLI; assert the exit code and a one-line error holding every message."""
    assert main(["-q", *map(str, argv)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mambacontrol: error: "), err
    for m in messages:
        assert m in err, err
    return err


@pytest.fixture(scope="module")
def visit(tiny_cohort):
    """A test visit on the 4 mm grid, with its segmentation (no registration needed)."""
    return Manifest.from_csv(tiny_cohort).select("test").visits[0]


def predict_args(visit, model, out, *extra, fast=True):
    return ["predict", visit.image_path, "--age", "72", "--sex", "F", "--diagnosis", "MCI",
            "--years", "1", "--segmentation", visit.segm_path, "--model", model, "--out", out,
            *(FAST if fast else []), *extra]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. output folders: nothing lost -----------------------------------------------------------
def test_predict_never_replaces_a_users_folder_or_file(tiny_model, visit, tmp_path, capsys):
    user = tmp_path / "results"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    (user / "summary.json").write_text("mine")
    before = snapshot(user)
    refused(capsys, predict_args(visit, tiny_model, user), "holds no mambacontrol output")
    assert snapshot(user) == before
    # with --overwrite it writes beside them, replacing nothing it did not create
    refused(capsys, predict_args(visit, tiny_model, user, "--overwrite"), "summary.json",
            "never replaced")
    assert snapshot(user) == before
    a_file = tmp_path / "pred.nii.gz"
    a_file.write_bytes(b"a user's file")
    refused(capsys, predict_args(visit, tiny_model, a_file), "is a file, not a folder")
    assert a_file.read_bytes() == b"a user's file"


def test_predict_twice_needs_overwrite_and_keeps_other_files(tiny_model, visit, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["-q", *map(str, predict_args(visit, tiny_model, out))]) == 0
    (out / "my_notes.txt").write_text("keep")
    refused(capsys, predict_args(visit, tiny_model, out), "earlier `mambacontrol predict` output",
            "--overwrite")
    assert main(["-q", *map(str, predict_args(visit, tiny_model, out, "--overwrite"))]) == 0
    assert (out / "my_notes.txt").read_text() == "keep"
    assert (out / "years_1" / "prediction.nii.gz").is_file() and not (out / LOCK).exists()


def test_concurrent_predict_on_one_out_is_refused(tiny_model, visit, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                            "command": "predict"}))
        refused(capsys, predict_args(visit, tiny_model, out), f"pid {other.pid}",
                "is writing there")
        assert (out / LOCK).is_file()  # the other writer's lock stays
    finally:
        other.kill()
        other.wait()


def test_out_that_holds_an_input_is_refused(tiny_model, visit, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    scan = data / "scan.nii.gz"
    shutil.copy(visit.image_path, scan)
    seg = data / "seg.nii.gz"
    shutil.copy(visit.segm_path, seg)
    argv = ["predict", scan, "--age", "72", "--sex", "F", "--diagnosis", "MCI", "--years", "1",
            "--segmentation", seg, "--model", tiny_model, "--out", data, "--overwrite", *FAST]
    before = snapshot(data)
    refused(capsys, argv, "holds the input")
    assert snapshot(data) == before


def test_evaluate_never_overwrites_its_own_manifest(tiny_model, tiny_cohort, tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    manifest = folder / "x.csv"
    shutil.copy(tiny_cohort, manifest)
    before = manifest.read_bytes()
    refused(capsys, ["evaluate", "--manifest", manifest, "--model", tiny_model, "--out", folder,
                     "--overwrite"], "holds the input")
    assert manifest.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["x.csv"]


def test_train_never_replaces_a_users_folder_named_like_a_stage(tiny_cohort, tiny_run_config,
                                                                tmp_path, capsys):
    out = tmp_path / "project"
    (out / "autoencoder").mkdir(parents=True)
    (out / "autoencoder" / "weights_i_need.bin").write_bytes(b"precious")
    before = snapshot(out)
    refused(capsys, ["train", "autoencoder", "--config", tiny_run_config, "--out", out,
                     f"data.manifest={tiny_cohort}"], "holds no mambacontrol output")
    assert snapshot(out) == before


def test_failed_predict_leaves_no_folder(tiny_model, tmp_path, capsys):
    atlas = load_atlas(grid="4mm")
    noise = tmp_path / "noise.nii.gz"
    rng = np.random.default_rng(0)
    save_nifti(noise, rng.random(atlas.grid.shape).astype(np.float32), atlas.grid.affine)
    out = tmp_path / "o"
    refused(capsys, ["predict", noise, "--age", "70", "--sex", "M", "--diagnosis", "AD", "--years",
                     "1", "--model", tiny_model, "--out", out, *FAST],
            "on the atlas grid, but its similarity to the template", "not a T1-weighted brain")
    assert not out.exists()  # the non-brain volume on the atlas grid passed no brain check before


# ---- names derived from ids ---------------------------------------------------------------------
def _batch(tmp_path, rows):
    csv = tmp_path / "batch.csv"
    lines = ["subject_id,image_uid,image_path,age,sex,diagnosis,segm_path"]
    lines += [f"{s},{uid},{v.image_path},71,F,CN,{v.segm_path}" for s, uid, v in rows]
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_batch_ids_dot_and_dotdot_stay_inside_out(tiny_model, tiny_cohort, tmp_path, capsys):
    v = Manifest.from_csv(tiny_cohort).visits
    csv = _batch(tmp_path, [("a", "..", v[0]), ("b", ".", v[1])])
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    out = work / "batch"
    argv = ["-q", "predict", "--manifest", csv, "--years", "1", "--model", tiny_model, "--out",
            out, *FAST]
    assert main(list(map(str, argv))) == 0
    assert (work / "keep.txt").read_text() == "keep"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MARKER, "_.", "_", "failures.json"])
    assert (out / "_." / "summary.json").is_file() and (out / "_" / "summary.json").is_file()


def test_batch_ids_that_collide_are_refused_naming_both_rows(tiny_model, tiny_cohort, tmp_path,
                                                             capsys):
    v = Manifest.from_csv(tiny_cohort).visits
    csv = _batch(tmp_path, [("a", "scan/1", v[0]), ("b", "scan_1", v[1])])
    out = tmp_path / "batch"
    refused(capsys, ["predict", "--manifest", csv, "--years", "1", "--model", tiny_model,
                     "--out", out, *FAST], "'scan/1' (row 1)", "'scan_1' (row 2)")
    assert not out.exists()


# ---- 2. resources checked before they are spent -------------------------------------------------
def _header_only(path, shape, dtype=np.float32):
    """A .nii.gz whose header declares ``shape`` but whose data is a few zeros (a bomb)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_zooms((1.0,) * len(shape))
    hdr.set_qform(np.eye(4), 1)
    with gzip.open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
    return path


def test_oversized_header_is_refused_without_reading(tiny_model, tmp_path, capsys):
    bomb = _header_only(tmp_path / "bomb.nii.gz", (30000, 30000, 30000))
    t = time.perf_counter()
    refused(capsys, ["predict", bomb, "--age", "70", "--sex", "M", "--diagnosis", "AD", "--years",
                     "1", "--model", tiny_model, "--out", tmp_path / "o"],
            "header declares 30000×30000×30000 voxels", "--limit max_voxels=N")
    assert time.perf_counter() - t < 5 and not (tmp_path / "o").exists()


def test_trailing_gzip_bomb_is_never_decompressed(tmp_path):
    """nibabel reads only the bytes the header declares: 1 GB of zeros after them cost nothing."""
    path = tmp_path / "trailing.nii.gz"
    img = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4))
    raw = img.to_bytes()
    chunk = b"\0" * (1 << 24)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(raw)
        for _ in range(64):
            fh.write(chunk)
    t = time.perf_counter()
    vol = load_nifti(path)
    assert vol.shape == (8, 8, 8) and time.perf_counter() - t < 2


def test_limit_flag_raises_a_limit(tmp_path, capsys):
    bomb = _header_only(tmp_path / "big.nii.gz", (700, 700, 700))
    refused(capsys, ["predict", bomb, "--age", "70", "--sex", "M", "--diagnosis", "AD", "--years",
                     "1", "--model", tmp_path, "--out", tmp_path / "o"], "max_voxels")
    # raised, the header check passes and the next check (the model folder) is what fails
    refused(capsys, ["--limit", "max_voxels=1e9", "predict", bomb, "--age", "70", "--sex", "M",
                     "--diagnosis", "AD", "--years", "1", "--model", tmp_path, "--out",
                     tmp_path / "o"], "not a mambacontrol model")


@pytest.mark.parametrize("argv,message", [
    (["--samples", "1000000000"], "above the limit max_samples"),
    (["--steps", "99999"], "above the limit max_steps"),
    (["--seed", "100000000000000000000000"], "seed 100000000000000000000000 must be"),
    (["--seed", "-1"], "must be a whole number in 0"),
    (["--seed", "1e23"], "argument --seed: invalid int value: '1e23'"),
])
def test_sampling_requests_are_bounded(tiny_model, visit, tmp_path, capsys, argv, message):
    if argv[1] == "1e23":  # argparse's own refusal exits through SystemExit, in one line too
        with pytest.raises(SystemExit) as stop:
            main(["-q", *map(str, predict_args(visit, tiny_model, tmp_path / "o", *argv))])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and message in err
        return
    refused(capsys, predict_args(visit, tiny_model, tmp_path / "o", *argv, fast=False), message)
    assert not (tmp_path / "o").exists()


# ---- 3. model files -----------------------------------------------------------------------------
def _copy_model(tiny_model, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model, dst, ignore=shutil.ignore_patterns("cache", "checkpoints", "logs"))
    (dst / MARKER).unlink(missing_ok=True)
    return dst


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _edit_weights(folder, fn):
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path))


@pytest.mark.parametrize("case,message", [
    ("huge_channels", "the folder mixes two models"),
    ("huge_params", "above the limit max_model_parameters"),
    ("nan_weights", "holds NaN or infinite values"),
    ("int_weights", "not floating point"),
    ("atlas_escape", "not a plain folder name"),
    ("huge_samples", "above the limit max_samples"),
    ("index_list", "corrupt model index"),
])
def test_hostile_models_are_refused_before_allocation(tiny_model, visit, tmp_path, capsys, case,
                                                      message):
    model = _copy_model(tiny_model, tmp_path)
    first = lambda s: next(iter(s))  # noqa: E731
    if case == "huge_channels":
        _edit_json(model / "unet" / "config.json", lambda c: c.update(channels=[512, 1024]))
    elif case == "huge_params":
        _edit_json(model / "unet" / "config.json",
                   lambda c: c.update(channels=[65536, 65536], num_head_channels=64))
    elif case == "nan_weights":
        _edit_weights(model / "unet", lambda s: s[first(s)].fill_(float("nan")))
    elif case == "int_weights":
        _edit_weights(model / "unet", lambda s: s.update({first(s): s[first(s)].to(torch.int32)}))
    elif case == "atlas_escape":
        _edit_json(model / "model_index.json", lambda i: i["atlas"].update(id="../../etc"))
    elif case == "huge_samples":
        _edit_json(model / "model_index.json", lambda i: i["sampling"].update(num_samples=10 ** 9))
    elif case == "index_list":
        (model / "model_index.json").write_text("[1, 2]")
    t = time.perf_counter()
    refused(capsys, predict_args(visit, model, tmp_path / "o"), message)
    assert time.perf_counter() - t < 60 and not (tmp_path / "o").exists()


# ---- 4. CSV and JSON ----------------------------------------------------------------------------
def test_formula_ids_are_neutralised_in_every_csv(tmp_path):
    run = build_tiny_run(subject_ids=("=HYPERLINK(\"http://x\")", "+1", "@SUM(A1)"))
    text = write_pairs_csv(tmp_path / "pairs.csv", run.results).read_text()
    for cell in ("'=HYPERLINK", "'+1", "'@SUM"):
        assert cell in text
    for line in text.splitlines()[1:]:
        assert not line.startswith(("=", "+", "@", '"=', '"+', '"@'))


def test_manifest_ids_round_trip_through_the_guard(tiny_cohort, tmp_path):
    m = Manifest.from_csv(tiny_cohort)
    hostile = Manifest([replace(v, subject_id="=" + v.subject_id) for v in m.visits])
    path = hostile.to_csv(tmp_path / "m.csv", relative_to=tiny_cohort.parent)
    assert "\n'=" in path.read_text()
    assert Manifest.from_csv(path, check_files=False).visits[0].subject_id.startswith("=")


# ---- 5. the CLI boundary ------------------------------------------------------------------------
@pytest.mark.parametrize("exc,message", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/x"), "free disk space"),
    (OSError(errno.EACCES, "Permission denied", "/out"), "check the permissions"),
    (OSError(errno.EROFS, "Read-only file system", "/out"), "read-only"),
    (MemoryError(), "out of memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
     "out of memory"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"), "not UTF-8"),
])
def test_expected_failures_become_one_line(monkeypatch, tmp_path, capsys, exc, message):
    def boom(args):
        raise exc

    monkeypatch.setattr(synth_cmd, "run", boom)  # registered when main() builds its parser
    refused(capsys, ["synth", "--out", tmp_path / "c"], message)


def test_a_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(synth_cmd, "run", bug)
    with pytest.raises(KeyError):
        main(["-q", "synth", "--out", str(tmp_path / "c")])


def test_latin1_manifest_is_refused(tiny_model, tmp_path, capsys):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("subject_id,image_uid,image_path,age,sex,diagnosis\n"
                    "Jos\xe9,a,x.nii.gz,70,M,CN\n".encode("latin-1"))
    refused(capsys, ["predict", "--manifest", csv, "--years", "1", "--model", tiny_model,
                     "--out", tmp_path / "o"], "line 2 is not UTF-8", "re-save the CSV as UTF-8")


@pytest.mark.parametrize("kind,message", [
    ("missing", "file not found"), ("empty", "empty file"), ("text", "not a NIfTI file"),
    ("2d", "not a 3D volume"), ("4d", "is 4D"),
    ("rgb", "RGB (colour) image"), ("complex", "not a greyscale scan"),
])
def test_bad_scans_are_refused_before_the_model_loads(tiny_model, visit, tmp_path, capsys, kind,
                                                      message):
    path = tmp_path / f"{kind}.nii.gz"
    rng = np.random.default_rng(0)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello")
    elif kind == "2d":
        nib.save(nib.Nifti1Image(rng.random((20, 20)).astype(np.float32), np.eye(4)), path)
    elif kind == "4d":
        nib.save(nib.Nifti1Image(rng.random((8, 8, 8, 2)).astype(np.float32), np.eye(4)), path)
    elif kind == "rgb":
        rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    elif kind == "complex":
        nib.save(nib.Nifti1Image(rng.random((8, 8, 8)).astype(np.complex64), np.eye(4)), path)
    argv = predict_args(visit, tmp_path / "no_model_here", tmp_path / "o")
    argv[1] = path
    argv[argv.index("--segmentation"):argv.index("--segmentation") + 2] = []
    refused(capsys, argv, message)  # the model folder is never looked at
    assert not (tmp_path / "o").exists()


def test_whole_training_config_is_checked_before_the_first_stage(tiny_cohort, tiny_run_config,
                                                                 tmp_path, capsys):
    out = tmp_path / "run"
    refused(capsys, ["train", "all", "--config", tiny_run_config, "--out", out,
                     f"data.manifest={tiny_cohort}", "controlnet.train.lr=-1"],
            "controlnet.train.lr: -1.0 must be a positive number")
    refused(capsys, ["train", "all", "--config", tiny_run_config, "--out", out,
                     f"data.manifest={tiny_cohort}", "controlnet.model.mamba_directions=[q+]"],
            "controlnet.model: the settings do not build a network")
    assert not out.exists()
