"""A tiny fabricated evaluation run for the tests: small volumes, three pairs, a model, both
baselines and the measurement floor, computed through the library itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambacontrol.evaluation import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    PairInfo,
    PairResult,
    SlicePanel,
    VolumeSample,
    copy_baseline,
    copy_baseline_volumes,
    fit_linear_rates,
    image_metrics,
    regional_change,
    summarize,
)

SHAPE = (16, 18, 14)
KEY_GROUPS = {"hippocampus": [1, 2], "lateral_ventricles": [3]}
REGION_NAMES = {1: "Left Hippocampus", 2: "Right Hippocampus", 3: "Lateral Ventricle"}
RATE = {1: -4.0, 2: -4.0, 3: 6.0}


@dataclass
class TinyRun:
    results: list
    summary: dict
    panels: list
    rates: object


def build_tiny_run(subject_ids=("s1", "s2", "s3"), model="model", model_skill=0.8, seed=0):
    """``model_skill`` in [0, 1]: the share of the true change the model reproduces."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, bool)
    mask[3:13, 3:15, 3:11] = True
    train = [VolumeSample("AD", t, {k: 1000.0 for k in RATE},
                          {k: 1000.0 * (1 + r * t / 100) for k, r in RATE.items()})
             for t in (1.0, 2.0, 3.0)]
    rates = fit_linear_rates(train, KEY_GROUPS)
    results, panels = [], []
    for i, sid in enumerate(subject_ids):
        years = 1.0 + 1.5 * i
        pair = PairInfo(sid, f"{sid}_v0", f"{sid}_v1", "AD", years, 70.0 + i, "F")
        base = (rng.random(SHAPE) * 0.6 + 0.2) * mask
        change = np.zeros(SHAPE)
        change[6:10, 7:11, 5:9] = -0.1 * years
        follow = base + change * mask
        pred = base + model_skill * change * mask + rng.normal(0, 0.005, SHAPE) * mask
        vbase = {1: 1000.0, 2: 1100.0, 3: 500.0}
        vtrue = {k: v * (1 + RATE[k] * years / 100) for k, v in vbase.items()}
        vmeas = {k: v * (1 + 0.002 * (-1) ** k) for k, v in vtrue.items()}
        vpred = {k: vbase[k] + model_skill * (vmeas[k] - vbase[k]) for k in vbase}
        for method, image, vols in ((model, pred, vpred), (COPY_BASELINE, copy_baseline(base),
                                                           copy_baseline_volumes(vbase))):
            metrics = image_metrics(image, base, follow, mask, ssim_window=5)
            regions, groups = regional_change(vbase, vols, vmeas, KEY_GROUPS)
            results.append(PairResult(pair, method, metrics, regions, groups))
        regions, groups = regional_change(vbase, rates.predict(vbase, "AD", years), vmeas,
                                          KEY_GROUPS)
        results.append(PairResult(pair, LINEAR_BASELINE, {}, regions, groups))
        regions, groups = regional_change(vbase, vmeas, vtrue, KEY_GROUPS)
        results.append(PairResult(pair, MEASUREMENT_FLOOR, {}, regions, groups))
        panels.append(SlicePanel(pair, model, base, follow, pred, mask,
                                 uncertainty=np.abs(rng.normal(0, 0.01, SHAPE))))
    return TinyRun(results, summarize(results), panels[:2], rates)
