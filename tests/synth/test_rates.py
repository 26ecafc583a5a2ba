import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.synth.rates import GROUP_RATES, STAGES, RateModel, region_mean_rates


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")

def test_every_region_has_a_rate_and_stages_order(atlas):
    mean = region_mean_rates(atlas.regions)
    assert mean.shape == (3, len(atlas.regions)) and np.isfinite(mean).all()
    for i, r in enumerate(atlas.regions):
        cn, mci, ad = mean[:, i]
        if r.tissue == "csf":
            assert 0 < cn < mci < ad, r.name
        else:
            assert 0 > cn > mci > ad, r.name
    hippo = [i for i, r in enumerate(atlas.regions) if r.group == "hippocampus"]
    np.testing.assert_allclose(mean[:, hippo[0]], GROUP_RATES["hippocampus"])

def test_subject_rates_deterministic_and_effects(atlas):
    model = RateModel()
    a = model.draw(np.random.default_rng(3), 70.0, "F", atlas.regions)
    b = model.draw(np.random.default_rng(3), 70.0, "F", atlas.regions)
    np.testing.assert_array_equal(a.annual, b.annual)
    assert a.annual.shape == (3, len(atlas.regions)) and a.labels == tuple(atlas.label_ids)
    older = model.draw(np.random.default_rng(3), 85.0, "F", atlas.regions)
    male = model.draw(np.random.default_rng(3), 70.0, "M", atlas.regions)
    cn = STAGES.index("CN")
    assert np.all(np.abs(older.annual[cn]) > np.abs(a.annual[cn]))  # faster with age
    assert np.all(np.abs(male.annual) < np.abs(a.annual))  # slight sex effect
    hippo = atlas.labels_in_group("hippocampus")
    vols = [1.0] * len(hippo)
    assert (a.group_rate("AD", hippo, vols) < a.group_rate("MCI", hippo, vols)
            < a.group_rate("CN", hippo, vols) < 0)

def test_population_means_match_the_table(atlas):
    model = RateModel()
    hippo = atlas.labels_in_group("hippocampus")
    draws = [model.draw(np.random.default_rng(s), 72.0, "F" if s % 2 else "M", atlas.regions)
             for s in range(300)]
    for stage, expected in zip(STAGES, GROUP_RATES["hippocampus"]):
        mean = np.mean([d.group_rate(stage, hippo, [1.0, 1.0]) for d in draws])
        assert mean == pytest.approx(expected, rel=0.15)

def test_log_ratio_follows_the_timeline(atlas):
    rates = RateModel().draw(np.random.default_rng(0), 70.0, "M", atlas.regions)
    timeline = ((0.0, "MCI"), (2.0, "AD"))
    expected = 2.0 * np.log1p(rates.annual[1] / 100) + 1.5 * np.log1p(rates.annual[2] / 100)
    np.testing.assert_allclose(rates.log_ratio(timeline, 3.5), expected)
    np.testing.assert_allclose(rates.log_ratio(timeline, 0.0), 0.0)
    np.testing.assert_allclose(rates.log_ratio(((0.0, "CN"),), 1.0),
                               np.log1p(rates.annual[0] / 100))


def test_life_timeline_continues_across_baseline(atlas):
    rates = RateModel().draw(np.random.default_rng(4), 78.0, "F", atlas.regions)
    history = ((-14.0, "CN"), (-4.0, "MCI"), (-1.5, "AD"))
    expected = (10.0 * np.log1p(rates.annual[0] / 100) + 2.5 * np.log1p(rates.annual[1] / 100)
                + 1.5 * np.log1p(rates.annual[2] / 100))
    np.testing.assert_allclose(rates.log_ratio(history, 0.0), expected)
    np.testing.assert_array_equal(rates.log_ratio((), 0.0), 0.0)
    follow_up = ((0.0, "AD"),)
    # the whole life over the reference = before baseline + since baseline, at the same rates
    np.testing.assert_allclose(rates.log_ratio(history + follow_up, 3.0),
                               rates.log_ratio(history, 0.0) + rates.log_ratio(follow_up, 3.0))


def test_random_effects_are_truncated(atlas):
    model = RateModel()
    mean = region_mean_rates(atlas.regions)
    age = 90.0
    age_factor = np.exp(model.age_slope * (age - model.age_reference))
    wide = np.exp(2 * (model.group_sd + model.region_sd)) * model.female_factor
    bound = wide * (np.abs(mean[0]) * age_factor * np.exp(2 * model.aging_sd)
                    + np.abs(mean[2] - mean[0]) * np.exp(2 * model.disease_sd))
    for s in range(200):
        rates = model.draw(np.random.default_rng(s), age, "F", atlas.regions)
        assert np.all(np.abs(rates.annual[2]) <= bound + 1e-9)
        assert np.all(np.sign(rates.annual) == np.sign(mean))
