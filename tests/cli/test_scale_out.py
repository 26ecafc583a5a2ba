"""Batches split over processes (``accelerate launch``) and job-array parts give one output,
file for file the one of a single process, and resume."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.ops.threads import torch_threads

IGNORED = {"timings_s"}
"""Fields that differ between runs by nature (seconds spent)."""


def _env():
    """One thread per process, no GPU (gloo on the CPU), the worktree importable."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launched(*args, processes=2):
    """``accelerate launch`` with ``processes`` CPU processes (``--multi_gpu`` is Accelerate's
    multi-process launcher; without a GPU its processes join a gloo group on the CPU)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "mambacontrol", "-q"]
    return subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, env=_env())


def files_of(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` but the folder's own bookkeeping, by relative path."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".mambacontrol")}


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same files; NIfTI voxels and affines equal; JSON equal but for timings; others byte-equal."""
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    for rel, pa in fa.items():
        pb = fb[rel]
        if rel.endswith(".nii.gz"):
            ia, ib = nib.load(str(pa)), nib.load(str(pb))
            np.testing.assert_array_equal(ia.get_fdata(), ib.get_fdata(), err_msg=rel)
            np.testing.assert_array_equal(ia.affine, ib.affine, err_msg=rel)
        elif rel.endswith(".json"):
            ja, jb = (json.loads(p.read_text()) for p in (pa, pb))
            if isinstance(ja, dict):
                ja, jb = ({k: v for k, v in j.items() if k not in IGNORED} for j in (ja, jb))
            assert ja == jb, rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


def stamps(folder: Path) -> dict[str, int]:
    return {rel: p.stat().st_mtime_ns for rel, p in files_of(folder).items()}


@pytest.fixture(scope="module")
def batch(tiny_cohort, tmp_path_factory):
    """A 4-scan manifest (one scan broken: a failure to merge) and the predict arguments."""
    visits = Manifest.from_csv(tiny_cohort).visits[:3]
    folder = tmp_path_factory.mktemp("batch")
    broken = folder / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    csv = folder / "batch.csv"
    csv.write_text("subject_id,image_uid,image_path,age,sex,diagnosis,segm_path\n" + "".join(
        f"{v.subject_id},{v.image_uid},{v.image_path},71,F,MCI,{v.segm_path}\n" for v in visits)
        + f"x,broken,{broken},72,M,AD,\n")
    return csv


def _predict_args(csv, model, out, *more):
    return ["predict", "--manifest", csv, "--years", "2", "--model", model, "--out", out,
            "--samples", "1", "--steps", "2", "--no-volumes", "--device", "cpu", *more]


@pytest.mark.slow
def test_predict_on_two_processes_equals_one_and_resumes(tiny_model, batch, tmp_path):
    single, launched = tmp_path / "single", tmp_path / "launched"
    with torch_threads(1):  # as each launched process runs
        assert main(["-q", *map(str, _predict_args(batch, tiny_model, single))]) == 1  # broken
    r = run_launched(*_predict_args(batch, tiny_model, launched))
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stdout.count("3 of 4 scans predicted") == 1  # one report, from the main process
    assert_same_outputs(single, launched)
    assert list(json.loads((launched / "failures.json").read_text())) == ["broken"]
    marker = json.loads((launched / ".mambacontrol-output.json").read_text())
    assert len(marker["entries"]) == 4  # 3 scans and failures.json, whoever wrote them
    assert not list(launched.glob(".mambacontrol-output.*.json"))  # side markers folded
    assert not list(launched.glob(".staging-*"))
    before = stamps(launched)
    # the merged marker makes the output resumable by any later run: every scan is skipped
    assert main(["-q", *map(str, _predict_args(batch, tiny_model, launched))]) == 1
    after = stamps(launched)
    assert {k: v for k, v in after.items() if k != "failures.json"} == {
        k: v for k, v in before.items() if k != "failures.json"}  # every scan done: skipped


