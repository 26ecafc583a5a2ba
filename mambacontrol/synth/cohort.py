"""Write a synthetic cohort: NIfTI files, ``manifest.csv``, ``cohort.json`` and ``overview.png``.

Layout of ``DIR``::

    manifest.csv                       one row per visit (the manifest schema + ground truth)
    cohort.json                        generator parameters, seed, per-subject draws and checks
    overview.png                       a few subjects' slices and volume trajectories
    sub-001/sub-001_ses-01_T1w.nii.gz  image: RAS, atlas grid, brain-extracted, normalised
    sub-001/sub-001_ses-01_dseg.nii.gz label map (atlas label ids)
    sub-001/sub-001_ses-01_mask.nii.gz brain mask

Same seed, same bytes: each subject draws from its own ``SeedSequence`` child, so neither the
number of workers nor their order changes a file; NIfTI gzip headers carry no time, and
``cohort.json`` and the PNG carry no timestamp.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mambacontrol._version import __version__
from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest, Visit
from mambacontrol.data.change import percent_change
from mambacontrol.errors import ConfigError
from mambacontrol.io import OutputFolder, save_nifti, write_json
from mambacontrol.synth.plan import CohortDesign, SubjectPlan, plan_cohort
from mambacontrol.synth.rates import STAGES
from mambacontrol.synth.simulate import GridContext, SimulatedVisit, SubjectSimulator, SynthConfig
from mambacontrol.synth.spread import DYNAMICS, NetworkRates

log = logging.getLogger(__name__)

SPACING_GRIDS = {"2": "2mm", "1.5": "1p5mm", "4": "4mm"}
COHORT_FILES = ("manifest.csv", "cohort.json", "overview.png")
"""The cohort's own files beside one folder per subject."""
FIDELITY_MIN_MM3 = 1000.0

_CONTEXTS: dict[tuple[str, str], GridContext] = {}


def grid_for_spacing(spacing: str | float) -> str:
    """Atlas grid name for a spacing in mm (``2`` → ``2mm``, ``1.5`` → ``1p5mm``, ``4`` →
    ``4mm``)."""
    key = f"{float(spacing):g}" if not isinstance(spacing, str) else spacing.strip().rstrip("m")
    if key not in SPACING_GRIDS:
        raise ConfigError(f"spacing '{spacing}' is not available; choose one of "
                          f"{', '.join(SPACING_GRIDS)} (mm)")
    return SPACING_GRIDS[key]


def _context(config: SynthConfig) -> GridContext:
    key = (config.atlas, config.grid)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = GridContext(load_atlas(config.atlas, config.grid))
    return _CONTEXTS[key]


def _init_worker() -> None:
    import torch  # lazy: `import mambacontrol.synth` stays free of torch

    torch.set_num_threads(1)


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _round(x: float, sig: int = 6) -> float:
    return float(f"{x:.{sig}g}")


def _visit_paths(out: Path, plan: SubjectPlan, k: int) -> dict[str, Path]:
    stem = out / plan.subject_id / plan.visit_id(k)
    return {"image": Path(f"{stem}_T1w.nii.gz"), "segm": Path(f"{stem}_dseg.nii.gz"),
            "mask": Path(f"{stem}_mask.nii.gz")}


def _label_index(ctx: GridContext) -> dict[int, int]:
    return {int(lab): i for i, lab in enumerate(ctx.label_ids)}


def _manifest_row(plan: SubjectPlan, visit: SimulatedVisit, ctx: GridContext, out: Path,
                  paths: dict[str, Path], rates: dict[str, float]) -> dict:
    """The visit's manifest fields (image paths absolute) and its ``extra`` ground-truth columns."""
    index = _label_index(ctx)
    extra = {"mask_path": paths["mask"].relative_to(out).as_posix(), "visit": str(visit.index + 1),
             "years": f"{visit.years:.2f}", "baseline_diagnosis": plan.baseline_diagnosis}
    for key, labels in ctx.atlas.key_groups.items():
        extra[f"vol_{key}"] = _fmt(sum(visit.volumes[index[lab]] for lab in labels))
    for key in ctx.atlas.key_groups:
        extra[f"rate_{key}"] = _fmt(rates[key], 4)
    for lab, v in zip(ctx.label_ids, visit.volumes):
        extra[f"vol_r{lab}"] = _fmt(v)
    return {"subject_id": plan.subject_id, "image_uid": plan.visit_id(visit.index),
            "image_path": str(paths["image"]), "segm_path": str(paths["segm"]),
            "age": visit.age, "sex": plan.sex, "diagnosis": visit.diagnosis, "split": plan.split,
            "extra": extra}


