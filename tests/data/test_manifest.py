import csv

import pytest

import mambacontrol.data.manifest as manifest_module
from mambacontrol.data import Manifest, normalize_diagnosis, normalize_sex
from mambacontrol.errors import ManifestError

HEADER = ["subject_id", "image_uid", "image_path", "age", "sex", "diagnosis", "split", "segm_path"]


def write_manifest(folder, rows, header=HEADER, name="manifest.csv", make_files=True):
    path = folder / name
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    if make_files:
        for r in rows:
            rec = dict(zip(header, r))
            for col in ("image_path", "segm_path"):
                if rec.get(col):
                    p = folder / rec[col]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(b"x")
    return path


GOOD = [
    ["s1", "s1_v0", "img/s1_v0.nii.gz", "70.5", "F", "CN", "train", "seg/s1_v0.nii.gz"],
    ["s1", "s1_v1", "img/s1_v1.nii.gz", "72.0", "1", "0.5", "train", ""],
    ["s1", "s1_v2", "img/s1_v2.nii.gz", "74.25", "female", "MCI", "train", ""],
    ["s2", "s2_v0", "img/s2_v0.nii.gz", "80", "M", "AD", "test", ""],
    ["s2", "s2_v1", "img/s2_v1.nii.gz", "81", "0", "1", "test", ""],
]


def test_parses_and_resolves_relative_paths(tmp_path):
    m = Manifest.from_csv(write_manifest(tmp_path, GOOD))
    assert len(m) == 5 and m.subjects() == ["s1", "s2"]
    v = m.visits[1]
    assert (v.sex, v.diagnosis, v.split) == ("F", "MCI", "train")
    assert v.image_path == tmp_path / "img/s1_v1.nii.gz"
    assert m.visits[0].segm_path == tmp_path / "seg/s1_v0.nii.gz"
    assert m.visits[1].segm_path is None
    assert m.visits[4].diagnosis == "AD" and m.visits[4].sex == "M"


def test_pairs_all_and_last(tmp_path):
    m = Manifest.from_csv(write_manifest(tmp_path, GOOD))
    pairs = m.pairs()
    assert len(pairs) == 3 + 1
    assert [round(p.years, 2) for p in pairs if p.subject_id == "s1"] == [1.5, 3.75, 2.25]
    last = m.pairs("last")
    assert [(p.earlier.image_uid, p.later.image_uid) for p in last] == [("s1_v0", "s1_v2"),
                                                                        ("s2_v0", "s2_v1")]
    assert all(p.years > 0 for p in pairs)


def test_pairs_follow_age_not_row_order(tmp_path):
    rows = [GOOD[2], GOOD[0], GOOD[1]]
    m = Manifest.from_csv(write_manifest(tmp_path, rows))
    assert [p.earlier.image_uid for p in m.pairs()] == ["s1_v0", "s1_v0", "s1_v1"]


def test_same_age_visits_give_no_pair(tmp_path):
    rows = [GOOD[0], ["s1", "dup", "img/dup.nii.gz", "70.5", "F", "CN", "train", ""]]
    m = Manifest.from_csv(write_manifest(tmp_path, rows))
    assert m.pairs() == []


def test_select_split(tmp_path):
    m = Manifest.from_csv(write_manifest(tmp_path, GOOD))
    assert len(m.select("test")) == 2 and len(m.select("valid")) == 0
    with pytest.raises(ManifestError, match="split 'dev'"):
        m.select("dev")


@pytest.mark.parametrize("col,value,pattern", [
    ("age", "old", r"row 2, column 'age': 'old' is not a number"),
    ("age", "0.7", r"row 2, column 'age': 0.7 looks like BrLP's age/100"),
    ("age", "300", r"row 2, column 'age': 300 is outside"),
    ("age", "nan", r"row 2, column 'age': 'nan' is not a finite"),
    ("sex", "X", r"row 2, column 'sex': sex 'X'"),
    ("diagnosis", "PD", r"row 2, column 'diagnosis': diagnosis 'PD'"),
    ("split", "dev", r"row 2, column 'split': 'dev'"),
    ("subject_id", "", r"row 2, column 'subject_id': is empty"),
])
def test_bad_values_name_row_and_column(tmp_path, col, value, pattern):
    rows = [list(r) for r in GOOD]
    rows[1][HEADER.index(col)] = value
    with pytest.raises(ManifestError, match=pattern):
        Manifest.from_csv(write_manifest(tmp_path, rows))


def test_missing_file_named(tmp_path):
    path = write_manifest(tmp_path, GOOD, make_files=False)
    with pytest.raises(ManifestError,
                       match=r"row 1, column 'image_path': file .*s1_v0.nii.gz not found"):
        Manifest.from_csv(path)
    assert len(Manifest.from_csv(path, check_files=False)) == 5


