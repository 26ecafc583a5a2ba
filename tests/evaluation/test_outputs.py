import csv
import json

import pytest

from mambacontrol.evaluation import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    write_metrics_json,
    write_pairs_csv,
    write_regions_csv,
)
from tests.evaluation.fabricate import REGION_NAMES


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_json_is_strict_json_with_definitions(tmp_path, tiny_run):
    path = write_metrics_json(tmp_path / "out" / "metrics.json", tiny_run.summary,
                              settings={"threshold": 0.05}, linear_rates=tiny_run.rates.to_dict())
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["settings"] == {"threshold": 0.05}
    assert doc["definitions"]["statistics"]["psnr"]["higher_is_better"] is True
    assert doc["definitions"]["statistics"]["vol_err_hippocampus"]["unit"] == "%"
    assert doc["definitions"]["years_bins"][-1] == {"label": ">4 y", "above": 4.0, "up_to": None}
    overall = doc["summary"]["overall"]
    assert overall[LINEAR_BASELINE]["mae"] == {"mean": None, "sd": None, "n": 0}
    assert overall["model"]["change_mae"]["n"] == 3
    assert not list(tmp_path.glob("out/.*"))  # no temporary file left behind


def test_pairs_csv_has_one_row_per_pair_and_method(tmp_path, tiny_run):
    rows = read_csv(write_pairs_csv(tmp_path / "pairs.csv", tiny_run.results))
    assert len(rows) == 3 * 4
    first = rows[:4]
    assert [r["method"] for r in first] == ["model", COPY_BASELINE, LINEAR_BASELINE,
                                            MEASUREMENT_FLOOR]
    assert first[0]["years_bin"] == "≤1 y" and first[0]["diagnosis"] == "AD"
    assert first[2]["mae"] == "" and first[2]["method_kind"] == "baseline"  # volumes only
    copy = first[1]
    assert float(copy["pred_change_pct_hippocampus"]) == 0.0
    assert float(copy["error_pct_hippocampus"]) == pytest.approx(
        -float(copy["true_change_pct_hippocampus"]), rel=1e-5)


def test_regions_csv_per_region_and_method(tmp_path, tiny_run):
    rows = read_csv(write_regions_csv(tmp_path / "regions.csv", tiny_run.summary, REGION_NAMES))
    assert len(rows) == 4 * (2 + 3)  # methods × (key groups + regions)
    lv = [r for r in rows if r["method"] == COPY_BASELINE and r["region"] == "3"][0]
    assert lv["name"] == "Lateral Ventricle" and lv["kind"] == "region" and lv["n_pairs"] == "3"
    # the copy-baseline's error is the whole true change
    assert float(lv["abs_error_pct_mean"]) == pytest.approx(float(lv["true_change_pct_mean"]),
                                                            rel=1e-5)
    groups = [r for r in rows if r["kind"] == "key_group" and r["method"] == "model"]
    assert [g["region"] for g in groups] == ["hippocampus", "lateral_ventricles"]
