"""Network dynamics: spread along the contact graph, calibrated rates, records in cohort.json, and
the independent generator reproduced exactly."""

import json

import numpy as np
import pytest
from scipy.sparse.csgraph import shortest_path

from mambacontrol.atlas import load_atlas
from mambacontrol.synth import CohortDesign, generate_cohort, plan_cohort
from mambacontrol.synth.rates import RateModel
from mambacontrol.synth.simulate import GridContext, SynthConfig
from mambacontrol.synth.spread import (
    SUBTYPES,
    SpreadGraph,
    SpreadModel,
    draw_network_rates,
    integrate,
    stage_segments,
)

# Values the generator wrote before network dynamics existed (commit 0ead73b, this machine's
# numpy): RateModel draws of cohort seed 0, and the truth columns of a 2-subject 4 mm cohort.
MAIN_RATE_SUMS = {"sub-001": (-295.1122606273865, -24656.125464839643),
                  "sub-002": (-228.09515195128745, -18913.521429644934),
                  "sub-003": (-201.08150696505174, -16718.94235668899)}
MAIN_VOLUMES = {"sub-001_ses-01": (1722051.378, 86991898.126, "-3.2938"),
                "sub-001_ses-02": (1668583.485, 83339837.016, "-3.2938"),
                "sub-002_ses-01": (2061773.269, 104772686.569, "-0.9700"),
                "sub-002_ses-02": (2009121.512, 101523340.600, "-0.9700")}


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


@pytest.fixture(scope="module")
def graph(atlas):
    return SpreadGraph(atlas)


def test_spread_reaches_neighbours_before_distant_regions(graph):
    """Seeded at the left entorhinal cortex alone: the load arrives in order of graph distance."""
    model = SpreadModel()
    names = [graph.regions[i].name for i in graph.grey]
    seed = names.index("Left Ent entorhinal area")
    e = np.zeros(len(names))
    e[seed] = 1.0
    times, x = integrate(graph, model, e, model.beta, [(0.0, 12.0, 1)], 0.0, 12.0)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x[0].max() == 0.0
    hops = shortest_path(graph.transition > 0, unweighted=True)[seed]
    arrival = np.array([times[np.argmax(x[:, j] >= 0.05)] if (x[:, j] >= 0.05).any() else np.inf
                        for j in range(len(names))])
    by_hops = {h: arrival[hops == h] for h in range(1, 4)}
    assert np.isfinite(by_hops[1]).all()
    assert by_hops[1].max() < np.median(by_hops[2]) < np.median(by_hops[3])
    at = np.searchsorted(times, 4.0)  # four years in: neighbours loaded, distant regions not yet
    assert x[at, hops == 1].mean() > 5 * x[at, hops >= 3].mean()
    assert x[at, seed] == x[at].max()


def test_derived_loads_and_epicentres(graph):
    regions = graph.regions
    np.testing.assert_allclose(graph.transition.sum(axis=1), 1.0)
    assert {regions[i].tissue for i in graph.grey} == {"gm"}
    rows = graph.spread.sum(axis=1)
    assert np.all((np.abs(rows - 1.0) < 1e-12) | (rows == 0.0))
    lv = [i for i, r in enumerate(regions) if r.group == "lateral ventricle"]
    # ventricles take their load from the tissue around them
    assert all(abs(rows[i] - 1.0) < 1e-12 for i in lv)
    for subtype, weights in SUBTYPES.items():
        e = graph.epicentre(weights, asymmetry=0.5)
        seeded = {regions[graph.grey[j]].group for j in np.flatnonzero(e)}
        assert seeded == set(weights) and e.max() == 1.0, subtype
        left = [j for j in np.flatnonzero(e) if regions[graph.grey[j]].hemisphere == "left"]
        right = [j for j in np.flatnonzero(e) if regions[graph.grey[j]].hemisphere == "right"]
        assert e[left].sum() > e[right].sum()
    with pytest.raises(ValueError, match="no grey-matter region"):
        graph.epicentre({"lateral ventricle": 1.0})


def test_stage_segments():
    life = ((-12.0, "CN"), (-3.0, "MCI"), (2.5, "AD"))
    assert stage_segments(life, 4.0, -12.0, 6.0) == [(-12.0, -7.0, -1), (-7.0, -3.0, 0),
                                                     (-3.0, 2.5, 1), (2.5, 6.0, 2)]
    assert stage_segments(((0.0, "CN"),), 4.0, -5.0, 3.0) == [(-5.0, 3.0, -1)]
    assert stage_segments(((0.0, "AD"),), 2.0, -5.0, 3.0) == [(-5.0, -2.0, -1), (-2.0, 0.0, 0),
                                                             (0.0, 3.0, 2)]


