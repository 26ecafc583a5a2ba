"""Choose a model's guidance weight on a split, so that its predicted change has the right size.

A trained model predicts the sign and the place of atrophy but too little of it. Guidance against
the zero horizon (:mod:`mambacontrol.pipeline.denoiser`) scales up what the model attributes to
the passing of time. :func:`calibrate_guidance` evaluates the model at each candidate weight
on a split it was not trained on (``valid`` by default), with every metric of ``evaluate``. It
keeps the weight whose predicted/true change ratio is closest to 1 over the key groups: the
smallest mean of ``|log ratio|``. It then saves a copy of the model with that weight as its
default.

The ratio compares like with like, as ``evaluate`` scores a model: the predicted change as the
regional measurement reads it, over the true follow-up's change as the same measurement reads it
(with exact truth, the measurement floor row sets that reading against the exact change).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.evaluate import EvaluationSettings, evaluate
from mambacontrol.io import OutputFolder, write_json
from mambacontrol.pipeline.progression import (
    GUIDANCE_GROUPS,
    ProgressionPipeline,
    check_guidance,
)

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Candidate weights: none, and up to three times the conditional change's contrast."""

KEY_GROUPS = ("hippocampus", "amygdala", "entorhinal", "lateral_ventricles", "whole_brain")

WRONG_SIGN_RATIO = 0.01
"""A ratio ≤ 0 (no change, or the wrong sign) counts as this one: |log| = 4.6."""

EVALUATIONS_NAME, MODEL_NAME, RESULT_NAME = "evaluations", "model", "calibration.json"


def ratio_distance(ratios: Mapping[str, float | None]) -> float:
    """Mean over the groups of ``|log ratio|`` (0: every group predicted at its true size);
    groups without a ratio (a true change near 0) are left out; inf when none has one."""
    logs = [abs(math.log(r if r > 0 else WRONG_SIGN_RATIO)) for r in ratios.values()
            if r is not None]
    return sum(logs) / len(logs) if logs else math.inf


def choose_weight(distances: Mapping[str, float], weights: Sequence[float]) -> float:
    """The weight of smallest distance (the smaller weight on a tie), keyed ``f"{w:g}"``.

    Logs a warning when it is the largest weight of a grid of several: the best weight may lie
    beyond the grid (on the demo model a dropout-trained variant ran out at w = 6)."""
    chosen = min(weights, key=lambda w: (distances[f"{w:g}"], w))
    if len(weights) > 1 and chosen == max(weights) and not math.isinf(distances[f"{chosen:g}"]):
        log.warning("guidance %g, the largest weight tried, was chosen: a larger one may be "
                    "better; calibrate again with weights beyond it (e.g. --weights %s)", chosen,
                    _wider_grid(chosen))
    return chosen


def _wider_grid(top: float) -> str:
    """A ``--weights`` value that goes beyond ``top``."""
    return ",".join(f"{w:g}" for w in (top, 1.5 * top, 2 * top, 3 * top))


def choose_group_weights(table: Mapping[str, Mapping[str, dict]],
                         weights: Sequence[float]) -> tuple[float, dict[str, float]]:
    """Per-region weights from the same evaluations: each group of :data:`GUIDANCE_GROUPS`
    the weight whose change ratio of that group is closest to 1, and everywhere else the
    whole brain's (the smaller weight on a tie; a group without a ratio at any weight keeps the
    whole brain's).

    Args:
        table: ``{f"{w:g}": {group: {"change_ratio": r, ...}}}`` (:func:`model_ratios` per
            weight).
        weights: the weights evaluated.

    Returns:
        (the weight elsewhere, ``{group: weight}``).
    """
    def best(group: str) -> float | None:
        scored = [(ratio_distance({group: table[f"{w:g}"][group]["change_ratio"]}), w)
                  for w in weights]
        scored = [(d, w) for d, w in scored if not math.isinf(d)]
        if not scored:
            return None
        chosen = min(scored)[1]
        ratio = table[f"{chosen:g}"][group]["change_ratio"]
        if len(weights) > 1 and chosen == max(weights) and ratio < 1:
            log.warning("%s: guidance %g, the largest weight tried, was chosen and its predicted "
                        "change is still %.2f of the true one: a larger weight may be better; "
                        "calibrate again with weights beyond it (e.g. --weights %s)", group,
                        chosen, ratio, _wider_grid(chosen))
        return chosen

    elsewhere = best("whole_brain")
    if elsewhere is None:
        raise MambaControlError("no weight gave a whole-brain change ratio (no pair with a true "
                                "change); calibrate on a split with follow-up visits")
    groups = {g: best(g) for g in GUIDANCE_GROUPS}
    return elsewhere, {g: (elsewhere if w is None else w) for g, w in groups.items()}


