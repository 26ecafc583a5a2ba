import math

import pytest

from mambacontrol.data import Visit, VisitPair
from mambacontrol.evaluation.aggregate import (
    best_methods,
    compare_with,
    describe,
    order_methods,
    summarize,
    years_bin,
)
from mambacontrol.evaluation.metrics import VolumeChange
from mambacontrol.evaluation.records import (
    AUTOENCODER_CEILING,
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    TRAJECTORY_HEAD,
    PairInfo,
    PairResult,
    ceiling_name,
    head_name,
    method_kind,
)


@pytest.mark.parametrize("years,label", [(0.2, "≤1 y"), (1.0, "≤1 y"), (1.01, "1–2 y"),
                                         (2.0, "1–2 y"), (4.0, "2–4 y"), (7.5, ">4 y")])
def test_years_bins_are_closed_on_the_right(years, label):
    assert years_bin(years) == label


def test_years_bin_refuses_zero():
    with pytest.raises(ValueError, match="years=0"):
        years_bin(0.0)


def test_describe_skips_nan_and_uses_sample_sd():
    assert describe([1.0, 2.0, 3.0, math.nan]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert describe([4.0]) == {"mean": 4.0, "sd": None, "n": 1}
    assert describe([math.nan]) == {"mean": None, "sd": None, "n": 0}


PAIRS = [PairInfo("s1", "a", "b", "CN", 0.5), PairInfo("s2", "c", "d", "AD", 3.0),
         PairInfo("s3", "e", "f", "AD", 5.0)]


def results():
    """A model better than copy on change MAE but worse on PSNR; copy has hippocampus error =
    |true change|; the floor has only volumes."""
    out = []
    for i, p in enumerate(PAIRS):
        true = -2.0 * (i + 1)
        out.append(PairResult(p, "model", {"psnr": 30.0 + i, "change_mae": 0.01 * (i + 1)},
                              groups={"hippocampus": VolumeChange(true, true + 0.5)}))
        out.append(PairResult(p, COPY_BASELINE, {"psnr": 40.0 + i, "change_mae": 0.05},
                              groups={"hippocampus": VolumeChange(true, 0.0)}))
        out.append(PairResult(p, MEASUREMENT_FLOOR,
                              groups={"hippocampus": VolumeChange(true, true - 0.1)},
                              regions={47: VolumeChange(true, true - 0.1)}))
    return out


def test_summary_overall_and_breakdowns():
    s = summarize(results())
    assert s["methods"] == ["model", COPY_BASELINE, MEASUREMENT_FLOOR]
    assert s["keys"] == ["psnr", "change_mae", "vol_err_hippocampus"]
    assert s["overall"]["model"]["psnr"] == {"mean": 31.0, "sd": 1.0, "n": 3}
    assert s["overall"]["model"]["vol_err_hippocampus"]["mean"] == pytest.approx(0.5)
    assert s["overall"][COPY_BASELINE]["vol_err_hippocampus"]["mean"] == pytest.approx(4.0)
    assert s["overall"][MEASUREMENT_FLOOR]["psnr"]["n"] == 0
    assert list(s["by_diagnosis"]["model"]) == ["CN", "AD"]
    assert s["by_diagnosis"]["model"]["AD"]["change_mae"]["mean"] == pytest.approx(0.025)
    assert list(s["by_years"]["model"]) == ["≤1 y", "2–4 y", ">4 y"]
    assert s["by_years"]["model"][">4 y"]["psnr"]["mean"] == 32.0
    hip = s["key_groups"][COPY_BASELINE]["hippocampus"]
    assert hip["signed_error_pct"]["mean"] == pytest.approx(4.0)
    assert hip["true_change_pct"]["mean"] == pytest.approx(-4.0)
    assert s["regions"][MEASUREMENT_FLOOR]["47"]["abs_error_pct"]["mean"] == pytest.approx(0.1)
    assert s["method_kinds"] == {"model": "model", COPY_BASELINE: "baseline",
                                 MEASUREMENT_FLOOR: "floor"}


def test_best_respects_direction_and_skips_the_floor():
    s = summarize(results())
    assert best_methods(s, "psnr") == [COPY_BASELINE]       # higher is better
    assert best_methods(s, "change_mae") == ["model"]       # lower is better
    # the floor's 0.1 % is lowest but it is a measurement, not a method
    assert best_methods(s, "vol_err_hippocampus") == ["model"]


def test_ties_all_win():
    rs = [PairResult(PAIRS[0], "a", {"mae": 0.1}), PairResult(PAIRS[0], "b", {"mae": 0.1})]
    assert best_methods(summarize(rs), "mae") == ["a", "b"]


def test_order_puts_models_first():
    assert order_methods([MEASUREMENT_FLOOR, LINEAR_BASELINE, "m2", COPY_BASELINE, "m1", "m2"]) == \
        ["m2", "m1", COPY_BASELINE, LINEAR_BASELINE, MEASUREMENT_FLOOR]


def test_compare_with_on_change_metrics_only():
    rows = compare_with(summarize(results()))
    assert {r["key"]: r["beats"] for r in rows} == {"change_mae": True, "vol_err_hippocampus": True}
    assert rows[0]["reference_mean"] == pytest.approx(0.05)
    assert compare_with(summarize(results()), LINEAR_BASELINE) == []  # not evaluated
    linear = [PairResult(p, LINEAR_BASELINE, groups={"hippocampus": VolumeChange(-1.0, -1.2)})
              for p in PAIRS]
    rows = compare_with(summarize(results() + linear), LINEAR_BASELINE)
    assert [(r["key"], r["beats"]) for r in rows] == [("vol_err_hippocampus", False)]
    worse = [PairResult(p, "model", {"change_mae": 0.09}) for p in PAIRS]
    worse += [PairResult(p, COPY_BASELINE, {"change_mae": 0.05}) for p in PAIRS]
    assert compare_with(summarize(worse))[0]["beats"] is False


def test_pair_info_from_a_visit_pair(tmp_path):
    early = Visit("s1", "v0", tmp_path / "a.nii.gz", 70.0, "F", "MCI", "test")
    late = Visit("s1", "v1", tmp_path / "b.nii.gz", 72.5, "F", "AD", "test")
    info = PairInfo.from_visit_pair(VisitPair(early, late))
    assert info == PairInfo("s1", "v0", "v1", "MCI", 2.5, 70.0, "F")  # baseline diagnosis


def test_a_head_row_is_ranked_with_the_methods_and_listed_after_the_baselines():
    head = [PairResult(p, TRAJECTORY_HEAD, {},
                       groups={"hippocampus": VolumeChange(-2.0 * (i + 1), -2.0 * (i + 1))})
            for i, p in enumerate(PAIRS)]
    s = summarize(head + results())
    assert s["methods"] == ["model", COPY_BASELINE, TRAJECTORY_HEAD, MEASUREMENT_FLOOR]
    assert s["method_kinds"][TRAJECTORY_HEAD] == "head"
    assert method_kind(head_name("ablation")) == "head"
    assert method_kind("trajectory-headx") == "model"
    assert best_methods(s, "vol_err_hippocampus") == [TRAJECTORY_HEAD]  # exact: it is ranked
    assert all(r["model"] == "model" for r in compare_with(s))  # the verdict judges models only


def test_ceiling_is_a_reference_ranked_nowhere_and_listed_before_the_floor():
    ceiling = [PairResult(p, AUTOENCODER_CEILING, {"psnr": 99.0, "change_mae": 0.0},
                          groups={"hippocampus": VolumeChange(-2.0 * (i + 1), -1.0 * (i + 1))})
               for i, p in enumerate(PAIRS)]
    s = summarize(results() + ceiling)
    assert s["methods"] == ["model", COPY_BASELINE, AUTOENCODER_CEILING, MEASUREMENT_FLOOR]
    assert s["method_kinds"][AUTOENCODER_CEILING] == "ceiling"
    assert method_kind(ceiling_name("ablation")) == "ceiling"
    assert method_kind("autoencoder-ceilingx") == "model"
    assert best_methods(s, "psnr") == [COPY_BASELINE]          # the ceiling's 99 dB is not ranked
    assert best_methods(s, "change_mae") == ["model"]
    assert all(r["model"] == "model" for r in compare_with(s))


def test_change_ratio_is_mean_predicted_over_mean_true_change():
    s = summarize(results())
    # model: true -2, -4, -6 (mean -4), predicted true + 0.5 (mean -3.5); copy predicts 0
    assert s["key_groups"]["model"]["hippocampus"]["change_ratio"] == pytest.approx(3.5 / 4.0)
    assert s["key_groups"][COPY_BASELINE]["hippocampus"]["change_ratio"] == 0.0
    assert s["regions"][MEASUREMENT_FLOOR]["47"]["change_ratio"] == pytest.approx(4.1 / 4.0)
    flat = [PairResult(PAIRS[0], "m", groups={"hippocampus": VolumeChange(0.0, 1.0)})]
    assert summarize(flat)["key_groups"]["m"]["hippocampus"]["change_ratio"] is None
