"""Evaluate models on a manifest's (earlier, later) pairs, beside the baselines.

For every pair of the split, on the model grid (scans not on it are prepared once):

- each model predicts the later scan from the earlier one (mean of M samples);
- the copy-baseline predicts the earlier scan unchanged;
- the regional linear extrapolation predicts regional volumes only (population % per year per
  diagnosis and region, fitted on the train pairs' ground-truth columns, or on measured volumes
  when a manifest has none);
- image metrics are computed inside the baseline's brain mask;
- regional change is measured the same way for every image and for the truth: a deformable
  registration from the baseline to it, its Jacobian determinant integrated over the baseline's
  regions (:func:`mambacontrol.registration.measure_regional_volumes`); with exact ground-truth
  columns, the truth measured this way is also compared with the exact truth (the measurement
  floor).

Writes ``metrics.json``, ``pairs.csv``, ``regions.csv`` and a self-contained ``report.html``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mambacontrol.data import Manifest
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.aggregate import summarize
from mambacontrol.evaluation.baselines import (
    copy_baseline,
    copy_baseline_volumes,
    fit_linear_rates,
    has_manifest_volumes,
    manifest_volumes,
    samples_from_pairs,
)
from mambacontrol.evaluation.figures import SlicePanel
from mambacontrol.evaluation.metrics import image_metrics, regional_change
from mambacontrol.evaluation.outputs import write_metrics_json, write_pairs_csv, write_regions_csv
from mambacontrol.evaluation.provenance import collect_provenance
from mambacontrol.evaluation.records import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    PairInfo,
    PairResult,
)
from mambacontrol.evaluation.report import render_report, write_report
from mambacontrol.io import OutputFolder, check_limit

BASELINE_NAMES = {"copy": COPY_BASELINE, "linear": LINEAR_BASELINE}
PREPARED_NAME = "prepared"
OUTPUT_NAMES = ("metrics.json", "pairs.csv", "regions.csv", "report.html")
CHANGE_THRESHOLD = 0.05


@dataclass
class EvaluationSettings:
    """How an evaluation runs.

    Attributes:
        split: the manifest split evaluated.
        pairs: ``all`` (every earlier/later pair) or ``last`` (first and last visit).
        baselines: any of ``copy``, ``linear``.
        samples, steps: sampling (None: each model's defaults).
        seed: sampling and registration seed.
        panels: pairs shown as slices in the report.
        max_pairs: evaluate at most this many pairs (None: all), taken in manifest order.
    """

    split: str = "test"
    pairs: str = "all"
    baselines: Sequence[str] = ("copy", "linear")
    samples: int | None = None
    steps: int | None = None
    seed: int = 0
    panels: int = 3
    max_pairs: int | None = None

    def check(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINE_NAMES]
        if unknown:
            raise MambaControlError(f"baseline(s) {', '.join(unknown)} unknown; choose from copy, linear")
        if self.pairs not in ("all", "last"):
            raise MambaControlError(f"--pairs {self.pairs} is not all or last")
        if self.samples is not None and self.samples < 1 or self.steps is not None and self.steps < 1:
            raise MambaControlError("samples and steps must be ≥ 1")
        if self.samples is not None:
            check_limit("max_samples", self.samples, f"--samples {self.samples}")
        if self.steps is not None:
            check_limit("max_steps", self.steps, f"--steps {self.steps}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise MambaControlError(f"--max-pairs {self.max_pairs} must be ≥ 1")
        if not 0 <= self.seed < 2 ** 63:
            raise MambaControlError(f"--seed {self.seed} must be a whole number in 0–{2 ** 63 - 1}")


def unique_names(dirs: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Method names for model folders: their folder names, made unique."""
    out: dict[str, Path] = {}
    for d in dirs:
        base = Path(d).resolve().name or "model"
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out[name] = Path(d)
    return out


def _pct(base: Mapping[int, float], other: Mapping[int, float]) -> dict[int, float]:
    return {k: (100.0 * (other[k] / b - 1.0) if b > 0 else 0.0) for k, b in base.items()}


def _on_base(base: Mapping[int, float], pct: Mapping[int, float]) -> dict[int, float]:
    return {k: b * (1.0 + pct.get(k, 0.0) / 100.0) for k, b in base.items()}


def evaluate(manifest_path: str | os.PathLike, models: Sequence[str | os.PathLike],
             out: str | os.PathLike, settings: EvaluationSettings | None = None,
             command: Sequence[str] | str | None = None, device: str = "cpu",
             overwrite: bool = False) -> dict:
    """Run the evaluation and write its outputs into ``out``.

    ``out`` is claimed first (:class:`mambacontrol.io.OutputFolder`): it must not hold the
    manifest or a model, and a non-empty folder is refused unless it holds an earlier
    ``evaluate`` output and ``overwrite`` is set (its prepared scans are then reused).

    Args:
        manifest_path: the manifest (with a ``split`` column).
        models: one or more trained model folders (the first is the main model; the others are
            compared on the same pairs, e.g. ablations).
        out: output folder.
        settings: see :class:`EvaluationSettings`.
        command: the command line, for the report's provenance.
        device: torch device for the models.
        overwrite: replace an earlier evaluation's outputs in ``out``.

    Returns:
        The summary (also in ``metrics.json``).
    """
    s = settings or EvaluationSettings()
    s.check()
    with OutputFolder.claim(out, "evaluate", inputs=[manifest_path, *models],
                            overwrite=overwrite) as folder:
        folder.check_free([PREPARED_NAME, *OUTPUT_NAMES])
        return _evaluate(manifest_path, models, folder, s, command, device)


def _evaluate(manifest_path: str | os.PathLike, models: Sequence[str | os.PathLike],
              folder: OutputFolder, s: EvaluationSettings,
              command: Sequence[str] | str | None, device: str) -> dict:
    from mambacontrol.pipeline.prepare import load_on_grid, prepare_manifest
    from mambacontrol.pipeline.progression import ProgressionPipeline
    from mambacontrol.registration import measure_regional_volumes

    raw = Manifest.from_csv(manifest_path)  # bad input fails before the models load
    if not raw.select(s.split).pairs(s.pairs):
        raise MambaControlError(f"{manifest_path}: split '{s.split}' has no visit pairs to evaluate")
    names = unique_names(models)
    pipes = {n: ProgressionPipeline.from_pretrained(d, device) for n, d in names.items()}
    first = next(iter(pipes.values()))
    atlas = first.atlas
    for n, p in pipes.items():
        if p.atlas.checksum != atlas.checksum:
            raise MambaControlError(f"model {n} works on {p.atlas.id} {p.atlas.grid_name}, the first "
                                    f"on {atlas.id} {atlas.grid_name}; compare models of one grid")
    folder.record(PREPARED_NAME)
    manifest = prepare_manifest(raw, atlas, folder.path / PREPARED_NAME, seed=s.seed)
    pairs = manifest.select(s.split).pairs(s.pairs)
    if s.max_pairs is not None:
        pairs = pairs[: s.max_pairs]
    exact = all(has_manifest_volumes(v) for p in pairs for v in (p.earlier, p.later))
    mask_of = {v.image_uid: v.extra.get("mask_path") for v in manifest}

    def scan(v):
        mp = mask_of.get(v.image_uid) or None
        if mp and not Path(mp).is_absolute() and manifest.path is not None:
            mp = manifest.path.parent / mp
        return load_on_grid(v.image_path, v.segm_path, mp, atlas)

    def measure(base_scan, image) -> tuple[dict[int, float], dict[int, float]]:
        vols = measure_regional_volumes(base_scan.image, image, base_scan.labels, atlas.grid,
                                        atlas.label_ids, seed=s.seed)
        d = vols.as_dict()
        return {k: b for k, (b, _) in d.items()}, {k: o for k, (_, o) in d.items()}

    linear = None
    if "linear" in s.baselines:
        train_pairs = manifest.select("train").pairs()
        if not train_pairs:
            raise MambaControlError(f"{manifest_path}: the linear baseline is fitted on train pairs, "
                                    "and the train split has none; drop it with --baselines copy")
        if all(has_manifest_volumes(v) for p in train_pairs for v in (p.earlier, p.later)):
            samples = samples_from_pairs(train_pairs)
            source = "ground-truth regional volumes of the train pairs (manifest vol_r<label>)"
        else:
            cache: dict[str, tuple] = {}

            def measured(v):
                pair = next(p for p in train_pairs if v in (p.earlier, p.later))
                key = (pair.earlier.image_uid, v.image_uid)
                if key not in cache:
                    b = scan(pair.earlier)
                    cache[key] = measure(b, scan(v).image)
                base, other = cache[key]
                return base if v is pair.earlier else other

            samples = samples_from_pairs(train_pairs, volumes=measured)
            source = "train pairs measured by registration (Jacobian integral)"
        linear = fit_linear_rates(samples, atlas.key_groups, source=source)

    results: list[PairResult] = []
    panels: list[SlicePanel] = []
    timings = {"prediction": 0.0, "metrics": 0.0, "measurement": 0.0}
    first_name = next(iter(pipes))
    for pair in tqdm(pairs, desc="evaluating pairs", disable=None):
        info = PairInfo.from_visit_pair(pair)
        base, follow = scan(pair.earlier), scan(pair.later)
        mask = base.mask
        t0 = time.perf_counter()
        base_vols, truth_vols = measure(base, follow.image)
        timings["measurement"] += time.perf_counter() - t0
        truth_pct = _pct(base_vols, truth_vols)
        truth = _on_base(base_vols, truth_pct)
        if exact:
            exact_pct = _pct(manifest_volumes(pair.earlier), manifest_volumes(pair.later))
            regions, groups = regional_change(base_vols, truth, _on_base(base_vols, exact_pct),
                                              atlas.key_groups)
            results.append(PairResult(info, MEASUREMENT_FLOOR, {}, regions, groups))
        if "copy" in s.baselines:
            t0 = time.perf_counter()
            metrics = image_metrics(copy_baseline(base.image), base.image, follow.image, mask,
                                    threshold=CHANGE_THRESHOLD)
            timings["metrics"] += time.perf_counter() - t0
            regions, groups = regional_change(base_vols, copy_baseline_volumes(base_vols), truth,
                                              atlas.key_groups)
            results.append(PairResult(info, COPY_BASELINE, metrics, regions, groups))
        if linear is not None:
            pred = linear.predict(base_vols, pair.earlier.diagnosis, pair.years)
            regions, groups = regional_change(base_vols, pred, truth, atlas.key_groups)
            results.append(PairResult(info, LINEAR_BASELINE, {}, regions, groups))
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pred = pipe.predict(base.image, base.labels, pair.earlier.age, pair.earlier.sex,
                                pair.earlier.diagnosis, pair.years, mask=mask,
                                num_samples=s.samples, num_inference_steps=s.steps, seed=s.seed)[0]
            t1 = time.perf_counter()
            metrics = image_metrics(pred.image, base.image, follow.image, mask, threshold=CHANGE_THRESHOLD)
            t2 = time.perf_counter()
            _, pred_vols = measure(base, pred.image)
            t3 = time.perf_counter()
            timings["prediction"] += t1 - t0
            timings["metrics"] += t2 - t1
            timings["measurement"] += t3 - t2
            regions, groups = regional_change(base_vols, _on_base(base_vols, _pct(base_vols, pred_vols)),
                                              truth, atlas.key_groups)
            results.append(PairResult(info, name, metrics, regions, groups))
            wanted = ("AD", "MCI", "CN")
            if (name == first_name and len(panels) < s.panels
                    and pair.earlier.diagnosis not in {p.pair.diagnosis for p in panels}
                    and pair.earlier.diagnosis in wanted):
                panels.append(SlicePanel(info, name, base.image, follow.image, pred.image, mask,
                                         pred.uncertainty))

    summary = summarize(results)
    samples_text = str(s.samples) if s.samples else "model default"
    run_settings = {
        "split": s.split, "pairs": f"{s.pairs} ({len(pairs)} pairs)",
        "samples per prediction": samples_text, "sampler steps": str(s.steps or "model default"),
        "change threshold τ": f"{CHANGE_THRESHOLD} (intensity, 0–1 scale)",
        "regional measurement": "SyN registration from the baseline, Jacobian integrated over "
                                "the baseline's regions (the same for every image and the truth)",
        "linear baseline": "volumes only (no image): population % per year per diagnosis",
        "truth": "exact ground truth available (measurement floor reported)" if exact
                 else "measured by registration (no exact ground truth in the manifest)",
        "seed": str(s.seed),
    }
    provenance = collect_provenance(command=command, models={n: str(d) for n, d in names.items()},
                                    manifest=manifest_path, split=s.split,
                                    extra={k: f"{v:.1f} s" for k, v in timings.items()})
    region_names = {r.label: r.name for r in atlas.regions}
    html = render_report(summary, results, provenance=provenance, panels=panels,
                         region_names=region_names, linear_rates=linear, settings=run_settings)
    with folder.staging() as staged:
        write_metrics_json(staged / "metrics.json", summary, provenance=provenance,
                           settings=run_settings,
                           linear_rates=linear.to_dict() if linear is not None else None)
        write_pairs_csv(staged / "pairs.csv", results)
        write_regions_csv(staged / "regions.csv", summary, region_names)
        write_report(staged / "report.html", html)
        for name in OUTPUT_NAMES:
            folder.commit(staged / name, name)
    return summary