def test_network_rates_stay_in_the_calibrated_ranges(atlas):
    """Over 60 planned subjects: hippocampus about −1 %/yr in CN and −3 to −5 in AD at baseline,
    ventricles growing faster with the stage; the load grows with the stage."""
    context = GridContext(atlas)
    config = SynthConfig(grid="4mm")
    plans = plan_cohort(CohortDesign(subjects=60), 3)
    rate_model = RateModel()
    hipp = [list(atlas.label_ids).index(lab) for lab in atlas.key_groups["hippocampus"]]
    vent = [list(atlas.label_ids).index(lab) for lab in atlas.key_groups["lateral_ventricles"]]
    rows = {"CN": [], "MCI": [], "AD": []}
    subtypes = []
    for plan in plans:
        effects = rate_model.effects(plan.rng("rates"), plan.baseline_age, plan.sex, atlas.regions)
        rates = draw_network_rates(plan.rng("spread"), effects, context.spread_graph, config.spread,
                                   rate_model, plan.history, plan.timeline, plan.visit_years[-1],
                                   plan.sex, context.reference_load(config.spread))
        subtypes.append(rates.subtype)
        annual = rates.annual_at(0.0)
        rows[plan.baseline_diagnosis].append((annual[hipp].mean(), annual[vent].mean(),
                                              rates.load_at(0.0).mean(), rates.subtype))
        # never converts: no disease
        if len(plan.timeline) == 1 and plan.baseline_diagnosis == "CN":
            assert rates.mci_onset is None and rates.load.max() == 0.0
        if plan.index == 0:  # the same seed, the same rates
            again = draw_network_rates(plan.rng("spread"), effects, context.spread_graph,
                                       config.spread, rate_model, plan.history, plan.timeline,
                                       plan.visit_years[-1], plan.sex,
                                       context.reference_load(config.spread))
            np.testing.assert_array_equal(again.annual, rates.annual)
    assert set(subtypes) == set(SUBTYPES) and subtypes.count("limbic") > len(subtypes) / 2
    cn, mci, ad = (np.array([r[:3] for r in rows[d]]) for d in ("CN", "MCI", "AD"))
    # CN includes preclinical subjects (converting within follow-up), so a little load
    assert -1.4 < cn[:, 0].mean() < -0.7 and np.median(cn[:, 0]) > -1.2
    limbic_ad = np.array([r[0] for r in rows["AD"] if r[3] == "limbic"])
    assert -5.5 < limbic_ad.mean() < -3.0
    assert cn[:, 0].mean() > mci[:, 0].mean() > ad[:, 0].mean()
    assert cn[:, 1].mean() < mci[:, 1].mean() < ad[:, 1].mean() < 9.0
    assert cn[:, 2].mean() < mci[:, 2].mean() < ad[:, 2].mean()


def test_independent_reproduces_the_generator_before_network_dynamics(atlas, tmp_path):
    for plan in plan_cohort(CohortDesign(subjects=3, visits=(2, 3)), 0):
        rates = RateModel().draw(plan.rng("rates"), plan.baseline_age, plan.sex, atlas.regions)
        total, weighted = MAIN_RATE_SUMS[plan.subject_id]
        assert float(rates.annual.sum()) == pytest.approx(total, rel=1e-12)
        assert float((rates.annual * np.arange(134)).sum()) == pytest.approx(weighted, rel=1e-12)
    out = tmp_path / "c"
    manifest = generate_cohort(out, subjects=2, seed=0, grid="4mm", visits=(2, 2), figure=False,
                               dynamics="independent")
    for v in manifest:
        vols = np.array([float(v.extra[f"vol_r{lab}"]) for lab in atlas.label_ids])
        total, weighted, rate = MAIN_VOLUMES[v.image_uid]
        assert float(vols.sum()) == pytest.approx(total, rel=1e-7)
        assert float((vols * np.arange(134)).sum()) == pytest.approx(weighted, rel=1e-7)
        assert v.extra["rate_hippocampus"] == rate
    meta = json.loads((out / "cohort.json").read_text())
    assert "dynamics" not in meta["config"] and "spread" not in meta["config"]
    assert all("annual_change_pct_by_stage" in s and "network" not in s for s in meta["subjects"])


def test_network_cohort_records_subtype_and_epicentre(tmp_path, atlas):
    out = tmp_path / "n"
    manifest = generate_cohort(out, subjects=3, seed=2, grid="4mm", visits=(2, 2), figure=False)
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["config"]["dynamics"] == "network" and "spread" in meta["config"]
    names = {r.name for r in atlas.regions}
    for subject, visits in zip(meta["subjects"], manifest.by_subject().values()):
        net = subject["network"]
        assert net["subtype"] in SUBTYPES and set(net["epicentre"]) <= names
        assert max(net["epicentre"].values()) == 1.0
        assert len(net["extent"]) == len(net["annual_change_pct"]) == len(visits)
        assert net["extent"] == sorted(net["extent"])  # the disease never recedes
        assert float(visits[0].extra["rate_hippocampus"]) == pytest.approx(
            net["annual_change_pct"][0]["hippocampus"], abs=1e-4)
        assert "annual_change_pct_by_stage" not in subject
