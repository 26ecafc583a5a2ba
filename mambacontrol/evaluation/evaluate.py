"""Evaluate models on a manifest's (earlier, later) pairs, beside the baselines.

For every pair of the split, on the model grid (scans not on it are prepared once):

- each model predicts the later scan from the earlier one (mean of M samples), and its
  trajectory head (a model with a graph) the regional change before any image is made: the
  ``trajectory-head`` row, volumes only (the change the head paints into the ControlNet's hint,
  applied to the earlier scan's measured volumes; one row per distinct graph encoder and head);
- the copy-baseline predicts the earlier scan unchanged;
- the regional linear extrapolation predicts regional volumes only (population % per year per
  diagnosis and region, fitted on the train pairs' ground-truth columns, or on their volumes
  measured by registration when a manifest has none or ``linear_fit`` is ``measured``);
- the autoencoder ceiling pushes the true later scan through the main model's representation and
  decodes it as a prediction is (and the same for every compared model with another
  representation): no sampler of that model can predict more than it;
- image metrics are computed inside the baseline's brain mask;
- regional change is measured the same way for every image and for the truth: a deformable
  registration from the baseline to it, its Jacobian determinant integrated over the baseline's
  regions (:func:`mambacontrol.registration.measure_regional_volumes`); with exact ground-truth
  columns, the truth measured this way is also compared with the exact truth (the measurement
  floor).

Writes ``metrics.json``, ``pairs.csv``, ``regions.csv`` and a self-contained ``report.html``.

Each pair is recorded as soon as it is scored (:mod:`mambacontrol.evaluation.pair_records`:
``<out>/pairs/``, JSON and ``.npz``, keyed by a digest of everything that decides its scores).
A rerun into the same ``out`` (no flag needed; ``overwrite`` rescores every pair) reuses every
valid record and scores only the pairs without one, so a killed evaluation resumes and writes
the outputs an uninterrupted run writes.

Under ``accelerate launch`` (:mod:`mambacontrol.pipeline.shards`), the main process claims
``out``, prepares the scans (``workers`` at a time) and fits the linear baseline while the others
wait; every process then scores its share of the pairs (pair ``i`` on process ``i mod N``), and
the main process gathers the results in pair order and writes the outputs, the same as one
process writes.

With job-array parts (``Shard(num_parts=K, part_id=I)``, ``--num-parts K --part-id I``), a run
claims only its part of ``out``, scores the part's pairs (pair ``i`` in part ``i mod K``, split
further over a launch's processes) into their records and writes no metrics or report; one run
without parts afterwards loads every valid record, scores any pair still missing and writes the
outputs once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mambacontrol.atlas import Atlas
from mambacontrol.data import Manifest, Visit, VisitPair
from mambacontrol.data.change import percent_change
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.aggregate import summarize
from mambacontrol.evaluation.baselines import (
    LinearRates,
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
from mambacontrol.evaluation.pair_records import (
    RECORDS_NAME,
    PairRecord,
    PairRecords,
    model_digest,
)
from mambacontrol.evaluation.provenance import collect_provenance
from mambacontrol.evaluation.records import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    PairInfo,
    PairResult,
    ceiling_name,
    head_name,
)
from mambacontrol.evaluation.report import render_report, write_report
from mambacontrol.io import OutputFolder
from mambacontrol.pipeline.prepare import (
    PreparedScan,
    load_on_grid,
    prepare_manifest,
    prepared_files,
    with_prepared_files,
)
from mambacontrol.pipeline.progression import (
    Prediction,
    ProgressionPipeline,
    check_sampling_flags,
    resolve_model_folder,
)
from mambacontrol.pipeline.shards import Shard, claim_shared
from mambacontrol.registration import measure_regional_volumes

log = logging.getLogger(__name__)

BASELINE_NAMES = {"copy": COPY_BASELINE, "linear": LINEAR_BASELINE}
LINEAR_FITS = ("auto", "measured")
"""What the linear extrapolation is fitted on (:func:`_fit_linear_baseline`)."""
PREPARED_NAME = "prepared"
OUTPUT_NAMES = ("metrics.json", "pairs.csv", "regions.csv", "report.html")
CHANGE_THRESHOLD = 0.05
PANEL_DIAGNOSES = ("AD", "MCI", "CN")
"""Diagnoses the report shows a slice panel of (one pair each, the main model's prediction)."""


@dataclass
class EvaluationSettings:
    """How an evaluation runs.

    Attributes:
        split: the manifest split evaluated.
        pairs: ``all`` (every earlier/later pair) or ``last`` (first and last visit).
        baselines: any of ``copy``, ``linear``.
        num_samples, num_inference_steps, sampler, guidance: sampling (None: each model's
            defaults).
        seed: sampling and registration seed.
        panels: pairs shown as slices in the report.
        max_pairs: evaluate at most this many pairs (None: all), taken in manifest order.
        ceiling: score the autoencoder ceiling of each representation.
        linear_fit: ``auto`` (the train pairs' ground-truth columns where every pair has them,
            else their measured volumes) or ``measured`` (always measured by registration, the
            ruler the truth is read with; :func:`_fit_linear_baseline`).
        workers: processes preparing the scans that are not on the atlas grid.
    """

    split: str = "test"
    pairs: str = "all"
    baselines: Sequence[str] = ("copy", "linear")
    num_samples: int | None = None
    num_inference_steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    seed: int = 0
    panels: int = 3
    max_pairs: int | None = None
    ceiling: bool = True
    linear_fit: str = "auto"
    workers: int = 1

    def check(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINE_NAMES]
        if unknown:
            raise MambaControlError(f"baseline(s) {', '.join(unknown)} unknown; choose from "
                                    f"copy, linear")
        if self.pairs not in ("all", "last"):
            raise MambaControlError(f"--pairs {self.pairs} is not all or last")
        if self.linear_fit not in LINEAR_FITS:
            raise MambaControlError(f"--linear-fit {self.linear_fit} is not auto or measured")
        check_sampling_flags(self.num_samples, self.num_inference_steps, self.sampler,
                             self.guidance)
        if self.max_pairs is not None and self.max_pairs < 1:
            raise MambaControlError(f"--max-pairs {self.max_pairs} must be ≥ 1")
        if self.workers < 1:
            raise MambaControlError(f"--workers {self.workers} must be ≥ 1")
        if not 0 <= self.seed < 2 ** 63:
            raise MambaControlError(f"--seed {self.seed} must be a whole number in 0–{2 ** 63 - 1}")


Volumes = dict[int, float]
"""Atlas label → volume in mm³."""


def method_names(dirs: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Method names for model folders: their folder names, made unique with a ``-2``, ``-3``…
    suffix (not :func:`mambacontrol.io.unique_names`, which refuses ids that collide)."""
    out: dict[str, Path] = {}
    for d in dirs:
        base = Path(d).resolve().name or "model"
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out[name] = Path(d)
    return out


def _pct(base: Mapping[int, float], other: Mapping[int, float]) -> dict[int, float]:
    return {k: (percent_change(other[k], b) if b > 0 else 0.0) for k, b in base.items()}


def _on_base(base: Mapping[int, float], pct: Mapping[int, float]) -> dict[int, float]:
    return {k: b * (1.0 + pct.get(k, 0.0) / 100.0) for k, b in base.items()}


def evaluate(manifest_path: str | os.PathLike, models: Sequence[str | os.PathLike],
             out: str | os.PathLike, settings: EvaluationSettings | None = None,
             command: Sequence[str] | str | None = None, device: str = "cpu",
             overwrite: bool = False, shard: Shard | None = None) -> dict:
    """Run the evaluation and write its outputs into ``out``.

    ``out`` is claimed first (:class:`mambacontrol.io.OutputFolder`): it must not hold the
    manifest or a model, and a non-empty folder is refused unless it holds an earlier
    ``evaluate`` output, which this run continues: its prepared scans and every pair record made
    under the same settings and models are reused (``overwrite``: every pair is scored again).

    Args:
        manifest_path: the manifest (with a ``split`` column).
        models: one or more trained model folders (the first is the main model; the others are
            compared on the same pairs, e.g. ablations).
        out: output folder.
        settings: see :class:`EvaluationSettings`.
        command: the command line, for the report's provenance.
        device: torch device for the models.
        overwrite: score every pair again, replacing an earlier evaluation's records and outputs
            in ``out``.
        shard: this process's share under ``accelerate launch`` and/or of a job-array part
            (:meth:`Shard.current`; every process calls this with the same arguments); default:
            one process, every pair. A part writes its pairs' records only.

    Returns:
        The summary (also in ``metrics.json``), on every process; a part's: of its pairs.
    """
    s = settings or EvaluationSettings()
    s.check()
    shard = shard or Shard()
    with claim_shared(shard, out, "evaluate", inputs=[manifest_path, *models],
                      overwrite=overwrite, resume=True,
                      free=[PREPARED_NAME, RECORDS_NAME, *OUTPUT_NAMES]) as folder:
        return _evaluate(manifest_path, models, folder, s, command, device, shard, overwrite)


def _evaluate(manifest_path: str | os.PathLike, models: Sequence[str | os.PathLike],
              folder: OutputFolder, s: EvaluationSettings,
              command: Sequence[str] | str | None, device: str, shard: Shard,
              overwrite: bool = False) -> dict:
    """The evaluation's steps, in order: read, load, prepare, fit baselines, score (or reuse
    each pair's record), write (without parts)."""
    raw = _read_manifest(manifest_path, s)  # bad input fails before the models load
    names = method_names(models)
    pipes = _load_models(names, device)
    atlas = _shared_atlas(pipes)
    if shard.is_main:
        folder.record(PREPARED_NAME)
        folder.record(RECORDS_NAME)
    manifest = _prepared(raw, atlas, folder.path / PREPARED_NAME, s, shard)
    pairs = _pairs_to_evaluate(manifest, s)
    scans = GridScans(manifest, atlas, s.seed)
    linear = (shard.run_on_main(lambda: _fit_linear_baseline(manifest, scans, manifest_path,
                                                             s.linear_fit))
              if "linear" in s.baselines else None)
    exact = all(has_manifest_volumes(v) for p in pairs for v in (p.earlier, p.later))
    ceilings = _ceiling_models(pipes) if s.ceiling else {}
    heads = _head_rows(pipes)
    identity = shard.run_on_main(lambda: _run_identity(s, names, linear, exact))
    records = PairRecords(folder.path / RECORDS_NAME, identity, reuse=not overwrite)
    scores = _score_pairs(pairs, pipes, heads, ceilings, scans, linear, s, exact, shard, records)

    summary = summarize(scores.results)
    if shard.is_main:
        log.info("%d of %d pairs scored now, %d reused from %s", scores.scored, scores.scored
                 + scores.reused, scores.reused, folder.path / RECORDS_NAME)
    if not shard.is_main or shard.part is not None:
        return summary
    run_settings = _run_settings(s, len(pairs), exact)
    provenance = collect_provenance(command=command, models={n: str(d) for n, d in names.items()},
                                    manifest=manifest_path, split=s.split,
                                    extra={k: f"{v:.1f} s" for k, v in scores.timings.items()})
    region_names = {r.label: r.name for r in atlas.regions}
    html = render_report(summary, scores.results, provenance=provenance, panels=scores.panels,
                         region_names=region_names, linear_rates=linear, settings=run_settings)
    _write_outputs(folder, summary, scores.results, html, provenance=provenance,
                   settings=run_settings, linear=linear, region_names=region_names)
    return summary


def _prepared(raw: Manifest, atlas: Atlas, root: Path, s: EvaluationSettings,
              shard: Shard) -> Manifest:
    """The manifest with every visit on the atlas grid (:func:`prepare_manifest` into ``root``).
    A job-array part prepares only what it reads: its pairs' visits, and the train split's when
    the linear baseline is fitted (the other parts prepare theirs; a visit two parts share is
    prepared by both, each file written atomically)."""
    if shard.part is None:
        return prepare_manifest(raw, atlas, root, seed=s.seed, workers=s.workers, shard=shard)
    pairs = _pairs_to_evaluate(raw, s)
    needed = {v.image_uid for i in shard.part_indices(len(pairs))
              for v in (pairs[i].earlier, pairs[i].later)}
    if "linear" in s.baselines:
        needed |= {v.image_uid for v in raw.select("train")}
    prepare_manifest(Manifest([v for v in raw if v.image_uid in needed], raw.path), atlas, root,
                     seed=s.seed, workers=s.workers, shard=shard)
    return with_prepared_files(raw, prepared_files(raw, atlas, root))


def _run_identity(s: EvaluationSettings, names: Mapping[str, Path], linear: LinearRates | None,
                  exact: bool) -> dict:
    """Everything of this evaluation that decides a pair's scores (the pair aside), for the
    records' keys: the settings, each model's name and content, the linear baseline's rates."""
    return {
        "split": s.split, "pairs": s.pairs, "baselines": list(s.baselines),
        "samples": s.num_samples, "steps": s.num_inference_steps, "sampler": s.sampler,
        "seed": s.seed, "ceiling": s.ceiling, "change_threshold": CHANGE_THRESHOLD,
        "models": [[n, model_digest(resolve_model_folder(d))] for n, d in names.items()],
        "linear": None if linear is None else linear.to_dict(), "exact": exact,
        # only when chosen, so that records made before --guidance existed keep their keys
        **({"guidance": s.guidance} if s.guidance is not None else {}),
    }


# --- reading and loading -------------------------------------------------------------------------

def _read_manifest(manifest_path: str | os.PathLike, s: EvaluationSettings) -> Manifest:
    """The manifest, refused when the evaluated split has no pairs."""
    raw = Manifest.from_csv(manifest_path)
    if not raw.select(s.split).pairs(s.pairs):
        raise MambaControlError(f"{manifest_path}: split '{s.split}' has no visit pairs to "
                                f"evaluate")
    return raw


def _load_models(names: Mapping[str, Path], device: str) -> dict[str, ProgressionPipeline]:
    """Method name → loaded pipeline."""
    return {n: ProgressionPipeline.from_pretrained(d, device) for n, d in names.items()}


def _shared_atlas(pipes: Mapping[str, ProgressionPipeline]) -> Atlas:
    """The first model's atlas, refused unless every model works on it."""
    atlas = next(iter(pipes.values())).atlas
    for n, p in pipes.items():
        if p.atlas.checksum != atlas.checksum:
            raise MambaControlError(f"model {n} works on {p.atlas.id} {p.atlas.grid_name}, the "
                                    f"first on {atlas.id} {atlas.grid_name}; compare models of "
                                    f"one grid")
    return atlas


def _ceiling_models(pipes: Mapping[str, ProgressionPipeline]) -> dict[str, ProgressionPipeline]:
    """Ceiling row name → the model whose representation it measures: the main model's
    (:data:`AUTOENCODER_CEILING`), then each compared model whose representation differs from
    every one before it (``autoencoder-ceiling-<name>``)."""
    out: dict[str, ProgressionPipeline] = {}
    for i, (name, pipe) in enumerate(pipes.items()):
        if not any(_same_representation(pipe, seen) for seen in out.values()):
            out[ceiling_name(None if i == 0 else name)] = pipe
    return out


def _same_representation(a: ProgressionPipeline, b: ProgressionPipeline) -> bool:
    """Whether two models encode and decode alike: the same autoencoder weights and the same
    decoding rule."""
    return a.sampling.decode == b.sampling.decode and _same_weights(a.autoencoder, b.autoencoder)


def _head_rows(pipes: Mapping[str, ProgressionPipeline]) -> dict[str, str]:
    """Model name → its trajectory-head row: the main model's :data:`TRAJECTORY_HEAD
    <mambacontrol.evaluation.records.TRAJECTORY_HEAD>`, then each compared model whose graph
    encoder and head differ from every one before it (``trajectory-head-<name>``; a model that
    shares them, e.g. an ablation without its ControlNet, predicts the same volumes). Models
    without a head have no row."""
    out: dict[str, str] = {}
    seen: list[ProgressionPipeline] = []
    for i, (name, pipe) in enumerate(pipes.items()):
        if pipe.trajectory_head is None or any(
                _same_weights(pipe.graph_encoder, o.graph_encoder)
                and _same_weights(pipe.trajectory_head, o.trajectory_head) for o in seen):
            continue
        seen.append(pipe)
        out[name] = head_name(None if i == 0 else name)
    return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two components have the same config and the same weights."""
    if a.config != b.config:
        return False
    wa, wb = a.state_dict(), b.state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k].to(wa[k].device)) for k in wa)


def _pairs_to_evaluate(manifest: Manifest, s: EvaluationSettings) -> list[VisitPair]:
    """The split's pairs (``all`` or ``last``), the first ``max_pairs`` of them."""
    pairs = manifest.select(s.split).pairs(s.pairs)
    return pairs if s.max_pairs is None else pairs[: s.max_pairs]


class GridScans:
    """A prepared manifest's scans on the atlas grid, and their regional volume measurement.

    Args:
        manifest: every visit on the atlas grid (:func:`prepare_manifest`), masks in
            ``mask_path`` (relative to the manifest's folder or absolute).
        atlas: the atlas of the grid.
        seed: the registration seed of every measurement.
    """

    def __init__(self, manifest: Manifest, atlas: Atlas, seed: int):
        self.manifest = manifest
        self.atlas = atlas
        self.seed = seed

    def load(self, visit: Visit) -> PreparedScan:
        """The visit's image, labels and mask on the grid."""
        return load_on_grid(visit.image_path, visit.segm_path, self.manifest.mask_path(visit),
                            self.atlas)

    def measure(self, base: PreparedScan, image) -> tuple[Volumes, Volumes]:
        """``(baseline volumes, volumes of image)``: a registration from the baseline to the
        ``(X, Y, Z)`` image, its Jacobian integrated over the baseline's regions."""
        vols = measure_regional_volumes(base.image, image, base.labels, self.atlas.grid,
                                        self.atlas.label_ids, seed=self.seed)
        d = vols.as_dict()
        return {k: b for k, (b, _) in d.items()}, {k: o for k, (_, o) in d.items()}


# --- the linear baseline -------------------------------------------------------------------------

def _fit_linear_baseline(manifest: Manifest, scans: GridScans, manifest_path: str | os.PathLike,
                         fit: str = "auto") -> LinearRates:
    """Population rates fitted on the train pairs: their ground-truth columns, or, without them
    or with ``fit="measured"``, their volumes measured by registration (the ruler the truth is
    read with, so the rates carry the measurement's own under-reading, as a model's measured
    prediction does)."""
    train_pairs = manifest.select("train").pairs()
    if not train_pairs:
        raise MambaControlError(f"{manifest_path}: the linear baseline is fitted on train pairs, "
                                "and the train split has none; drop it with --baselines copy")
    if fit == "auto" and all(has_manifest_volumes(v) for p in train_pairs
                             for v in (p.earlier, p.later)):
        samples = samples_from_pairs(train_pairs)
        source = "ground-truth regional volumes of the train pairs (manifest vol_r<label>)"
        return fit_linear_rates(samples, scans.atlas.key_groups, source=source)
    samples = samples_from_pairs(train_pairs, volumes=_measured_volumes(train_pairs, scans))
    source = "train pairs measured by registration (Jacobian integral)"
    return fit_linear_rates(samples, scans.atlas.key_groups, source=source, measured=True)


def _measured_volumes(train_pairs: Sequence[VisitPair],
                      scans: GridScans) -> Callable[[Visit], Volumes]:
    """Visit → its volumes measured from the baseline of the first pair that holds it (each
    measurement made once)."""
    cache: dict[tuple[str, str], tuple[Volumes, Volumes]] = {}

    def measured(v: Visit) -> Volumes:
        pair = next(p for p in train_pairs if v in (p.earlier, p.later))
        key = (pair.earlier.image_uid, v.image_uid)
        if key not in cache:
            cache[key] = scans.measure(scans.load(pair.earlier), scans.load(v).image)
        base, other = cache[key]
        return base if v is pair.earlier else other

    return measured


# --- scoring -------------------------------------------------------------------------------------

@dataclass
class Scores:
    """What scoring the pairs gives: one result per pair and method, the report's slice panels,
    the time spent per kind of work (seconds), and how many pairs were scored now and how many
    reused from their records."""

    results: list[PairResult] = field(default_factory=list)
    panels: list[SlicePanel] = field(default_factory=list)
    timings: dict[str, float] = field(
        default_factory=lambda: {"prediction": 0.0, "metrics": 0.0, "measurement": 0.0})
    scored: int = 0
    reused: int = 0

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Add the ``with`` block's time to ``timings[kind]``."""
        start = time.perf_counter()
        yield
        self.timings[kind] = self.timings.get(kind, 0.0) + time.perf_counter() - start


@dataclass
class PairOnGrid:
    """One pair's scans on the grid and its measured truth.

    Attributes:
        pair, info: the pair and its record.
        base, follow: the earlier and later scans.
        base_volumes: label → mm³ of the baseline (from the truth's measurement).
        truth: label → mm³, the measured true change applied to ``base_volumes``.
    """

    pair: VisitPair
    info: PairInfo
    base: PreparedScan
    follow: PreparedScan
    base_volumes: Volumes
    truth: Volumes


def _score_pairs(pairs: Sequence[VisitPair], pipes: Mapping[str, ProgressionPipeline],
                 heads: Mapping[str, str], ceilings: Mapping[str, ProgressionPipeline],
                 scans: GridScans, linear: LinearRates | None, s: EvaluationSettings,
                 exact: bool, shard: Shard, records: PairRecords) -> Scores:
    """Every pair scored by every method (:func:`_score_pair`), or its valid record reused. This
    process takes its share of the pairs (``shard``), and records each pair it scores as soon as
    it is scored; the result is every process's (of the part, with parts), in pair order."""
    wanted = _panel_pairs(pairs, s.panels)
    done: dict[int, PairRecord] = {}
    reused = 0
    for i in tqdm(shard.indices(len(pairs)), desc="evaluating pairs", disable=None):
        key = records.key(pairs[i], i in wanted)
        record = records.load(pairs[i], key)
        if record is None:
            record = _score_pair(pairs[i], pipes, heads, ceilings, scans, linear, s, exact,
                                 i in wanted)
            records.save(pairs[i], key, record)
        else:
            reused += 1
        done[i] = record
    return _gathered(shard, done, reused)


def _score_pair(pair: VisitPair, pipes: Mapping[str, ProgressionPipeline],
                heads: Mapping[str, str], ceilings: Mapping[str, ProgressionPipeline],
                scans: GridScans, linear: LinearRates | None, s: EvaluationSettings, exact: bool,
                panel: bool) -> PairRecord:
    """One pair scored by every method: the measurement floor (with exact ground truth), the
    baselines, the models and their trajectory heads (``heads``: model name → row,
    :func:`_head_rows`), then the ceilings of their representations; with ``panel``, the main
    model's prediction as the report's slice panel."""
    scores = Scores()
    shown = None
    main_model = next(iter(pipes))
    groups = scans.atlas.key_groups
    p = _pair_on_grid(pair, scans, scores)
    if exact:
        scores.results.append(_measurement_floor(p, groups))
    if "copy" in s.baselines:
        scores.results.append(_copy_baseline_result(p, groups, scores))
    if linear is not None:
        pred = linear.predict(p.base_volumes, pair.earlier.diagnosis, pair.years)
        regions, by_group = regional_change(p.base_volumes, pred, p.truth, groups)
        scores.results.append(PairResult(p.info, LINEAR_BASELINE, {}, regions, by_group))
    for name, pipe in pipes.items():
        prediction = _score_model(name, pipe, p, scans, s, scores)
        if name in heads and prediction.node_log_ratio is not None:
            scores.results.append(_head_result(heads[name], pipe, prediction, p, groups))
        if name == main_model and panel:
            shown = SlicePanel(p.info, name, p.base.image, p.follow.image, prediction.image,
                               p.base.mask, prediction.uncertainty)
    for name, pipe in ceilings.items():
        with scores.timed("ceiling"):
            image = pipe.reconstruct(p.base.image, p.follow.image, mask=p.base.mask)
        scores.results.append(_scored_image(name, image, p, scans, scores))
    return PairRecord(scores.results, shown, scores.timings)


def _gathered(shard: Shard, done: Mapping[int, PairRecord], reused: int) -> Scores:
    """The records of every process (pair index → record), in pair order: their results and
    panels; the seconds of each kind of work summed over the pairs; the pairs scored and reused."""
    merged = Scores(timings={})
    every = shard.gather((dict(done), reused))
    records = {i: r for part, _ in every for i, r in part.items()}
    order = sorted(records)
    merged.results = [r for i in order for r in records[i].results]
    merged.panels = [records[i].panel for i in order if records[i].panel is not None]
    for i in order:
        for kind, value in records[i].timings.items():
            merged.timings[kind] = merged.timings.get(kind, 0.0) + value
    merged.reused = sum(n for _, n in every)
    merged.scored = len(records) - merged.reused
    return merged


def _pair_on_grid(pair: VisitPair, scans: GridScans, scores: Scores) -> PairOnGrid:
    """Load the pair's scans and measure its true change."""
    base, follow = scans.load(pair.earlier), scans.load(pair.later)
    with scores.timed("measurement"):
        base_vols, truth_vols = scans.measure(base, follow.image)
    truth = _on_base(base_vols, _pct(base_vols, truth_vols))
    return PairOnGrid(pair, PairInfo.from_visit_pair(pair), base, follow, base_vols, truth)


def _measurement_floor(p: PairOnGrid, groups: Mapping[str, Sequence[int]]) -> PairResult:
    """The truth measured by registration, scored against the exact ground truth."""
    exact_pct = _pct(manifest_volumes(p.pair.earlier), manifest_volumes(p.pair.later))
    regions, by_group = regional_change(p.base_volumes, p.truth,
                                        _on_base(p.base_volumes, exact_pct), groups)
    return PairResult(p.info, MEASUREMENT_FLOOR, {}, regions, by_group)


def _copy_baseline_result(p: PairOnGrid, groups: Mapping[str, Sequence[int]],
                          scores: Scores) -> PairResult:
    """The baseline scan as the prediction."""
    with scores.timed("metrics"):
        metrics = image_metrics(copy_baseline(p.base.image), p.base.image, p.follow.image,
                                p.base.mask, threshold=CHANGE_THRESHOLD)
    regions, by_group = regional_change(p.base_volumes, copy_baseline_volumes(p.base_volumes),
                                        p.truth, groups)
    return PairResult(p.info, COPY_BASELINE, metrics, regions, by_group)


def _score_model(name: str, pipe: ProgressionPipeline, p: PairOnGrid, scans: GridScans,
                 s: EvaluationSettings, scores: Scores) -> Prediction:
    """One model's prediction of the pair, scored (the result goes into ``scores``)."""
    earlier = p.pair.earlier
    with scores.timed("prediction"):
        prediction = pipe.predict(p.base.image, p.base.labels, earlier.age, earlier.sex,
                                  earlier.diagnosis, p.pair.years, mask=p.base.mask,
                                  num_samples=s.num_samples,
                                  num_inference_steps=s.num_inference_steps,
                                  sampler=s.sampler, guidance=s.guidance, seed=s.seed)[0]
    scores.results.append(_scored_image(name, prediction.image, p, scans, scores))
    return prediction


def _head_result(row: str, pipe: ProgressionPipeline, prediction: Prediction, p: PairOnGrid,
                 groups: Mapping[str, Sequence[int]]) -> PairResult:
    """A model's trajectory head as a method (volumes only, no image): each graph node's
    predicted log volume ratio at the pair's horizon (``prediction.node_log_ratio``, (R,))
    applied to the earlier scan's measured volumes of the node's labels; a label outside the
    graph is predicted not to change."""
    ratio = pipe.graph.label_values(prediction.node_log_ratio)
    pred = {k: b * math.exp(ratio.get(k, 0.0)) for k, b in p.base_volumes.items()}
    regions, by_group = regional_change(p.base_volumes, pred, p.truth, groups)
    return PairResult(p.info, row, {}, regions, by_group)


def _scored_image(name: str, image, p: PairOnGrid, scans: GridScans,
                  scores: Scores) -> PairResult:
    """A method's (X, Y, Z) predicted image of the pair's later scan, scored: voxel metrics
    against the truth, and its regional change measured as the truth's was."""
    with scores.timed("metrics"):
        metrics = image_metrics(image, p.base.image, p.follow.image, p.base.mask,
                                threshold=CHANGE_THRESHOLD)
    with scores.timed("measurement"):
        _, pred_vols = scans.measure(p.base, image)
    regions, by_group = regional_change(
        p.base_volumes, _on_base(p.base_volumes, _pct(p.base_volumes, pred_vols)), p.truth,
        scans.atlas.key_groups)
    return PairResult(p.info, name, metrics, regions, by_group)


def _panel_pairs(pairs: Sequence[VisitPair], limit: int) -> set[int]:
    """The pairs the report shows as slices: the first pair of each diagnosis (AD, MCI, CN), in
    pair order, up to ``limit`` (chosen over every pair, whichever process scores them)."""
    chosen: set[int] = set()
    seen: set[str] = set()
    for i, pair in enumerate(pairs):
        diagnosis = pair.earlier.diagnosis
        if len(chosen) < limit and diagnosis in PANEL_DIAGNOSES and diagnosis not in seen:
            chosen.add(i)
            seen.add(diagnosis)
    return chosen


# --- writing -------------------------------------------------------------------------------------

def _run_settings(s: EvaluationSettings, n_pairs: int, exact: bool) -> dict[str, str]:
    """The settings table of the report and ``metrics.json``."""
    return {
        "split": s.split, "pairs": f"{s.pairs} ({n_pairs} pairs)",
        "samples per prediction": str(s.num_samples or "model default"),
        "sampler": s.sampler or "model default",
        "sampler steps": str(s.num_inference_steps or "model default"),
        "guidance": "model default" if s.guidance is None else f"{s.guidance:g}",
        "change threshold τ": f"{CHANGE_THRESHOLD} (intensity, 0–1 scale)",
        "regional measurement": "SyN registration from the baseline, Jacobian integrated over "
                                "the baseline's regions (the same for every image and the truth)",
        "linear baseline": "volumes only (no image): population % per year per diagnosis",
        "autoencoder ceiling": ("the true later scan through each representation, decoded as "
                                "a prediction" if s.ceiling else "off"),
        "truth": "exact ground truth available (measurement floor reported)" if exact
                 else "measured by registration (no exact ground truth in the manifest)",
        "seed": str(s.seed),
    }


def _write_outputs(folder: OutputFolder, summary: dict, results: Sequence[PairResult], html: str,
                   *, provenance: dict, settings: dict[str, str], linear: LinearRates | None,
                   region_names: Mapping[int, str]) -> None:
    """``metrics.json``, ``pairs.csv``, ``regions.csv`` and ``report.html``, staged and then
    committed into ``folder`` together."""
    with folder.staging() as staged:
        write_metrics_json(staged / "metrics.json", summary, provenance=provenance,
                           settings=settings,
                           linear_rates=linear.to_dict() if linear is not None else None)
        write_pairs_csv(staged / "pairs.csv", results)
        write_regions_csv(staged / "regions.csv", summary, region_names)
        write_report(staged / "report.html", html)
        for name in OUTPUT_NAMES:
            folder.commit(staged / name, name)