def _visit_checks(visit: SimulatedVisit, baseline: SimulatedVisit, ctx: GridContext) -> dict:
    """Fidelity numbers of one visit for ``cohort.json``: realised vs prescribed change, and the
    partial-volume cross-check, over regions of at least ``FIDELITY_MIN_MM3``."""
    checks: dict = {"visit": visit.index + 1, "years": visit.years, "diagnosis": visit.diagnosis,
                    "min_jacobian": _round(visit.min_jacobian, 4)}
    if visit.index == 0:
        return checks
    checks["steps"] = visit.steps
    big = baseline.volumes >= FIDELITY_MIN_MM3
    realised = visit.volumes / baseline.volumes - 1.0
    prescribed = np.expm1(visit.prescribed_log_ratio)
    pv = visit.pv_volumes / baseline.pv_volumes - 1.0
    rel = np.abs(realised - prescribed) / np.maximum(np.abs(prescribed), 1e-12)
    pv_rel = np.abs(pv - realised) / np.maximum(np.abs(realised), 1e-12)
    checks.update({
        "max_gradient_norm": _round(visit.max_gradient_norm, 4),
        "calibration_error": _round(visit.calibration_error, 4),
        "inverse_step_voxels": _round(visit.inverse_step, 3),
        "regions_checked": int(big.sum()),
        "realised_vs_prescribed_max_rel_error": _round(float(rel[big].max()), 4),
        "pv_vs_jacobian_rel_error": {"median": _round(float(np.median(pv_rel[big])), 4),
                                     "p90": _round(float(np.percentile(pv_rel[big], 90)), 4),
                                     "max": _round(float(pv_rel[big].max()), 4)},
        "change_pct": {}})
    index = _label_index(ctx)
    for key, labels in ctx.atlas.key_groups.items():
        ids = [index[lab] for lab in labels]
        b, bpv = baseline.volumes[ids].sum(), baseline.pv_volumes[ids].sum()
        target = (np.exp(visit.prescribed_log_ratio[ids]) * baseline.volumes[ids]).sum() / b
        checks["change_pct"][key] = {
            "prescribed": _round(float(percent_change(target)), 5),
            "realised": _round(float(percent_change(visit.volumes[ids].sum(), b)), 5),
            "partial_volume": _round(float(percent_change(visit.pv_volumes[ids].sum(), bpv)), 5)}
    return checks


def _pre_baseline(sim: SubjectSimulator, ctx: GridContext) -> dict:
    """The subject's pre-baseline history for ``cohort.json``: years per stage, steps and their
    checks, and each key group's change from the reference anatomy to baseline."""
    history = sim.history
    prescribed = sim.reference_volumes * np.exp(sim.rates.log_ratio(sim.plan.history, 0.0))
    index = _label_index(ctx)
    change = {}
    for key, labels in ctx.atlas.key_groups.items():
        ids = [index[lab] for lab in labels]
        reference = sim.reference_volumes[ids].sum()
        realised = sim.baseline_volumes[ids].sum()
        change[key] = {"prescribed": _round(float(percent_change(prescribed[ids].sum(),
                                                                 reference)), 5),
                       "realised": _round(float(percent_change(realised, reference)), 5)}
    return {"years": sim.plan.pre_baseline_years(), "steps": history.steps,
            "max_gradient_norm": _round(history.max_gradient_norm, 4),
            "calibration_error": _round(history.calibration_error, 4),
            "max_shift_voxels": _round(sim.max_shift, 4), "change_pct": change}


def _stage_rates(sim: SubjectSimulator, ctx: GridContext, baseline: SimulatedVisit) -> dict:
    """Annual % change of every key group at every stage (weighted by the baseline volumes)."""
    index = _label_index(ctx)
    return {stage: {key: _round(sim.rates.group_rate(
        stage, labels, [baseline.volumes[index[lab]] for lab in labels]), 6)
        for key, labels in ctx.atlas.key_groups.items()} for stage in STAGES}