def test_missing_column(tmp_path):
    header = [h for h in HEADER if h != "diagnosis"]
    rows = [[v for h, v in zip(HEADER, r) if h != "diagnosis"] for r in GOOD]
    with pytest.raises(ManifestError, match="missing column.*diagnosis"):
        Manifest.from_csv(write_manifest(tmp_path, rows, header))


def test_split_optional_when_not_required(tmp_path):
    header = [h for h in HEADER if h != "split"]
    rows = [[v for h, v in zip(HEADER, r) if h != "split"] for r in GOOD]
    path = write_manifest(tmp_path, rows, header)
    with pytest.raises(ManifestError, match="split"):
        Manifest.from_csv(path)
    assert Manifest.from_csv(path, require_split=False).visits[0].split == ""


def test_duplicate_uid_and_inconsistent_subject(tmp_path):
    rows = [list(r) for r in GOOD]
    rows[3][1] = "s1_v0"
    with pytest.raises(ManifestError, match="row 4, column 'image_uid': 's1_v0' repeats row 1"):
        Manifest.from_csv(write_manifest(tmp_path, rows))
    rows = [list(r) for r in GOOD]
    rows[2][4] = "M"
    with pytest.raises(ManifestError, match="row 3, column 'sex'"):
        Manifest.from_csv(write_manifest(tmp_path, rows))
    rows = [list(r) for r in GOOD]
    rows[2][6] = "test"
    with pytest.raises(ManifestError, match="row 3, column 'split'.*split by subject"):
        Manifest.from_csv(write_manifest(tmp_path, rows))


def test_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no rows"):
        Manifest.from_csv(write_manifest(tmp_path, []))


def test_mask_path_resolves_like_the_other_paths(tmp_path):
    header = HEADER + ["mask_path"]
    masks = ["mask/s1_v0.nii.gz", str(tmp_path / "abs.nii.gz"), " ", "", ""]
    m = Manifest.from_csv(write_manifest(tmp_path, [r + [k] for r, k in zip(GOOD, masks)],
                                         header))
    assert m.mask_path(m.visits[0]) == tmp_path / "mask/s1_v0.nii.gz"   # beside the manifest
    assert m.mask_path(m.visits[1]) == tmp_path / "abs.nii.gz"
    assert m.mask_path(m.visits[2]) is None and m.mask_path(m.visits[3]) is None
    assert m.select("test").mask_path(m.visits[0]) == tmp_path / "mask/s1_v0.nii.gz"


def test_csv_round_trip_keeps_extra_columns(tmp_path):
    header = HEADER + ["vol_hippocampus"]
    rows = [r + [str(1000 + i)] for i, r in enumerate(GOOD)]
    m = Manifest.from_csv(write_manifest(tmp_path, rows, header))
    out = m.to_csv(tmp_path / "copy.csv")
    m2 = Manifest.from_csv(out)
    assert [v.image_path for v in m2] == [v.image_path for v in m]
    assert [v.extra["vol_hippocampus"] for v in m2] == [str(1000 + i) for i in range(5)]
    assert [(v.age, v.sex, v.diagnosis) for v in m2] == [(v.age, v.sex, v.diagnosis) for v in m]


def test_aliases():
    assert normalize_sex(" Male ") == "M" and normalize_sex("1") == "F"
    assert normalize_diagnosis("0") == "CN" and normalize_diagnosis("0.5") == "MCI"
    with pytest.raises(ValueError):
        normalize_diagnosis("2")


@pytest.mark.parametrize("value,expected", [
    ("EMCI", "MCI"), ("LMCI", "MCI"), ("early MCI", "MCI"), ("late_mci", "MCI"),
    ("Late-MCI", "MCI"),
    ("mild cognitive impairment", "MCI"), ("SMC", "CN"), ("SCD", "CN"), ("Normal", "CN"),
    ("NC", "CN"), ("HC", "CN"), ("healthy control", "CN"), ("CN", "CN"), ("cn", "CN"),
    ("Dementia", "AD"), ("AD dementia", "AD"), ("Alzheimer's", "AD"),
    ("Alzheimer\u2019s disease", "AD"),
    ("1.0", "AD"), (" mci ", "MCI"),
])
def test_cohort_diagnoses(value, expected):
    assert normalize_diagnosis(value) == expected


def test_cohort_diagnosis_logged_once(caplog):
    manifest_module._DX_LOGGED.discard("LMCI")
    with caplog.at_level("INFO", logger="mambacontrol.data.manifest"):
        for _ in range(3):
            normalize_diagnosis("LMCI")
        normalize_diagnosis("MCI")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["diagnosis 'LMCI' read as MCI (ADNI's late MCI)"]


def test_adni_manifest_read(tmp_path):
    rows = [list(r) for r in GOOD]
    for row, dx in zip(rows, ["SMC", "EMCI", "LMCI", "Dementia", "AD"]):
        row[HEADER.index("diagnosis")] = dx
    m = Manifest.from_csv(write_manifest(tmp_path, rows))
    assert [v.diagnosis for v in m] == ["CN", "MCI", "MCI", "AD", "AD"]
