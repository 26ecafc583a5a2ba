"""Evaluation: metrics inside the brain mask, baselines, aggregation, CSV/JSON outputs and the
HTML report. A library of arrays and records; the ``evaluate`` command drives it.

Typical use, per pair and method::

    metrics = image_metrics(prediction, baseline, followup, mask)             # voxel metrics
    regions, groups = regional_change(base_vols, pred_vols, true_vols, atlas.key_groups)
    results.append(PairResult(PairInfo.from_visit_pair(pair), "my-model", metrics, regions, groups))

then ``summary = summarize(results)``, ``write_metrics_json``, ``write_pairs_csv``,
``write_regions_csv`` and ``write_report(path, render_report(summary, results, provenance=...))``.
"""

from mambacontrol.evaluation.aggregate import (
    YEAR_BINS,
    best_methods,
    compare_with,
    describe,
    summarize,
    years_bin,
)
from mambacontrol.evaluation.baselines import (
    LinearRates,
    VolumeSample,
    copy_baseline,
    copy_baseline_volumes,
    fit_linear_rates,
    has_manifest_volumes,
    manifest_volumes,
    samples_from_pairs,
)
from mambacontrol.evaluation.figures import SlicePanel
from mambacontrol.evaluation.metrics import (
    DEFAULT_CHANGE_THRESHOLD,
    DEFAULT_SSIM_WINDOW,
    METRICS,
    VolumeChange,
    change_dice,
    change_mae,
    change_region,
    image_metrics,
    masked_mae,
    masked_mse,
    masked_psnr,
    masked_ssim,
    regional_change,
)
from mambacontrol.evaluation.outputs import write_metrics_json, write_pairs_csv, write_regions_csv
from mambacontrol.evaluation.provenance import collect_provenance, package_versions
from mambacontrol.evaluation.records import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    PairInfo,
    PairResult,
)
from mambacontrol.evaluation.report import render_report, write_report

__all__ = [
    "COPY_BASELINE", "DEFAULT_CHANGE_THRESHOLD", "DEFAULT_SSIM_WINDOW", "LINEAR_BASELINE",
    "MEASUREMENT_FLOOR", "METRICS", "YEAR_BINS", "LinearRates", "PairInfo", "PairResult",
    "SlicePanel", "VolumeChange", "VolumeSample", "best_methods", "change_dice", "change_mae",
    "change_region", "collect_provenance", "compare_with", "copy_baseline", "copy_baseline_volumes",
    "describe", "fit_linear_rates", "has_manifest_volumes", "image_metrics", "manifest_volumes",
    "masked_mae", "masked_mse", "masked_psnr", "masked_ssim", "package_versions",
    "regional_change", "render_report", "samples_from_pairs", "summarize", "write_metrics_json",
    "write_pairs_csv", "write_regions_csv", "write_report", "years_bin",
]