def model_ratios(summary: dict) -> dict[str, dict]:
    """Per key group of an evaluation summary: the model's predicted/true change ratio
    (``change_ratio``) and its mean absolute error of the % volume change (``abs_error_pct``)."""
    kinds = summary["method_kinds"]
    model = next(m for m in summary["methods"] if kinds[m] == "model")
    rows = {g: summary["key_groups"][model].get(g, {}) for g in KEY_GROUPS}
    return {g: {"change_ratio": r.get("change_ratio"),
                "abs_error_pct": (r.get("abs_error_pct") or {}).get("mean")}
            for g, r in rows.items()}


def calibrate_guidance(manifest: str | os.PathLike, model: str | os.PathLike,
                       out: str | os.PathLike, weights: Sequence[float] = DEFAULT_WEIGHTS,
                       settings: EvaluationSettings | None = None, device: str = "cpu",
                       command: Sequence[str] | str | None = None,
                       per_group: bool = False) -> dict:
    """Evaluate ``model`` at each guidance weight and save a copy with the best as its default.

    Args:
        manifest: the manifest (with a ``split`` column).
        model: the trained model folder (read only).
        out: output folder: ``evaluations/guidance-<w>/`` (one ``evaluate`` output per weight,
            each resumable), ``model/`` (the copy with the chosen weight) and
            ``calibration.json``.
        weights: candidate weights, each in [0, 20].
        settings: the evaluations' settings (default: the ``valid`` split, every pair, the copy
            baseline, no ceiling rows); their own ``guidance`` is replaced by each weight.
        device: torch device for the model.
        command: the command line, for the evaluations' provenance.
        per_group: also give the hippocampus, amygdala, entorhinal cortex and lateral ventricles
            their own weights, each the one whose ratio of that group is closest to 1, and every
            other region the whole brain's (:func:`choose_group_weights`); the model is saved
            with them (``SamplingDefaults.guidance_groups``).

    Returns:
        The contents of ``calibration.json``: per weight and key group the change ratio and the
        mean absolute error of the % volume change, the distance per weight, and the choice
        (``chosen``; with ``per_group`` also ``chosen_groups`` and ``chosen_elsewhere``).

    Raises:
        MambaControlError: no weights, a bad weight, or a split without any pair.
    """
    weights = sorted({float(w) for w in weights})
    if not weights:
        raise MambaControlError("give at least one guidance weight (--weights 0,1,2)")
    for w in weights:
        check_guidance(w, "--weights")
    s = settings or EvaluationSettings(split="valid", baselines=("copy",), ceiling=False)
    table, distances = {}, {}
    with OutputFolder.claim(out, "calibrate", inputs=[manifest, model], resume=True) as folder:
        folder.record(EVALUATIONS_NAME)
        for w in weights:
            label = f"{w:g}"
            log.info("guidance %s: evaluating %s on the %s split", label, model, s.split)
            summary = evaluate(manifest, [model], folder.path / EVALUATIONS_NAME /
                               f"guidance-{label}", replace(s, guidance=w), command=command,
                               device=device)
            table[label] = model_ratios(summary)
            distances[label] = ratio_distance({g: v["change_ratio"]
                                               for g, v in table[label].items()})
        chosen = choose_weight(distances, weights)
        if math.isinf(distances[f"{chosen:g}"]):
            raise MambaControlError(f"the {s.split} split gave no change ratio (no pair with a "
                                    "true change); calibrate on a split with follow-up visits")
        pipe = ProgressionPipeline.from_pretrained(model)
        pipe.sampling = replace(pipe.sampling, guidance=chosen, guidance_groups=None)
        grouped = {}
        if per_group:
            elsewhere, groups = choose_group_weights(table, weights)
            pipe.sampling = replace(pipe.sampling, guidance=elsewhere, guidance_groups=groups)
            grouped = {"chosen_elsewhere": elsewhere, "chosen_groups": groups}
        with folder.staging() as tmp:
            pipe.save_pretrained(tmp / MODEL_NAME)
            folder.commit(tmp / MODEL_NAME, MODEL_NAME)
        result = {"model": str(model), "split": s.split, "pairs": s.pairs,
                  "criterion": "smallest mean |log(predicted / true change)| over the key "
                               "groups (both as the regional measurement reads them)",
                  "weights": table, "distance": distances, "chosen": chosen, **grouped,
                  "calibrated_model": str(folder.path / MODEL_NAME)}
        with folder.staging() as tmp:
            write_json(tmp / RESULT_NAME, result)
            folder.commit(tmp / RESULT_NAME, RESULT_NAME)
    log.info("guidance %g chosen (mean |log ratio| %.3f); model saved to %s", chosen,
             distances[f"{chosen:g}"], Path(out) / MODEL_NAME)
    if per_group:
        log.info("per group: %s, elsewhere %g (saved with the model)",
                 ", ".join(f"{g} {w:g}" for g, w in result["chosen_groups"].items()),
                 result["chosen_elsewhere"])
    return result
