"""Report figures as PNG bytes (matplotlib's Agg canvas through ``io.figures``, no display).

Every figure takes plain data (a summary from :func:`aggregate.summarize`, results or arrays) and
returns PNG bytes; :func:`data_uri` embeds them in HTML. Method names go into legends with ``$``
escaped, so no user string is read as matplotlib mathtext.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from mambacontrol.evaluation.aggregate import (
    YEAR_BINS,
    metric_spec,
    pair_values,
    years_bin,
)
from mambacontrol.evaluation.records import (
    COPY_BASELINE,
    LINEAR_BASELINE,
    MEASUREMENT_FLOOR,
    REFERENCE_KINDS,
    PairInfo,
    PairResult,
    method_kind,
)
from mambacontrol.io.figures import new_figure, png_bytes, show_plane

DPI = 110
_FIXED_COLOURS = {COPY_BASELINE: "#8c8c8c", LINEAR_BASELINE: "#c9a227",
                  MEASUREMENT_FLOOR: "#222222"}
_MODEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#17becf", "#e377c2", "#8c564b")


_REFERENCE_HATCH = {"floor": "///", "ceiling": "xx"}
"""References (not methods) are drawn as hatched outlines."""


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method: models from a palette in order, baselines and floor fixed."""
    models = [m for m in methods if m not in _FIXED_COLOURS]
    out = {m: _MODEL_COLOURS[i % len(_MODEL_COLOURS)] for i, m in enumerate(models)}
    out.update({m: c for m, c in _FIXED_COLOURS.items() if m in methods})
    return out


def plain_text(text: str) -> str:
    """``text`` with ``$`` escaped, so matplotlib shows it literally."""
    return str(text).replace("$", r"\$")


def to_png(fig: Figure) -> bytes:
    """A report figure as PNG: ``DPI``, cropped to its content, matplotlib's version stamped."""
    return png_bytes(fig, dpi=DPI, tight=True, software_stamp=True)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _grouped_bars(ax, names: Sequence[str], methods: Sequence[str], means: Mapping[str, Sequence],
                  sds: Mapping[str, Sequence], colours: Mapping[str, str]) -> None:
    """Horizontal bars, one group per name (top to bottom), one bar per method within it."""
    y = np.arange(len(names))[::-1].astype(float)
    height = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        values = np.array([np.nan if v is None else v for v in means[m]], dtype=float)
        errs = np.array([0.0 if v is None else v for v in sds[m]], dtype=float)
        hatch = _REFERENCE_HATCH.get(method_kind(m))
        ax.barh(y + 0.4 - height * (i + 0.5), np.nan_to_num(values), height=height * 0.92,
                xerr=errs, color="white" if hatch else colours[m], edgecolor=colours[m],
                hatch=hatch, label=plain_text(m), capsize=2,
                error_kw={"elinewidth": 0.8, "ecolor": "#555555"})
    ax.set_yticks(y, [plain_text(n) for n in names])
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


def _legend_above(ax) -> None:
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)


def key_group_error_chart(summary: dict) -> bytes:
    """Mean absolute volume change error (% of baseline volume, ± sd) per key group and method."""
    methods = summary["methods"]
    groups = list(dict.fromkeys(g for m in methods for g in summary["key_groups"][m]))
    colours = method_colours(methods)
    means = {m: [summary["key_groups"][m].get(g, {}).get("abs_error_pct", {}).get("mean")
                 for g in groups] for m in methods}
    sds = {m: [summary["key_groups"][m].get(g, {}).get("abs_error_pct", {}).get("sd")
               for g in groups] for m in methods}
    fig = new_figure((7.5, 0.55 * len(groups) * max(1, len(methods) / 3) + 1.4))
    ax = fig.subplots()
    _grouped_bars(ax, [g.replace("_", " ") for g in groups], methods, means, sds, colours)
    ax.set_xlabel("absolute volume change error (% of baseline volume), mean ± sd over pairs")
    _legend_above(ax)
    return to_png(fig)


def region_error_chart(summary: dict, region_names: Mapping[int, str] | None = None,
                       top: int = 20) -> bytes:
    """Mean absolute volume change error per region, for the ``top`` regions with the largest
    mean true change (where the brain changes most), one bar per method."""
    methods = summary["methods"]
    reference = next((m for m in methods if summary["method_kinds"][m] != "floor"), methods[0])
    true_change = {lab: abs(s["true_change_pct"]["mean"] or 0.0)
                   for lab, s in summary["regions"][reference].items()}
    labels = sorted(true_change, key=lambda lab: -true_change[lab])[:top]
    names = [(region_names or {}).get(int(lab), f"label {lab}") for lab in labels]
    colours = method_colours(methods)

    def stat(m: str, lab: str, key: str):
        return summary["regions"][m].get(lab, {}).get("abs_error_pct", {}).get(key)

    means = {m: [stat(m, lab, "mean") for lab in labels] for m in methods}
    sds = {m: [stat(m, lab, "sd") for lab in labels] for m in methods}
    fig = new_figure((7.5, 0.32 * len(labels) * max(1, len(methods) / 3) + 1.4))
    ax = fig.subplots()
    _grouped_bars(ax, names, methods, means, sds, colours)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("absolute volume change error (% of baseline volume), mean ± sd over pairs")
    _legend_above(ax)
    return to_png(fig)


