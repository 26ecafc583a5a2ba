"""``mambacontrol manifest prepare``: a manifest's scans prepared into one folder, in job-array
parts or at once, and the prepared manifest that needs no preparation again.

Most tests stand in a quick ``prepare_scan`` (the folder's bookkeeping is what they check; the
registration itself is tested in tests/registration and tests/pipeline); one runs the real one.
"""

import os
from dataclasses import replace

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.io import load_nifti
from mambacontrol.pipeline import prepare
from mambacontrol.pipeline.prepare import PreparedScan, load_on_grid, prepare_manifest
from tests.cli.test_scale_out import assert_same_outputs, stamps

STRIPPED = 5
"""Visits whose segmentation is dropped: on the grid but without labels, so they need preparing
(item i of them goes to part i mod K)."""


def _manifest(tiny_cohort, folder, count, stripped):
    """``folder/in.csv``: the tiny cohort's first ``count`` visits, the first ``stripped`` of them
    without their segmentation; mask_path relative to ``folder`` (``../``...)."""
    manifest = Manifest.from_csv(tiny_cohort)
    visits = [replace(v, segm_path=None if i < stripped else v.segm_path, extra={
        **v.extra, "mask_path": os.path.relpath(tiny_cohort.parent / v.extra["mask_path"], folder)})
        for i, v in enumerate(manifest.visits[:count])]
    return Manifest(visits).to_csv(folder / "in.csv")


@pytest.fixture
def scans(tiny_cohort, tmp_path):
    """A manifest of 7 visits, the first :data:`STRIPPED` to prepare."""
    return _manifest(tiny_cohort, tmp_path, 7, STRIPPED)


@pytest.fixture
def prepared(monkeypatch):
    """A quick stand-in for :func:`prepare_scan` (the scan's voxels and the atlas labels); the
    list of images it prepared."""
    calls = []

    def quick(image, atlas, segmentation=None, *, seed=0):
        calls.append(str(image))
        data = load_nifti(image).data.astype(np.float32)
        mask = data > 0
        return PreparedScan(data / data.max(), mask, np.where(mask, atlas.labels, 0), "propagated")

    monkeypatch.setattr(prepare, "prepare_scan", quick)
    return calls


def _prepare(csv, out, *more):
    return main(["-q", "manifest", "prepare", "--manifest", str(csv), "--out", str(out),
                 "--grid", "4mm", *map(str, more)])


def _parts(out):
    """The folder's scan files (``<uid>_<kind>.nii.gz``) by name."""
    return sorted(p.name for p in out.glob("*.nii.gz"))


def test_parts_then_a_run_without_parts_equal_one_run(scans, prepared, tmp_path):
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    assert _prepare(scans, whole) == 0
    assert len(prepared) == STRIPPED and len(_parts(whole)) == 3 * STRIPPED
    uids = [v.image_uid for v in Manifest.from_csv(scans).visits[:STRIPPED]]
    for part in (0, 1):
        prepared.clear()
        assert _prepare(scans, parted, "--num-parts", 2, "--part-id", part) == 0
        assert len(prepared) == len(uids[part::2])  # visit i of those to prepare: part i mod 2
        assert not (parted / "manifest.csv").exists()
    assert _parts(parted) == _parts(whole)
    before = stamps(parted)
    prepared.clear()
    assert _prepare(scans, parted) == 0  # merges: every scan done
    assert prepared == []
    assert {k: v for k, v in stamps(parted).items() if k != "manifest.csv"} == before
    assert_same_outputs(whole, parted)  # the scans, and manifest.csv byte for byte
    assert not list(parted.glob(".mambacontrol-output.*.json"))  # the parts' records folded
    assert not list(parted.glob(".mambacontrol*.lock")) and not list(parted.glob(".staging-*"))


def test_the_run_without_parts_prepares_what_the_parts_left(scans, prepared, tmp_path):
    out = tmp_path / "out"
    assert _prepare(scans, out, "--num-parts", 2, "--part-id", 1) == 0
    prepared.clear()
    assert _prepare(scans, out) == 0  # part 0 never ran
    assert len(prepared) == (STRIPPED + 1) // 2
    assert len(_parts(out)) == 3 * STRIPPED and (out / "manifest.csv").is_file()


def test_a_failed_run_keeps_whole_scans_only_and_resumes(scans, prepared, monkeypatch, tmp_path,
                                                         capsys):
    quick = prepare.prepare_scan
    third = str(Manifest.from_csv(scans).visits[2].image_path)

    def failing(image, *args, **kw):
        if str(image) == third:
            raise prepare.RegistrationError(f"{image}: does not register")
        return quick(image, *args, **kw)

    out = tmp_path / "out"
    monkeypatch.setattr(prepare, "prepare_scan", failing)
    assert _prepare(scans, out) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert len(_parts(out)) == 3 * 2 and not (out / "manifest.csv").exists()
    assert not list(out.glob(".staging-*"))
    monkeypatch.setattr(prepare, "prepare_scan", quick)
    prepared.clear()
    assert _prepare(scans, out) == 0
    assert len(prepared) == STRIPPED - 2  # the first two were kept


def test_the_prepared_manifest_needs_no_preparation(tiny_cohort, tmp_path, monkeypatch):
    """The real preparation (labels propagated) of two visits by two workers, one visit kept as
    it is; the prepared manifest then reads on the grid with nothing to prepare (what train and
    evaluate do)."""
    csv = _manifest(tiny_cohort, tmp_path, 3, 2)
    out = tmp_path / "out"
    assert _prepare(csv, out, "--workers", 2) == 0
    assert len(_parts(out)) == 3 * 2
    uid = Manifest.from_csv(csv).visits[0].image_uid
    lines = (out / "manifest.csv").read_text().splitlines()
    assert lines[1].split(",")[2:3] == [f"{uid}_t1.nii.gz"]  # relative to the folder
    again = Manifest.from_csv(out / "manifest.csv")
    monkeypatch.setattr(prepare, "prepare_scan", lambda *a, **k: pytest.fail("prepared again"))
    atlas = load_atlas(grid="4mm")
    kept = prepare_manifest(again, atlas, tmp_path / "cache")
    assert [v.image_path for v in kept] == [v.image_path for v in again]
    assert not (tmp_path / "cache").exists()
    for v in again:  # each row's image, labels and mask on the grid
        mask = again.path.parent / v.extra["mask_path"]
        scan = load_on_grid(v.image_path, v.segm_path, mask, atlas)
        assert scan.mask.any() and (scan.labels > 0).any()


@pytest.mark.parametrize("more, message", [
    (["--num-parts", "2", "--part-id", "2"], "--part-id 2 is not one of 0 to 1"),
    (["--part-id", "0"], "--part-id 0 needs --num-parts K > 1"),
    (["--workers", "0"], "--workers 0 must be at least 1"),
    (["--config", "demo"], "give either --config"),
    (["--atlas", "nope"], "unknown atlas 'nope'"),
])
def test_bad_arguments_are_refused_in_one_line(more, message, scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert _prepare(scans, out, *more) == 2  # --grid 4mm is always given
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not out.exists()


def test_the_grid_comes_from_the_run_config(scans, prepared, tiny_run_config, tmp_path):
    out = tmp_path / "out"
    assert main(["-q", "manifest", "prepare", "--manifest", str(scans), "--out", str(out),
                 "--config", str(tiny_run_config)]) == 0  # data.grid: 4mm
    image = load_nifti(next(out.glob("*_t1.nii.gz")))
    assert image.shape == load_atlas(grid="4mm").grid.shape
