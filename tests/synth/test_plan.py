import numpy as np
import pytest

from mambacontrol.synth.plan import CohortDesign, interleave, largest_remainder, plan_cohort


def test_largest_remainder_and_interleave():
    assert largest_remainder(20, (0.7, 0.1, 0.2)) == [14, 2, 4]
    assert largest_remainder(5, (0.4, 0.4, 0.2)) == [2, 2, 1]
    assert largest_remainder(3, (0.4, 0.4, 0.2)) == [1, 1, 1]
    seq = interleave([6, 2, 2])
    assert sorted(seq) == [0] * 6 + [1] * 2 + [2] * 2
    assert seq[:5].count(0) == 3  # spread evenly, not in blocks


def test_plan_counts_splits_and_ranges():
    design = CohortDesign(subjects=20)
    plans = plan_cohort(design, seed=5)
    assert [p.subject_id for p in plans[:2]] == ["sub-001", "sub-002"]
    dx = [p.baseline_diagnosis for p in plans]
    assert (dx.count("CN"), dx.count("MCI"), dx.count("AD")) == (8, 8, 4)
    splits = [p.split for p in plans]
    assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (14, 2, 4)
    for p in plans:
        assert 2 <= len(p.visit_years) <= 5 and p.visit_years[0] == 0.0
        assert np.all(np.diff(p.visit_years) >= design.min_gap - 1e-9) and p.visit_years[-1] <= 8.0
        assert 55.0 <= p.baseline_age and p.baseline_age + p.visit_years[-1] <= 90.0 + 1e-9
        assert p.sex in ("F", "M") and p.timeline[0] == (0.0, p.baseline_diagnosis)
        assert all(t < p.visit_years[-1] for t, _ in p.timeline[1:])
    assert plan_cohort(design, seed=5) == plans
    assert plan_cohort(design, seed=6) != plans


def test_subjects_do_not_depend_on_cohort_size():
    small = plan_cohort(CohortDesign(subjects=5), seed=1)
    large = plan_cohort(CohortDesign(subjects=9), seed=1)
    assert [(p.sex, p.visit_years) for p in small] == [(p.sex, p.visit_years) for p in large[:5]]


def test_conversion_rates_and_diagnosis_at():
    design = CohortDesign(subjects=3000, visits=(2, 2), max_years=8.0)
    plans = plan_cohort(design, seed=0)
    for start, rate in (("CN", 0.05), ("MCI", 0.15)):
        group = [p for p in plans if p.baseline_diagnosis == start]
        # annual hazard: P(converted within the first year of follow-up)
        followed = [p for p in group if p.visit_years[-1] >= 1.0]
        first_year = np.mean([len(p.timeline) > 1 and p.timeline[1][0] < 1.0 for p in followed])
        assert first_year == pytest.approx(rate, abs=0.025)
    converter = next(p for p in plans if len(p.timeline) == 2)
    t, stage = converter.timeline[1]
    assert converter.diagnosis_at(t - 0.01) == converter.baseline_diagnosis
    assert converter.diagnosis_at(t) == stage == converter.diagnosis_at(converter.visit_years[-1])


def test_pre_baseline_history_follows_diagnosis_and_age():
    design = CohortDesign(subjects=300)
    plans = plan_cohort(design, seed=2)
    stages = {"CN": ["CN"], "MCI": ["CN", "MCI"], "AD": ["CN", "MCI", "AD"]}
    for p in plans:
        starts = [t for t, _ in p.history]
        assert starts == sorted(starts) and all(t < 0 for t in starts)
        expected = stages[p.baseline_diagnosis]
        assert [s for _, s in p.history] == expected[len(expected) - len(p.history):]
        years = p.pre_baseline_years()
        disease = years.get("MCI", 0.0) + years.get("AD", 0.0)
        if p.baseline_diagnosis != "CN":
            assert design.mci_years[0] - 0.01 <= years["MCI"] <= design.mci_years[1] + 0.01
        if p.baseline_diagnosis == "AD":
            assert design.ad_years[0] - 0.01 <= years["AD"] <= design.ad_years[1] + 0.01
        # ageing runs from the reference age; disease years are never cut short
        ageing = max(0.0, p.baseline_age - design.reference_age - disease)
        assert years.get("CN", 0.0) == pytest.approx(ageing, abs=0.02)
        assert sum(years.values()) == pytest.approx(-starts[0] if starts else 0.0, abs=1e-6)
        assert p.to_dict()["history"] == [list(h) for h in p.history]
    assert sum(not p.history for p in plans) < 0.1 * len(plans)  # only the youngest CN have none
    mci = [p.pre_baseline_years()["MCI"] for p in plans if p.baseline_diagnosis == "MCI"]
    assert np.mean(mci) == pytest.approx(np.mean(design.mci_years), abs=0.4)
    unchanged = plan_cohort(CohortDesign(subjects=300, pre_baseline=False), seed=2)
    assert all(q.history == () for q in unchanged)
    assert [(q.sex, q.baseline_age, q.timeline) for q in unchanged] == [
        (p.sex, p.baseline_age, p.timeline) for p in plans]


@pytest.mark.parametrize("kwargs", [{"subjects": 0}, {"visits": (1, 3)}, {"visits": (4, 3)},
                                    {"split": (0.5, 0.5, 0.5)}, {"diagnosis_mix": (1.0, 0.0)},
                                    {"mci_years": (3.0, 1.0)}, {"ad_years": (-1.0, 2.0)}])
def test_design_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CohortDesign(**kwargs)