def error_vs_years_chart(results: Sequence[PairResult], keys: Sequence[str],
                         methods: Sequence[str]) -> bytes:
    """One panel per statistic key: each pair's value against Δt (dots), and the mean per Δt bin
    (line through the bin centres), per method."""
    colours = method_colours(methods)
    fig = new_figure((4.2 * len(keys), 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    centres = {label: (lo + (hi if np.isfinite(hi) else lo + 2.0)) / 2
               for lo, hi, label in YEAR_BINS}
    for ax, key in zip(axes[0], keys):
        spec = metric_spec(key)
        for m in methods:
            mine = [(r.pair.years, pair_values(r).get(key, np.nan)) for r in results
                    if r.method == m]
            mine = [(t, v) for t, v in mine if np.isfinite(v)]
            if not mine:
                continue
            t, v = np.array(mine).T
            ax.scatter(t, v, s=9, alpha=0.45, color=colours[m], linewidths=0)
            bins = [(centres[label], np.mean([b for a, b in mine if years_bin(a) == label]))
                    for _, _, label in YEAR_BINS if any(years_bin(a) == label for a, _ in mine)]
            bx, by = np.array(bins).T
            ax.plot(bx, by, marker="o", color=colours[m], markersize=3.5, linewidth=1.4,
                    linestyle="--" if method_kind(m) in REFERENCE_KINDS else "-",
                    label=plain_text(m))
        ax.set_xlabel("years between scans")
        ax.set_ylabel(f"{spec.label} ({spec.unit})" if spec.unit else spec.label)
        ax.set_title(spec.label + (" (higher is better)" if spec.higher_is_better
                                   else " (lower is better)"), fontsize=10)
        ax.grid(color="#e5e5e5", linewidth=0.6)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return to_png(fig)


@dataclass
class SlicePanel:
    """One pair's images for the slice figure; arrays are ``(X, Y, Z)`` in RAS order on one grid.

    Attributes:
        pair: the pair (its ids are shown in the HTML caption, not in the image).
        method: the method whose prediction is shown.
        baseline: baseline scan.
        followup: true follow-up scan.
        prediction: predicted follow-up.
        mask: bool brain mask.
        uncertainty: voxel-wise spread of the samples (e.g. their sd), or None.
        slice_index: coronal slice (index along Y); None picks the slice with the most true change.
    """

    pair: PairInfo
    method: str
    baseline: np.ndarray
    followup: np.ndarray
    prediction: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray | None = None
    slice_index: int | None = None

    def coronal_index(self) -> int:
        if self.slice_index is not None:
            return int(self.slice_index)
        change = np.abs(np.asarray(self.followup, float) - np.asarray(self.baseline, float))
        per_slice = (change * np.asarray(self.mask, bool)).sum(axis=(0, 2))
        return int(np.argmax(per_slice))


def _show(ax, image: np.ndarray, **kwargs):
    """A coronal slice ``(X, Z)`` shown with superior up and the subject's left on the left."""
    im = show_plane(ax, np.asarray(image, float), **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def slice_figure(panel: SlicePanel) -> bytes:
    """A row of coronal slices: baseline, true follow-up, prediction, true change, predicted change
    and uncertainty. Both change maps share one diverging scale centred at 0 (blue: darker at
    follow-up, red: brighter); the scale is the 99th percentile of |change| inside the brain."""
    y = panel.coronal_index()
    mask = np.asarray(panel.mask, bool)[:, y, :]
    base = np.asarray(panel.baseline, float)[:, y, :]
    follow = np.asarray(panel.followup, float)[:, y, :]
    pred = np.asarray(panel.prediction, float)[:, y, :]
    true_change, pred_change = (follow - base) * mask, (pred - base) * mask
    inside = np.concatenate([np.abs(true_change[mask]), np.abs(pred_change[mask])])
    scale = float(np.percentile(inside, 99)) if inside.size else 0.0
    scale = scale if scale > 0 else 0.05
    columns = [("baseline", base, {"cmap": "gray", "vmin": 0, "vmax": 1}),
               ("true follow-up", follow, {"cmap": "gray", "vmin": 0, "vmax": 1}),
               ("prediction", pred, {"cmap": "gray", "vmin": 0, "vmax": 1}),
               ("true change", true_change, {"cmap": "RdBu_r", "vmin": -scale, "vmax": scale}),
               ("predicted change", pred_change, {"cmap": "RdBu_r", "vmin": -scale, "vmax": scale})]
    if panel.uncertainty is not None:
        unc = np.asarray(panel.uncertainty, float)[:, y, :] * mask
        top = float(np.percentile(unc[mask], 99)) if mask.any() else 0.0
        columns.append(("uncertainty (sd)", unc, {"cmap": "magma", "vmin": 0,
                                                  "vmax": top if top > 0 else 1e-3}))
    aspect = base.shape[1] / base.shape[0]
    fig = new_figure((2.1 * len(columns), 2.1 * aspect + 0.9))
    axes = fig.subplots(1, len(columns), squeeze=False)
    for ax, (title, image, kw) in zip(axes[0], columns):
        im = _show(ax, image, **kw)
        ax.set_title(title, fontsize=9)
        cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.05, pad=0.04)
        cb.ax.tick_params(labelsize=7)
    axes[0][0].text(0.02, 0.02, "L", color="yellow", fontsize=8, transform=axes[0][0].transAxes)
    axes[0][0].text(0.92, 0.02, "R", color="yellow", fontsize=8, transform=axes[0][0].transAxes)
    fig.tight_layout()
    return to_png(fig)
