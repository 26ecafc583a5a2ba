import csv

import numpy as np
import pytest
import torch

from mambacontrol.data import Manifest, Visit
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.baselines import (
    VolumeSample,
    copy_baseline,
    copy_baseline_volumes,
    fit_linear_rates,
    has_manifest_volumes,
    manifest_volumes,
    samples_from_pairs,
)

RATES = {"CN": {1: -1.0, 2: 2.0}, "MCI": {1: -3.0, 2: 4.0}, "AD": {1: -4.5, 2: 6.0}}


def test_copy_baseline_is_an_equal_copy():
    base = np.random.default_rng(0).random((4, 3, 2)).astype(np.float32)
    out = copy_baseline(base)
    np.testing.assert_array_equal(out, base)
    assert out is not base and not np.shares_memory(out, base)
    t = torch.from_numpy(base)
    assert torch.equal(copy_baseline(t), t) and copy_baseline(t).data_ptr() != t.data_ptr()
    assert copy_baseline_volumes({1: 10, 2: 5.5}) == {1: 10.0, 2: 5.5}


def fabricated_samples(rng, n=40, noise=0.0):
    samples = []
    for dx, rates in RATES.items():
        for _ in range(n):
            years = float(rng.uniform(0.5, 6.0))
            base = {lab: float(rng.uniform(2000, 4000)) for lab in rates}
            follow = {lab: v * (1 + rates[lab] * years / 100 + rng.normal(0, noise))
                      for lab, v in base.items()}
            samples.append(VolumeSample(dx, years, base, follow))
    return samples


def test_population_rates_are_recovered(rng):
    rates = fit_linear_rates(fabricated_samples(rng), key_groups={"both": [1, 2]})
    for dx, expected in RATES.items():
        for lab, r in expected.items():
            assert rates.rate(dx, lab) == pytest.approx(r, abs=1e-9)
        assert rates.n_pairs[dx] == 40
    noisy = fit_linear_rates(fabricated_samples(rng, n=200, noise=0.005))
    for dx, expected in RATES.items():
        for lab, r in expected.items():
            assert noisy.rate(dx, lab) == pytest.approx(r, abs=0.15)
    # a key group's rate lies between its labels' rates
    assert RATES["AD"][1] < rates.group_rates["AD"]["both"] < RATES["AD"][2]


def test_slope_is_least_squares_through_the_origin():
    samples = [VolumeSample("CN", 1.0, {1: 100.0}, {1: 98.0}),   # −2 % in 1 year
               VolumeSample("CN", 3.0, {1: 100.0}, {1: 97.0})]   # −3 % in 3 years
    rates = fit_linear_rates(samples)
    assert rates.rate("CN", 1) == pytest.approx((-2 * 1 + -3 * 3) / (1 + 9))


def test_prediction_extrapolates_linearly_and_falls_back_to_pooled(rng, caplog):
    rates = fit_linear_rates([s for s in fabricated_samples(rng) if s.diagnosis != "MCI"])
    pred = rates.predict({1: 1000.0, 2: 500.0}, "AD", 2.0)
    assert pred[1] == pytest.approx(1000 * (1 - 0.09))
    assert pred[2] == pytest.approx(500 * (1 + 0.12))
    pooled = rates.predict({1: 1000.0}, "MCI", 1.0)
    assert pooled[1] == pytest.approx(1000 * (1 + rates.pooled[1] / 100))
    assert "MCI has no training pairs" in caplog.text
    assert rates.predict({1: 1000.0}, "AD", 100.0)[1] == 0.0  # never below zero
    with pytest.raises(MambaControlError, match="label 7 has no fitted rate"):
        rates.predict({7: 1.0}, "AD", 1.0)
    assert rates.to_dict()["region_rates_pct_per_year"]["AD"]["1"] == pytest.approx(-4.5)


def test_fit_needs_pairs():
    with pytest.raises(MambaControlError, match="no training pair"):
        fit_linear_rates([])


def write_manifest(folder, rows):
    header = ["subject_id", "image_uid", "image_path", "age", "sex", "diagnosis", "split",
              "vol_r1", "vol_r2", "vol_hippocampus"]
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_rates_from_manifest_ground_truth(tmp_path):
    rows = [["s1", "a", "a.nii.gz", "70", "F", "AD", "train", "1000", "500", "1500"],
            ["s1", "b", "b.nii.gz", "72", "F", "AD", "train", "910", "560", "1470"],
            ["s2", "c", "c.nii.gz", "60", "M", "CN", "train", "1000", "500", "1500"],
            ["s2", "d", "d.nii.gz", "61", "M", "CN", "train", "990", "510", "1500"]]
    manifest = Manifest.from_csv(write_manifest(tmp_path, rows), check_files=False)
    assert has_manifest_volumes(manifest.visits[0])
    assert manifest_volumes(manifest.visits[0]) == {1: 1000.0, 2: 500.0}  # groups are not regions
    rates = fit_linear_rates(samples_from_pairs(manifest.pairs()))
    assert rates.rate("AD", 1) == pytest.approx(-4.5)
    assert rates.rate("AD", 2) == pytest.approx(6.0)
    assert rates.rate("CN", 1) == pytest.approx(-1.0)


def test_manifest_volumes_refuse_bad_values(tmp_path):
    rows = [["s1", "a", "a.nii.gz", "70", "F", "AD", "train", "big", "500", "1"]]
    visit = Manifest.from_csv(write_manifest(tmp_path, rows), check_files=False).visits[0]
    with pytest.raises(MambaControlError, match="scan 'a', column 'vol_r1': 'big' is not a volume"):
        manifest_volumes(visit)
    bare = Visit("s1", "a", tmp_path / "a.nii.gz", 70.0, "F", "AD", "train", extra={"x": "1"})
    assert not has_manifest_volumes(bare)
    with pytest.raises(MambaControlError, match="scan 'a' has no vol_r<label> columns"):
        manifest_volumes(bare)


def test_the_linear_baseline_fitted_on_measured_volumes_reads_with_the_truths_ruler(tiny_cohort):
    """``--linear-fit measured``: the rates come from the train visits measured by registration,
    which under-reads a local change, so the hippocampal rates are smaller than the exact ones."""
    from mambacontrol.atlas import load_atlas
    from mambacontrol.evaluation.evaluate import GridScans, _fit_linear_baseline

    manifest = Manifest.from_csv(tiny_cohort)
    scans = GridScans(manifest, load_atlas(grid="4mm"), seed=0)
    exact = _fit_linear_baseline(manifest, scans, tiny_cohort)
    measured = _fit_linear_baseline(manifest, scans, tiny_cohort, "measured")
    assert "ground-truth" in exact.source and "registration" in measured.source
    for dx, groups in exact.group_rates.items():
        assert groups["hippocampus"] < 0
        assert groups["hippocampus"] < measured.group_rates[dx]["hippocampus"] < 0, dx