def _key_group_rates(sim: SubjectSimulator, ctx: GridContext, visit: SimulatedVisit) -> dict:
    """Annual % change of every key group at a visit under network dynamics (weighted by the
    visit's volumes): the instantaneous rate, which follows the spreading load."""
    index = _label_index(ctx)
    return {key: _round(sim.rates.group_rate(visit.diagnosis, labels,
                                             [visit.volumes[index[lab]] for lab in labels],
                                             visit.years), 6)
            for key, labels in ctx.atlas.key_groups.items()}


def _network_entry(sim: SubjectSimulator, ctx: GridContext, visits: list[dict]) -> dict:
    """The subject's network dynamics for ``cohort.json``: subtype, epicentre, spread rate,
    and at every visit the disease extent (grey-matter load weighted by reference volume)."""
    rates: NetworkRates = sim.rates
    names = {r.label: r.name for r in ctx.atlas.regions}
    grey = np.array([r.tissue == "gm" for r in ctx.atlas.regions], dtype=np.float64)
    weights = sim.reference_volumes * grey
    return {"subtype": rates.subtype,
            "epicentre": {names[lab]: w for lab, w in rates.epicentre.items()},
            "beta_per_year": rates.beta, "preclinical_years": rates.preclinical_years,
            "mci_onset_years": rates.mci_onset,
            "extent": [_round(rates.extent(v["years"], weights), 4) for v in visits],
            "annual_change_pct": [v.pop("annual_change_pct") for v in visits]}


def simulate_and_write(plan: SubjectPlan, out: Path, config: SynthConfig) -> dict:
    """Simulate one subject and write its files into ``out`` (an absolute folder).

    Returns:
        ``{"rows": [...], "subject": {...}}``: manifest rows (image paths absolute) and the
        subject's entry for ``cohort.json``.
    """
    ctx = _context(config)
    sim = SubjectSimulator(plan, ctx, config)
    affine = ctx.atlas.grid.affine
    rows, checks = [], []
    network = isinstance(sim.rates, NetworkRates)
    for visit in sim.visits():
        if visit.index == 0:
            baseline = visit
            # the manifest's rate_<group>: at the baseline diagnosis (independent), or the
            # instantaneous rate at baseline (network, where it follows the load)
            stage_rates = None if network else _stage_rates(sim, ctx, visit)
            row_rates = (_key_group_rates(sim, ctx, visit) if network
                         else stage_rates[plan.baseline_diagnosis])
        paths = _visit_paths(out, plan, visit.index)
        save_nifti(paths["image"], visit.image, affine, dtype=np.float32)
        save_nifti(paths["segm"], visit.labels, affine, dtype=np.int16)
        save_nifti(paths["mask"], visit.mask, affine, dtype=np.uint8)
        rows.append(_manifest_row(plan, visit, ctx, out, paths, row_rates))
        checks.append(_visit_checks(visit, baseline, ctx))
        if network:
            checks[-1]["annual_change_pct"] = _key_group_rates(sim, ctx, visit)
    subject = plan.to_dict()
    subject.update({"contrast_gamma": _round(sim.gamma, 5),
                    "anatomy": {k: _round(v, 5) for k, v in sim.anatomy.summary().items()},
                    "intracranial_volume_mm3": _round(sim.intracranial_volume, 7),
                    "pre_baseline": _pre_baseline(sim, ctx)})
    if network:
        subject["network"] = _network_entry(sim, ctx, checks)
    else:
        subject["annual_change_pct_by_stage"] = stage_rates
    subject["visits"] = checks
    return {"rows": rows, "subject": subject}