def test_predict_in_parts_then_merged_equals_one_run(tiny_model, batch, tmp_path):
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    assert main(["-q", *map(str, _predict_args(batch, tiny_model, whole))]) == 1
    for part in ("0", "1"):
        args = _predict_args(batch, tiny_model, parted, "--num-parts", "2", "--part-id", part)
        assert main(["-q", *map(str, args)]) == (1 if part == "1" else 0)  # row 4 is in part 1
    names = {p.name for p in parted.iterdir()}
    assert {"failures.part-0-of-2.json", "failures.part-1-of-2.json"} <= names
    assert "failures.json" not in names
    predicted = {k: v for k, v in stamps(parted).items() if not k.startswith("failures")}
    assert main(["-q", *map(str, _predict_args(batch, tiny_model, parted))]) == 1  # the merge
    assert {k: v for k, v in stamps(parted).items() if k in predicted} == predicted
    assert_same_outputs(whole, parted)


def test_bids_in_parts_then_merged_equals_one_run(tiny_model, batch, tmp_path):
    """Parts write their scans into one BIDS derivative; the run without parts adds
    dataset_description.json and failures.json and removes the parts' failures."""
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    assert main(["-q", *map(str, _predict_args(batch, tiny_model, whole, "--bids"))]) == 1
    for part in ("0", "1"):
        args = _predict_args(batch, tiny_model, parted, "--bids", "--num-parts", "2", "--part-id",
                             part)
        main(["-q", *map(str, args)])
    assert not (parted / "dataset_description.json").exists()
    assert main(["-q", *map(str, _predict_args(batch, tiny_model, parted, "--bids"))]) == 1
    assert_same_outputs(whole, parted)


def test_bad_parts_are_refused_before_any_work(tiny_model, batch, tmp_path, capsys):
    out = tmp_path / "o"
    args = _predict_args(batch, tiny_model, out, "--num-parts", "2", "--part-id", "2")
    assert main(["-q", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--part-id 2 is not one of 0 to 1" in err
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_on_two_processes_equals_one(tiny_model, tiny_cohort, tmp_path):
    """Two pairs over two processes, two of their scans to prepare first (labels propagated by
    registration, by two workers of the main process while the other process waits): the same
    prepared scans, tables and metrics as one process preparing alone, and one report with the
    same panels (every registration on one ITK thread: they repeat only on one thread count)."""
    manifest = Manifest.from_csv(tiny_cohort)
    strip = {v.image_uid for v in manifest.select("test").visits[:2]}
    visits = [replace(v, segm_path=None if v.image_uid in strip else v.segm_path,
                      extra={**v.extra, "mask_path": str(tiny_cohort.parent / v.extra["mask_path"])
                             }) for v in manifest]
    csv = Manifest(visits, manifest.path).to_csv(tmp_path / "manifest.csv")
    args = ["--threads", "1", "evaluate", "--manifest", csv, "--model", tiny_model,
            "--max-pairs", "2", "--no-ceiling", "--samples", "1", "--steps", "1",
            "--device", "cpu"]
    single, launched = tmp_path / "single", tmp_path / "launched"
    r = subprocess.run([sys.executable, "-m", "mambacontrol", "-q", *map(str, args), "--out",
                        str(single)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_launched(*args, "--out", launched, "--workers", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("evaluated 2 pairs") == 1
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (single, launched))
    assert {k: v for k, v in ma.items() if k != "provenance"} == {
        k: v for k, v in mb.items() if k != "provenance"}  # provenance: timings, --out
    ha, hb = ((f / "report.html").read_text() for f in (single, launched))
    assert ha.count("<img") == hb.count("<img") > 0
    for folder in (single, launched):
        for name in ("metrics.json", "report.html"):
            (folder / name).unlink()
    assert len(list((launched / "prepared").iterdir())) == 6
    assert_same_outputs(single, launched)  # prepared scans, pairs.csv, regions.csv
    assert not list(launched.glob(".mambacontrol-output.*.json"))


@pytest.mark.parametrize("args, message", [
    (["train", "all", "--config", "demo", "--workers", "0"], "--workers 0 must be at least 1"),
    (["evaluate", "--manifest", "m.csv", "--model", "m", "--workers", "0"],
     "--workers 0 must be ≥ 1"),
])
def test_bad_workers_are_refused_before_any_work(args, message, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["-q", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()
