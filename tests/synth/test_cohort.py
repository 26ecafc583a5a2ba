"""Writing a cohort: files, manifest, ground-truth columns, determinism."""

import hashlib
import json
import re

import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest
from mambacontrol.errors import ConfigError, InputFileError, ManifestError
from mambacontrol.io import Grid, load_nifti
from mambacontrol.synth import format_summary, generate_cohort, grid_for_spacing, summarize_cohort

SMALL = {"subjects": 3, "grid": "4mm", "visits": (2, 3)}


def digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "a"
    manifest = generate_cohort(out, seed=0, workers=1, **SMALL)
    return out, manifest


def test_manifest_validates_with_ground_truth_columns(cohort, atlas):
    out, manifest = cohort
    again = Manifest.from_csv(out / "manifest.csv")
    assert len(again) == len(manifest) and len(again.subjects()) == 3
    header = (out / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["subject_id", "image_uid", "image_path", "age", "sex", "diagnosis",
                          "split", "segm_path"]
    assert sum(bool(re.fullmatch(r"vol_r\d+", c)) for c in header) == len(atlas.label_ids) == 134
    for key in atlas.key_groups:
        assert f"vol_{key}" in header and f"rate_{key}" in header
    assert {"mask_path", "visit", "years", "baseline_diagnosis"} <= set(header)
    assert not (out / "manifest.csv").read_text().count(str(out))  # paths relative to the CSV
    for visits in manifest.by_subject().values():
        assert len({v.extra["rate_hippocampus"] for v in visits}) == 1
        assert visits[0].extra["visit"] == "1" and float(visits[0].extra["years"]) == 0.0
        for v in visits:
            assert float(v.extra["years"]) == pytest.approx(v.age - visits[0].age, abs=1e-3)
            assert v.extra["baseline_diagnosis"] == visits[0].diagnosis
            for key, labels in atlas.key_groups.items():
                total = sum(float(v.extra[f"vol_r{lab}"]) for lab in labels)
                assert float(v.extra[f"vol_{key}"]) == pytest.approx(total, rel=1e-6)


def test_files_load_on_the_atlas_grid(cohort, atlas):
    _, manifest = cohort
    ids = set(atlas.label_ids) | {0}
    for v in manifest:
        image, segm = load_nifti(v.image_path), load_nifti(v.segm_path, labels=True)
        mask = load_nifti(manifest.path.parent / v.extra["mask_path"], labels=True)
        for vol in (image, segm, mask):
            assert Grid.of(vol).same_as(atlas.grid)
        assert set(np.unique(segm.data)) <= ids
        assert np.all(image.data[mask.data == 0] == 0) and image.data.max() == pytest.approx(1.0)
        assert np.all((segm.data > 0) <= (mask.data > 0))


def test_cohort_json_and_overview(cohort):
    out, _ = cohort
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == 0 and meta["config"]["grid"] == "4mm"
    assert meta["config"]["design"]["subjects"] == 3 and len(meta["subjects"]) == 3
    assert not re.search(r"\d{4}-\d{2}-\d{2}", (out / "cohort.json").read_text())
    follow_up = [v for s in meta["subjects"] for v in s["visits"][1:]]
    assert follow_up and all(v["realised_vs_prescribed_max_rel_error"] < 0.2 for v in follow_up)
    assert all(v["steps"] >= 1 for v in follow_up)
    assert meta["config"]["design"]["reference_age"] == 60.0
    for s in meta["subjects"]:
        history = s["pre_baseline"]
        assert sum(history["years"].values()) == pytest.approx(-s["history"][0][0], abs=1e-6)
        assert history["steps"] >= 1 and history["max_gradient_norm"] < 1.0
        for key, change in history["change_pct"].items():
            assert change["realised"] == pytest.approx(change["prescribed"], rel=0.05), key
        assert history["change_pct"]["hippocampus"]["realised"] < 0
        assert 1.0e6 < s["intracranial_volume_mm3"] < 2.5e6
    png = (out / "overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in png and len(png) > 20_000


def test_same_seed_same_bytes_any_workers_and_other_seed_differs(cohort, tmp_path):
    out, _ = cohort
    reference = digest(out)
    generate_cohort(tmp_path / "b", seed=0, workers=2, **SMALL)
    assert digest(tmp_path / "b") == reference
    generate_cohort(tmp_path / "c", seed=1, workers=1, figure=False, **SMALL)
    other = digest(tmp_path / "c")
    assert other["manifest.csv"] != reference["manifest.csv"]
    first_image = "sub-001/sub-001_ses-01_T1w.nii.gz"
    assert other[first_image] != reference[first_image]


def test_refuses_to_overwrite_and_bad_arguments(cohort, tmp_path):
    out, _ = cohort
    with pytest.raises(InputFileError, match="holds an earlier `mambacontrol synth` output"):
        generate_cohort(out, seed=0, **SMALL)
    with pytest.raises(ConfigError, match="visits"):
        generate_cohort(tmp_path / "x", subjects=2, grid="4mm", visits=(1, 2))
    with pytest.raises(ConfigError, match="workers"):
        generate_cohort(tmp_path / "x", subjects=2, grid="4mm", workers=0)
    with pytest.raises(ConfigError, match="spacing '3'"):
        grid_for_spacing("3")
    assert grid_for_spacing("1.5") == "1p5mm" and grid_for_spacing(4) == "4mm"
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_summary_table(cohort, tmp_path):
    _, manifest = cohort
    summary = summarize_cohort(manifest)
    assert summary.subjects == 3 and summary.visits == len(manifest)
    assert [r.diagnosis for r in summary.rows] == ["CN", "MCI", "AD"]
    assert [r.subjects for r in summary.rows] == [1, 1, 1]
    ad = summary.rows[2]
    assert ad.annual_change["hippocampus"] < summary.rows[0].annual_change["hippocampus"] < 0
    assert all(r.annual_change["lateral_ventricles"] > 0 for r in summary.rows)
    text = format_summary(summary)
    assert "3 subjects" in text and "hippocampus" in text and text.count("\n") == 5
    plain = tmp_path / "plain.csv"
    plain.write_text("subject_id,image_uid,image_path,age,sex,diagnosis,split\n"
                     "s,u,x.nii.gz,70,F,CN,train\n")
    with pytest.raises(ManifestError, match="no ground-truth"):
        summarize_cohort(Manifest.from_csv(plain, check_files=False))
