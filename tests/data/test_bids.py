import json

import nibabel as nib
import numpy as np
import pytest
from bids import BIDSLayout

from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.data.bids import (
    assign_splits,
    bids_derivative_paths,
    horizon_label,
    manifest_from_bids,
    sidecar,
    write_dataset_description,
)
from mambacontrol.errors import InputFileError, MambaControlError, ManifestError
from mambacontrol.io.tables import write_json

PARTICIPANTS = ("participant_id\tage\tsex\tdiagnosis\tsite\n"
                "sub-01\t70.5\tF\tCN\tA\n"
                "sub-02\t75\tM\tLMCI\tB\n"
                "sub-03\t80\tmale\tn/a\tB\n")


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])),
             str(path))


def make_bids(root, participants=PARTICIPANTS, sessions=None):
    """sub-01: ses-bl, ses-m24 (ages in sessions.tsv); sub-02: ses-bl, ses-m12 (acq_time only;
    ses-m12 has two runs); sub-03: one session, diagnosis per session."""
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text(participants)
    images = {"01": [("bl", ""), ("m24", "")],
              "02": [("bl", ""), ("m12", "_run-1"), ("m12", "_run-2")],
              "03": [("bl", "")]}
    for sub, items in images.items():
        for ses, run in items:
            write_image(root / f"sub-{sub}" / f"ses-{ses}" / "anat"
                        / f"sub-{sub}_ses-{ses}{run}_T1w.nii.gz")
    tables = sessions or {
        "01": "session_id\tage\nses-bl\t70.5\nses-m24\t72.5\n",
        "02": "session_id\tacq_time\nses-bl\t2010-03-01T10:00:00\nses-m12\t2011-03-01T10:00:00\n",
        "03": "session_id\tdiagnosis\nses-bl\tDementia\n",
    }
    for sub, text in tables.items():
        (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(text)
    # derivatives are not read as raw data
    write_image(root / "derivatives" / "x" / "sub-01" / "ses-bl" / "anat"
                / "sub-01_ses-bl_desc-y_T1w.nii.gz")
    return root


def test_manifest_from_bids(tmp_path):
    m = manifest_from_bids(make_bids(tmp_path / "bids"), split=(0.34, 0.33, 0.33), seed=1)
    rows = {v.image_uid: v for v in m}
    assert sorted(rows) == ["sub-01_ses-bl", "sub-01_ses-m24", "sub-02_ses-bl",
                            "sub-02_ses-m12_run-1", "sub-02_ses-m12_run-2", "sub-03_ses-bl"]
    assert rows["sub-01_ses-m24"].age == 72.5 and rows["sub-01_ses-bl"].age == 70.5
    assert rows["sub-02_ses-bl"].age == 75
    assert rows["sub-02_ses-m12_run-2"].age == pytest.approx(76.0, abs=0.01)  # 365 days later
    assert [rows[u].sex
            for u in ("sub-01_ses-bl", "sub-02_ses-bl", "sub-03_ses-bl")] == ["F", "M", "M"]
    assert rows["sub-02_ses-bl"].diagnosis == "MCI"  # ADNI's LMCI
    assert rows["sub-03_ses-bl"].diagnosis == "AD"  # from sessions.tsv, participants.tsv has n/a
    assert rows["sub-01_ses-bl"].subject_id == "sub-01"
    assert rows["sub-01_ses-m24"].extra["session"] == "ses-m24"
    assert rows["sub-02_ses-m12_run-1"].image_path.name == "sub-02_ses-m12_run-1_T1w.nii.gz"
    assert rows["sub-01_ses-bl"].image_path.is_file()
    splits = {v.subject_id: v.split for v in m}
    assert sorted(splits.values()) == ["test", "train", "valid"]  # one subject each
    assert len(m.pairs()) == 1 + 2  # sub-01: 1; sub-02: bl with each run (the runs share an age)


def test_split_column_and_round_trip(tmp_path):
    text = PARTICIPANTS.replace("\tsite\n", "\tsplit\n").replace("\tA\n", "\ttrain\n")
    text = text.replace("\tB\n", "\ttest\n")
    root = make_bids(tmp_path / "bids", participants=text)
    m = manifest_from_bids(root)
    assert {v.subject_id: v.split for v in m} == {"sub-01": "train", "sub-02": "test",
                                                  "sub-03": "test"}
    out = m.to_csv(tmp_path / "manifest.csv")
    back = Manifest.from_csv(out)
    assert [(v.image_uid, v.age, v.sex, v.diagnosis, v.split, v.image_path) for v in back] == \
        [(v.image_uid, round(v.age, 4), v.sex, v.diagnosis, v.split, v.image_path) for v in m]


def test_split_assignment_is_seeded_and_by_subject():
    subs = [f"sub-{i:02d}" for i in range(20)]
    a = assign_splits(subs, (0.7, 0.1, 0.2), seed=3)
    assert a == assign_splits(list(reversed(subs)), (0.7, 0.1, 0.2), seed=3)
    assert a != assign_splits(subs, (0.7, 0.1, 0.2), seed=4)
    assert sorted(a.values()).count("train") == 14 and list(a.values()).count("test") == 4
    with pytest.raises(MambaControlError, match="summing to 1"):
        assign_splits(subs, (0.7, 0.1, 0.1), seed=0)


def test_missing_column_names_columns_found(tmp_path):
    root = make_bids(tmp_path / "bids")
    with pytest.raises(ManifestError, match=r"no diagnosis column 'dx' in participants.tsv "
                       r"\(participant_id, age, sex, diagnosis, site\).*--diagnosis-column"):
        manifest_from_bids(root, diagnosis_column="dx")


def test_missing_values_named(tmp_path):
    root = make_bids(tmp_path / "bids", sessions={
        "01": "session_id\tage\nses-bl\t70.5\nses-m24\tn/a\n",
        "02": "session_id\tacq_time\nses-bl\t2010-03-01\nses-m12\t2011-03-01\n",
        "03": "session_id\tdiagnosis\nses-bl\tAD\n"})
    with pytest.raises(ManifestError, match=r"sub-01_sessions.tsv: sub-01 ses-m24, column 'age'"):
        manifest_from_bids(root)
    root = make_bids(tmp_path / "bids2", sessions={
        "01": "session_id\tage\nses-bl\t70.5\nses-m24\t72\n",
        "02": "session_id\nses-bl\nses-m12\n",
        "03": "session_id\tdiagnosis\nses-bl\tAD\n"})
    with pytest.raises(ManifestError, match=r"sub-02 ses-bl, column 'age': participants.tsv's age "
                       r"is the age at the first session.*acq_time"):
        manifest_from_bids(root)
    root = make_bids(tmp_path / "bids3", participants=PARTICIPANTS.replace("\tF\t", "\tX\t"))
    with pytest.raises(ManifestError, match=r"participants.tsv: sub-01 ses-bl, column 'sex': "
                       r"sex 'X'"):
        manifest_from_bids(root)


def test_not_bids_refused(tmp_path):
    with pytest.raises(InputFileError, match="not a BIDS dataset"):
        manifest_from_bids(tmp_path)
    write_json(tmp_path / "dataset_description.json", {"Name": "x", "BIDSVersion": "1.9.0"})
    with pytest.raises(InputFileError, match="no T1w images"):
        manifest_from_bids(tmp_path)


def test_cli_from_bids(tmp_path, capsys):
    root = make_bids(tmp_path / "bids")
    out = tmp_path / "m.csv"
    assert main(["manifest", "from-bids", str(root), "--out", str(out), "--split", "1,0,0"]) == 0
    assert "6 visits of 3 subjects" in capsys.readouterr().out
    m = Manifest.from_csv(out)
    assert len(m) == 6 and {v.split for v in m} == {"train"}
    assert main(["manifest", "from-bids", str(root), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["manifest", "from-bids", str(root), "--out", str(out), "--overwrite",
                 "--age-column", "years"]) == 2
    assert "no age column 'years'" in capsys.readouterr().err
    before = (root / "participants.tsv").read_text()
    assert main(["manifest", "from-bids", str(root), "--out", str(root / "participants.tsv"),
                 "--overwrite"]) == 2
    assert "is a file of the BIDS dataset" in capsys.readouterr().err
    assert (root / "participants.tsv").read_text() == before


@pytest.mark.parametrize("years,label", [(2, "pred2y"), (2.5, "pred2p5y"), (0.25, "pred0p25y"),
                                         (10.0, "pred10y"), (1 / 3, "pred0p3333y")])
def test_horizon_label(years, label):
    assert horizon_label(years) == label


def test_derivative_paths_and_description_indexed_by_pybids(tmp_path):
    raw = make_bids(tmp_path / "bids")
    out = tmp_path / "bids" / "derivatives" / "mambacontrol"
    desc = write_dataset_description(out, source_datasets=["../../"])
    meta = json.loads(desc.read_text())
    assert meta["DatasetType"] == "derivative"
    assert meta["GeneratedBy"][0]["Name"] == "mambacontrol" and meta["GeneratedBy"][0]["Version"]
    written = []
    for sub, ses, years, ent in (("sub-01", "ses-bl", 2.5, None), ("02", "m12", 1, {"run": "2"})):
        paths = bids_derivative_paths(out, sub, ses, years, entities=ent)
        for key in ("image", "uncertainty"):
            write_image(paths[key])
            write_json(paths["sidecar" if key == "image" else "uncertainty_sidecar"],
                       sidecar(source=f"bids:raw:{sub}/anat/x_T1w.nii.gz",
                               model="models/m", years=years, samples=4, seed=0,
                               uncertainty=key == "uncertainty"))
        written.append(paths)
    p = written[0]
    assert p["image"] == out / "sub-01/ses-bl/anat/sub-01_ses-bl_desc-pred2p5y_T1w.nii.gz"
    assert p["uncertainty"].name == "sub-01_ses-bl_desc-pred2p5yStd_T1w.nii.gz"
    assert p["sidecar"].name == "sub-01_ses-bl_desc-pred2p5y_T1w.json"
    assert written[1]["image"].name == "sub-02_ses-m12_run-2_desc-pred1y_T1w.nii.gz"
    layout = BIDSLayout(str(raw), validate=False, derivatives=str(out))
    deriv = layout.derivatives["mambacontrol"]
    found = deriv.get(suffix="T1w", desc="pred2p5y", extension=".nii.gz")
    assert [f.path for f in found] == [str(p["image"])]
    md = found[0].get_metadata()
    assert md["PredictionHorizonYears"] == 2.5 and md["NumberOfSamples"] == 4
    assert md["Sources"] == ["bids:raw:sub-01/anat/x_T1w.nii.gz"]
    std = deriv.get(suffix="T1w", desc="pred1yStd", subject="02", run=2, extension=".nii.gz")
    assert len(std) == 1
    # the raw layout does not see the derivatives as raw images
    assert len(layout.get(scope="raw", suffix="T1w", extension=".nii.gz")) == 6
    assert len(manifest_from_bids(raw)) == 6


def test_derivative_labels_checked(tmp_path):
    with pytest.raises(MambaControlError, match="subject 'sub-0_1' is not a BIDS label"):
        bids_derivative_paths(tmp_path, "sub-0_1", "bl", 1)
    with pytest.raises(MambaControlError, match="not a number of years"):
        bids_derivative_paths(tmp_path, "01", None, -1)
    no_ses = bids_derivative_paths(tmp_path, "01", None, 3)
    assert no_ses["image"] == tmp_path / "sub-01/anat/sub-01_desc-pred3y_T1w.nii.gz"


def test_dataset_without_sessions(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    write_json(root / "dataset_description.json", {"Name": "flat", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text("participant_id\tAge\tgender\tgroup\tsplit\n"
                                           "01\t66\tF\tSMC\tvalid\n02\t71\tM\tEMCI\ttest\n")
    for sub in ("01", "02"):
        write_image(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
    m = manifest_from_bids(root, age_column="Age", sex_column="gender", diagnosis_column="group")
    assert [(v.subject_id, v.image_uid, v.age, v.sex, v.diagnosis, v.split, v.extra["session"])
            for v in m] == [("sub-01", "sub-01", 66.0, "F", "CN", "valid", ""),
                            ("sub-02", "sub-02", 71.0, "M", "MCI", "test", "")]


def test_several_sessions_need_session_ages(tmp_path):
    root = make_bids(tmp_path / "bids")
    (root / "sub-01" / "sub-01_sessions.tsv").unlink()
    with pytest.raises(ManifestError, match=r"sub-01 has 2 sessions and participants.tsv one age; "
                       r"add sub-01/sub-01_sessions.tsv"):
        manifest_from_bids(root)