def generate_cohort(out: str | os.PathLike, *, subjects: int = 20, seed: int = 0, grid: str = "2mm",
                    visits: Sequence[int] = (2, 5), split: Sequence[float] = (0.7, 0.1, 0.2),
                    workers: int = 1, figure: bool = True, overwrite: bool = False,
                    config: SynthConfig | None = None, dynamics: str = "network") -> Manifest:
    """Simulate a longitudinal cohort on the atlas and write it to ``out``.

    Args:
        out: output folder (created).
        subjects: number of subjects.
        seed: cohort seed; the same seed gives the same files.
        grid: atlas grid, ``2mm``, ``1p5mm`` or ``4mm`` (quick).
        visits: (fewest, most) visits per subject.
        split: train/valid/test fractions of the subjects.
        workers: processes simulating subjects in parallel (results do not depend on it).
        figure: also write ``overview.png``.
        overwrite: replace an existing cohort's files in ``out``.
        config: every generator parameter (overrides ``subjects``, ``grid``, ``visits``, ``split``,
            ``dynamics``).
        dynamics: ``network`` (atrophy spreads from subject-specific epicentres along the anatomy
            graph, :mod:`~mambacontrol.synth.spread`) or ``independent`` (each region's rate drawn
            on its own: the generator before network dynamics, file for file, for comparison).

    Returns:
        The written manifest, read back and validated.

    Raises:
        ConfigError: for an invalid size, visit range, split or worker count.
        OutputFolderError: when ``out`` is a file, holds another command's output or foreign
            files, or already holds a cohort and ``overwrite`` is false (which then replaces
            only the cohort's own files; see :class:`mambacontrol.io.OutputFolder`).
    """
    out = Path(out)
    if workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1")
    if config is None:
        if dynamics not in DYNAMICS:
            raise ConfigError(f"dynamics '{dynamics}' is not one of {', '.join(DYNAMICS)}")
        try:
            design = CohortDesign(subjects=int(subjects), visits=tuple(int(v) for v in visits),
                                  split=tuple(float(s) for s in split))
        except ValueError as exc:
            raise ConfigError(f"{exc}; fix the cohort size, --visits or --split") from None
        config = SynthConfig(grid=grid, design=design, dynamics=dynamics)
    atlas = load_atlas(config.atlas, config.grid)
    plans = plan_cohort(config.design, seed)
    with OutputFolder.claim(out, "synth", overwrite=overwrite) as folder:
        names = [p.subject_id for p in plans] + list(COHORT_FILES)
        folder.check_free(names)
        manifest = _write_cohort(folder, plans, atlas, config, seed, workers, figure)
        folder.remove_own(keep=names)  # an earlier cohort's subjects that this one lacks
    return manifest


def _write_cohort(folder: OutputFolder, plans: list[SubjectPlan], atlas, config: SynthConfig,
                  seed: int, workers: int, figure: bool) -> Manifest:
    """Simulate every subject into the claimed ``folder`` and write the cohort's files."""
    out = folder.path
    log.info("simulating %d subjects on %s %s into %s (%d worker%s)", len(plans), atlas.id,
             config.grid, out, workers, "s" if workers > 1 else "")
    for plan in plans:  # recorded first, so that an interrupted run's subjects are its own
        folder.record(plan.subject_id)
    results = _run(plans, out.resolve(), config, workers)
    visits_list = [Visit(row["subject_id"], row["image_uid"], Path(row["image_path"]), row["age"],
                         row["sex"], row["diagnosis"], row["split"],
                         Path(row["segm_path"]), row["extra"])
                   for result in results for row in result["rows"]]
    folder.record("manifest.csv")
    Manifest(visits_list).to_csv(out / "manifest.csv")
    meta = {"generator": "mambacontrol.synth", "mambacontrol_version": __version__, "seed": seed,
            "atlas": {"id": atlas.id, "grid": atlas.grid_name, "checksum": atlas.checksum},
            "truth": ("vol_* = integral of the Jacobian determinant of the template-to-visit map "
                      "(subject shape, then the atrophy before baseline, then the progression "
                      "since) over each template region (mm3); rate_* = prescribed annual % "
                      "change of the "
                      + ("group at the baseline diagnosis, the same rates before and after baseline"
                         if config.dynamics == "independent" else
                         "group at baseline; under network dynamics the rates follow the pathology "
                         "load spreading from the subject's epicentre (subjects[].network)")),
            "config": config.to_dict(),
            "subjects": [r["subject"] for r in results]}
    folder.record("cohort.json")
    write_json(out / "cohort.json", meta, indent=1)
    manifest = Manifest.from_csv(out / "manifest.csv")
    if figure:
        from mambacontrol.synth.overview import plot_overview  # lazy: matplotlib, when asked

        folder.record("overview.png")
        plot_overview(manifest, out / "overview.png", atlas)
    return manifest


def _run(plans: list[SubjectPlan], out: Path, config: SynthConfig, workers: int) -> list[dict]:
    bar = tqdm(total=len(plans), desc="synth", unit="subject", disable=None)
    results: dict[int, dict] = {}
    try:
        if workers == 1:
            for plan in plans:
                results[plan.index] = simulate_and_write(plan, out, config)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(plans)), mp_context=ctx,
                                     initializer=_init_worker) as pool:
                futures = {pool.submit(simulate_and_write, plan, out, config): plan.index
                           for plan in plans}
                try:
                    for fut in as_completed(futures):
                        results[futures[fut]] = fut.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
    return [results[p.index] for p in plans]
