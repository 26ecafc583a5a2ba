"""``mambacontrol predict`` on a real-anatomy stand-in scan, bad input, and the batch form."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.io import load_nifti, save_nifti
from mambacontrol.testing.standins import lps_grid, standin_scan
from tests.atlas.test_segformats import to_aseg


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The atlas template resampled to 2 mm in LPS orientation and cropped, in scanner units."""
    atlas = load_atlas(grid="2mm")
    scan = standin_scan(atlas, lps_grid(atlas, spacing=2.0), seed=1)
    path = tmp_path_factory.mktemp("scan") / "native_lps.nii.gz"
    save_nifti(path, scan.data, scan.affine)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mambacontrol", "-q", *map(str, args)],
                          capture_output=True, text=True)


def test_prediction_comes_back_in_the_scans_own_space(tiny_model, standin, tmp_path):
    out = tmp_path / "pred"
    before = standin.read_bytes()
    assert main(["-q", "predict", str(standin), "--age", "74", "--sex", "F", "--diagnosis", "MCI",
                 "--years", "1", "2.5", "--model", str(tiny_model), "--out", str(out), "--png",
                 "--samples", "2", "--steps", "2"]) == 0
    assert standin.read_bytes() == before  # the input is never modified
    src = nib.load(str(standin))
    for folder in ("years_1", "years_2.5"):
        for name in ("prediction.nii.gz", "uncertainty.nii.gz"):
            img = nib.load(str(out / folder / name))
            assert img.shape == src.shape
            np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        pred = np.asarray(nib.load(str(out / folder / "prediction.nii.gz")).dataobj)
        # the brain lands where the scan's brain is: correlation with the input inside it
        native = np.asarray(src.dataobj)
        inside = pred > 0
        assert inside.mean() > 0.1 and np.corrcoef(pred[inside], native[inside])[0, 1] > 0.8
        rows = (out / folder / "regions.csv").read_text().splitlines()
        assert len(rows) == 135 and "predicted_mm3" in rows[0] and "head_change_pct" in rows[0]
        assert (out / folder / "montage.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preparation"]["registered"] and summary["preparation"]["labels"] == "propagated"
    assert {"registration", "sampling", "decoding", "total"} <= set(summary["timings_s"])


def _args(image, model, out, **over):
    opts = {"--age": "70", "--sex": "M", "--diagnosis": "AD", "--years": "1"} | over
    flat = [str(x) for kv in opts.items() for x in kv]
    return ["predict", str(image), *flat, "--model", str(model), "--out", str(out)]


