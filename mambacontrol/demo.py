"""The demonstration: synthetic cohort → training of every stage → prediction → evaluation.

Each step is skipped when its output already exists, so an interrupted demo continues where it
stopped (``mambacontrol demo --out DIR`` again).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mambacontrol.io import OutputFolder

DEMO_SUBJECTS = 24
DEMO_GRID = "4mm"
DEMO_SEED = 0
DEMO_HORIZONS = (1.0, 3.0, 5.0)
DEMO_PARTS = ("cohort", "model", "prediction", "evaluation")


@dataclass
class DemoResult:
    cohort: Path
    model: Path
    prediction: Path
    report: Path
    timings: dict[str, float] = field(default_factory=dict)


def build_demo_cohort(out: Path, subjects: int = DEMO_SUBJECTS, workers: int = 1):
    """The demo's synthetic cohort in ``out/cohort`` (4 mm grid, seed 0), reused when present.

    Returns:
        its :class:`~mambacontrol.data.Manifest`.
    """
    # lazy (here and below): `mambacontrol --help` imports this module for its constants, and
    # these modules load numpy, scipy and torch
    from mambacontrol.data import Manifest
    from mambacontrol.synth import generate_cohort

    manifest = Path(out) / "cohort" / "manifest.csv"
    if manifest.is_file():
        m = Manifest.from_csv(manifest)
        meta = Path(out) / "cohort" / "cohort.json"
        # a cohort.json without "dynamics" was written before network dynamics: independent
        dynamics = (json.loads(meta.read_text())["config"].get("dynamics", "independent")
                    if meta.is_file() else None)
        if len(m.subjects()) == subjects and dynamics == "network":
            return m
    return generate_cohort(Path(out) / "cohort", subjects=subjects, seed=DEMO_SEED, grid=DEMO_GRID,
                           workers=workers, overwrite=True)


def run_demo(out: str | Path, subjects: int = DEMO_SUBJECTS, workers: int = 1,
             overrides: list[str] | None = None, report=print, pairs: str = "all") -> DemoResult:
    """Run every step into ``out``; ``report`` receives one line per step for people.

    ``out`` is claimed for ``demo`` (:class:`mambacontrol.io.OutputFolder`): a new or empty folder,
    or an earlier demo's, which continues. ``pairs`` chooses the evaluated test pairs: ``all``
    (every earlier/later pair) or ``last`` (each subject's first and last visit, quicker).
    """
    from mambacontrol.io import OutputFolder  # lazy: see build_demo_cohort

    with OutputFolder.claim(out, "demo", resume=True) as folder:
        folder.check_free(DEMO_PARTS)
        return _run_demo(folder, subjects, workers, overrides, report, pairs)


def _run_demo(folder: OutputFolder, subjects: int, workers: int, overrides: list[str] | None,
              report, pairs: str) -> DemoResult:
    # lazy: see build_demo_cohort
    from mambacontrol.evaluation.evaluate import EvaluationSettings, evaluate
    from mambacontrol.pipeline.progression import ProgressionPipeline
    from mambacontrol.pipeline.scan_prediction import PredictRequest, PredictSettings, predict_scan
    from mambacontrol.synth import format_summary, summarize_cohort
    from mambacontrol.training.configs import bundled_config
    from mambacontrol.training.runner import TrainingRun, resolve_config

    out = folder.path
    settings = EvaluationSettings(split="test", pairs=pairs)  # checks pairs before any work
    timings: dict[str, float] = {}
    t = time.perf_counter()
    folder.record("cohort")
    manifest = build_demo_cohort(out, subjects, workers)
    timings["cohort"] = time.perf_counter() - t
    report(f"[1/4] synthetic cohort: {out / 'cohort'} ({timings['cohort']:.0f} s)")
    report(format_summary(summarize_cohort(manifest)))

    t = time.perf_counter()
    cfg = resolve_config(bundled_config("demo"), overrides, manifest=manifest.path)
    folder.record("model")
    for summary in TrainingRun(cfg, out / "model").run("all"):
        report(f"      {summary.line()}")
    timings["training"] = time.perf_counter() - t
    report(f"[2/4] model trained: {out / 'model'} ({timings['training']:.0f} s)")

    t = time.perf_counter()
    pipe = ProgressionPipeline.from_pretrained(out / "model")
    test = manifest.select("test").by_subject()
    first = next(iter(test.values()))[0]
    prediction = out / "prediction"
    folder.record("prediction")
    if not (prediction / "summary.json").is_file():
        req = PredictRequest(first.image_path, first.age, first.sex, first.diagnosis,
                             list(DEMO_HORIZONS), first.segm_path)
        predict_scan(pipe, req, prediction, PredictSettings(png=True), model_dir=str(out / "model"),
                     overwrite=True)
    timings["prediction"] = time.perf_counter() - t
    report(f"[3/4] predicted {first.image_uid} ({first.diagnosis}, age {first.age:g}) at "
           f"{', '.join(f'{y:g}' for y in DEMO_HORIZONS)} years: {prediction} "
           f"({timings['prediction']:.0f} s)")

    t = time.perf_counter()
    evaluation = out / "evaluation"
    folder.record("evaluation")
    if not (evaluation / "report.html").is_file():
        evaluate(manifest.path, [out / "model"], evaluation, settings,
                 command=["mambacontrol", "demo", "--out", str(out), "--pairs", pairs],
                 overwrite=True)
    TrainingRun(cfg, out / "model", metrics=evaluation / "metrics.json").write_card()
    timings["evaluation"] = time.perf_counter() - t
    report(f"[4/4] evaluated the test split: {evaluation} ({timings['evaluation']:.0f} s)")
    return DemoResult(manifest.path.parent, out / "model", prediction, evaluation / "report.html",
                      timings)