@pytest.mark.parametrize("over,message", [
    ({"--age": "30"}, "age 30 is outside 40–100"),
    ({"--diagnosis": "PD"}, "diagnosis 'PD'"),
    ({"--sex": "X"}, "sex 'X'"),
    ({"--years": "-1"}, "horizon -1 years is negative"),
])
def test_bad_arguments(tiny_model, standin, tmp_path, capsys, over, message):
    assert main(["-q", *_args(standin, tiny_model, tmp_path / "o", **over)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_error_exit_has_no_traceback(tiny_model, standin, tmp_path):
    r = run_cli(*_args(standin, tiny_model, tmp_path / "o", **{"--age": "30"}))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_bad_files_and_models(tiny_model, standin, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    four_d = bad / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8, 3).astype(np.float32), np.eye(4)), four_d)
    nan = bad / "nan.nii.gz"
    data = np.random.rand(8, 8, 8).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    corrupt = bad / "corrupt.nii.gz"
    corrupt.write_bytes(standin.read_bytes()[:2000])
    cases = [(bad / "missing.nii.gz", tiny_model, "file not found"), (four_d, tiny_model, "is 4D"),
             (nan, tiny_model, "non-finite"), (corrupt, tiny_model, "corrupt or truncated"),
             (standin, bad, "not a mambacontrol model")]
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model, other,
                    ignore=shutil.ignore_patterns("cache", "checkpoints", "logs"))
    idx = json.loads((other / "model_index.json").read_text())
    idx["atlas"]["grid"] = "2mm"
    (other / "model_index.json").write_text(json.dumps(idx))
    cases.append((standin, other, "another version of atlas"))
    for image, model, message in cases:
        out = tmp_path / f"o_{image.stem}_{model.name}"
        assert main(["-q", *_args(image, model, out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_non_brain_image_is_refused(tiny_model, tmp_path, capsys):
    noise = tmp_path / "noise.nii.gz"
    rng = np.random.default_rng(0)
    save_nifti(noise, rng.random((60, 70, 60)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    out = tmp_path / "o"
    assert main(["-q", *_args(noise, tiny_model, out)]) == 2
    err = capsys.readouterr().err
    # which check refuses noise depends on where the affine lands it (ITK's thread count moves
    # it): too unlike the template, or not covering the template brain at all
    assert ("registration to the atlas failed" in err
            or "does not cover the template brain" in err), err
    assert err.count("\n") == 1
    assert not out.exists()


def test_batch_keeps_going_and_resumes(tiny_model, tiny_cohort, tmp_path):
    visits = Manifest.from_csv(tiny_cohort).visits[:2]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    csv = tmp_path / "batch.csv"
    csv.write_text("subject_id,image_uid,image_path,age,sex,diagnosis,segm_path\n"
                   f"a,{visits[0].image_uid},{visits[0].image_path},71,F,CN,{visits[0].segm_path}\n"
                   f"b,broken,{broken},72,M,AD,\n")
    out = tmp_path / "batch"
    args = ["-q", "predict", "--manifest", str(csv), "--years", "2", "--model", str(tiny_model),
            "--out", str(out), "--samples", "1", "--steps", "1", "--no-volumes"]
    assert main(args) == 1
    assert (out / visits[0].image_uid / "summary.json").is_file()
    failures = json.loads((out / "failures.json").read_text())
    assert list(failures) == ["broken"] and "broken.nii.gz" in failures["broken"]
    stamp = (out / visits[0].image_uid / "summary.json").stat().st_mtime_ns
    assert main(args) == 1
    assert (out / visits[0].image_uid / "summary.json").stat().st_mtime_ns == stamp


def test_full_head_prediction_equals_the_input_outside_the_brain(tiny_model, tiny_cohort, tmp_path):
    """In the input's intensities (the default), prediction − input is the predicted change: zero
    outside the brain mask, the model's change scaled back to scanner units inside it."""
    v = Manifest.from_csv(tiny_cohort).select("test").visits[0]
    brain = load_nifti(v.image_path)
    mask_path = tiny_cohort.parent / v.extra["mask_path"]
    mask = load_nifti(mask_path, labels=True).data > 0
    head = np.where(mask, brain.data * 900.0 + 100.0, 250.0).astype(np.float32)  # scalp, skull
    scan = tmp_path / "head.nii.gz"
    save_nifti(scan, head, brain.affine)
    base = ["-q", "predict", str(scan), "--age", "75", "--sex", "M", "--diagnosis", "AD",
            "--years", "4", "--segmentation", str(v.segm_path), "--mask", str(mask_path),
            "--model", str(tiny_model), "--samples", "2", "--steps", "2", "--no-volumes"]
    assert main([*base, "--out", str(tmp_path / "in")]) == 0
    assert main([*base, "--out", str(tmp_path / "norm"), "--intensity", "normalized"]) == 0
    pred = load_nifti(tmp_path / "in" / "years_4" / "prediction.nii.gz").data
    norm = load_nifti(tmp_path / "norm" / "years_4" / "prediction.nii.gz").data
    np.testing.assert_array_equal(pred[~mask], head[~mask])
    assert np.all(norm[~mask] == 0) and norm.max() <= 1.0
    # inside: the same change as the normalised prediction, in scanner units
    lo, hi = np.percentile(head[mask], [0.5, 99.5])
    base_norm = np.clip((head - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose((pred - head)[mask], ((norm - base_norm) * (hi - lo))[mask],
                               atol=1e-2 * (hi - lo))
    summary = json.loads((tmp_path / "in" / "summary.json").read_text())
    assert summary["preparation"]["intensity"] == "input"
    assert summary["preparation"]["brain_mask"] == str(mask_path)


def test_freesurfer_segmentation_is_mapped_and_a_foreign_one_refused(tiny_model, tiny_cohort,
                                                                     tmp_path, capsys):
    """A SynthSeg/FreeSurfer (aseg-id) label map is mapped onto the atlas's regions (summary
    says so); a map in neither the atlas's nor FreeSurfer's ids is refused in one line."""
    atlas = load_atlas(grid="4mm")
    v = Manifest.from_csv(tiny_cohort).select("test").visits[0]
    aseg = tmp_path / "aseg.nii.gz"
    save_nifti(aseg, to_aseg(atlas), atlas.grid.affine, dtype=np.int16)
    base = ["-q", "predict", str(v.image_path), "--age", "75", "--sex", "M", "--diagnosis", "AD",
            "--years", "2", "--model", str(tiny_model), "--samples", "1", "--steps", "1",
            "--no-volumes"]
    assert main([*base, "--segmentation", str(aseg), "--out", str(tmp_path / "fs")]) == 0
    summary = json.loads((tmp_path / "fs" / "summary.json").read_text())
    assert summary["preparation"]["segmentation_format"] == "freesurfer"
    foreign = tmp_path / "foreign.nii.gz"
    rng = np.random.default_rng(0)
    save_nifti(foreign, rng.integers(1, 256, atlas.grid.shape).astype(np.int16),
               atlas.grid.affine, dtype=np.int16)
    assert main([*base, "--segmentation", str(foreign), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FreeSurfer" in err and not (tmp_path / "x").exists()
    assert load_nifti(v.image_path).data.shape == atlas.grid.shape


def test_batch_as_bids_derivatives(tiny_model, tiny_cohort, tmp_path):
    visits = Manifest.from_csv(tiny_cohort).visits[:2]
    csv = tmp_path / "batch.csv"
    csv.write_text("subject_id,image_uid,image_path,age,sex,diagnosis,segm_path\n" + "".join(
        f"{v.subject_id},{v.image_uid},{v.image_path},71,F,MCI,{v.segm_path}\n" for v in visits))
    out = tmp_path / "derivatives" / "mambacontrol"
    args = ["-q", "predict", "--manifest", str(csv), "--years", "1.5", "--model", str(tiny_model),
            "--out", str(out), "--bids", "--samples", "1", "--steps", "1", "--no-volumes"]
    assert main(args) == 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "mambacontrol"
    for v in visits:
        sub, ses = v.image_uid.split("_")
        anat = out / sub / ses / "anat"
        image = anat / f"{sub}_{ses}_desc-pred1p5y_T1w.nii.gz"
        assert image.is_file() and (anat / f"{sub}_{ses}_desc-pred1p5yStd_T1w.nii.gz").is_file()
        meta = json.loads((anat / f"{sub}_{ses}_desc-pred1p5y_T1w.json").read_text())
        assert meta["PredictionHorizonYears"] == 1.5 and meta["Sources"] == [str(v.image_path)]
        assert (anat / f"{sub}_{ses}_desc-pred1p5y_regions.csv").is_file()
    stamp = image.stat().st_mtime_ns
    assert main(args) == 0  # resumes: nothing predicted again
    assert image.stat().st_mtime_ns == stamp
