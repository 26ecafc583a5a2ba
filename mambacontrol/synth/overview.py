"""``overview.png``: a few subjects' baseline and last-visit slices and every volume trajectory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec, SubplotSpec
from matplotlib.lines import Line2D

from mambacontrol.atlas import Atlas
from mambacontrol.data import DIAGNOSES, Manifest, Visit
from mambacontrol.data.change import percent_change
from mambacontrol.io import load_nifti
from mambacontrol.io.figures import mask_centre, new_figure, save_png, show_plane

COLOURS = {"CN": "#2a9d8f", "MCI": "#e9a23b", "AD": "#c0392b"}
TRAJECTORIES = (("hippocampus", "hippocampus"), ("lateral_ventricles", "lateral ventricles"))
OUTLINES = (("#00bcd4", "-"), ("#ffd54f", "--"))
"""Colour and line style of the baseline's and the last visit's label outlines."""


def _pick_subjects(by_subject: dict[str, list[Visit]], count: int) -> list[list[Visit]]:
    """The longest-followed subject of each baseline diagnosis, then the next longest."""
    ranked = sorted(by_subject.values(),
                    key=lambda vs: (-(vs[-1].age - vs[0].age), vs[0].subject_id))
    picked: list[list[Visit]] = []
    for dx in DIAGNOSES:
        for vs in ranked:
            if vs[0].diagnosis == dx and vs not in picked:
                picked.append(vs)
                break
    picked += [vs for vs in ranked if vs not in picked]
    return picked[:count]


def plot_overview(manifest: Manifest, path: str | os.PathLike, atlas: Atlas,
                  subjects: int = 3) -> Path:
    """Draw the cohort overview.

    Left: for up to ``subjects`` subjects (one per baseline diagnosis first), a coronal slice
    through the hippocampus at baseline and at the last visit, and a close-up of the last visit
    with the hippocampus and ventricle labels of both visits outlined. Right: every subject's
    true hippocampus and lateral-ventricle volume over time, relative to baseline.

    Args:
        manifest: a synthetic cohort's manifest (needs ``vol_hippocampus`` and
            ``vol_lateral_ventricles``).
        path: the PNG to write (atomically; no timestamp or software version in its metadata).
        atlas: the cohort's atlas (its ``hippocampus`` and ``lateral_ventricles`` key groups).
        subjects: how many subjects to show slices of.

    Returns:
        ``path``.
    """
    hippocampus = list(atlas.key_groups["hippocampus"])
    outlined = hippocampus + list(atlas.key_groups["lateral_ventricles"])
    by_subject = manifest.by_subject()
    shown = _pick_subjects(by_subject, subjects)
    rows = max(len(shown), 2)
    fig = new_figure((11.0, 2.7 * rows), dpi=100)
    grid = fig.add_gridspec(rows, 5, width_ratios=(1, 1, 1, 0.15, 1.6), wspace=0.08, hspace=0.25)
    for r, visits in enumerate(shown):
        _draw_subject(fig, grid, r, visits, hippocampus, outlined)
    _draw_trajectories(fig, grid[:, 4], by_subject)
    fig.legend([Line2D([], [], color=COLOURS[d]) for d in DIAGNOSES],
               [f"{d} at baseline" for d in DIAGNOSES], loc="upper right", fontsize=8,
               frameon=False)
    return save_png(fig, path)


def _draw_subject(fig: Figure, grid: GridSpec, row: int, visits: list[Visit],
                  hippocampus: list[int], outlined: list[int]) -> None:
    """One subject's row: the coronal slice through its baseline hippocampus at baseline and at
    the last visit, and the last visit's close-up with both visits' ``outlined`` labels."""
    first, last = visits[0], visits[-1]
    labels = [load_nifti(v.segm_path, labels=True).data for v in (first, last)]
    centre = mask_centre(np.isin(labels[0], hippocampus))
    y = labels[0].shape[1] // 2 if centre is None else int(round(centre[1]))
    images = [load_nifti(v.image_path).data[:, y, :] for v in (first, last)]
    outlines = [np.isin(lab[:, y, :], outlined) for lab in labels]
    titles = (f"{first.subject_id} {first.diagnosis}, {first.age:.0f} y",
              f"+{last.age - first.age:.1f} y ({last.diagnosis})")
    for c in range(2):
        ax = fig.add_subplot(grid[row, c])
        show_plane(ax, images[c], cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(titles[c], fontsize=8)
        ax.set_axis_off()
    _draw_close_up(fig.add_subplot(grid[row, 2]), images[1], outlines)


def _draw_close_up(ax: Axes, image: np.ndarray, outlines: list[np.ndarray]) -> None:
    """``image`` (a coronal ``(X, Z)`` slice) cropped to the ``outlines`` (bool ``(X, Z)``, the
    baseline's and the last visit's labels) with a 3-voxel margin, the outlines drawn on it."""
    xs, zs = np.nonzero(outlines[0] | outlines[1])
    if xs.size:
        box = (slice(max(xs.min() - 3, 0), xs.max() + 4), slice(max(zs.min() - 3, 0), zs.max() + 4))
    else:
        box = (slice(None), slice(None))
    show_plane(ax, image[box], cmap="gray", vmin=0.0, vmax=1.0)
    for outline, (colour, style) in zip(outlines, OUTLINES):
        if outline[box].any():
            ax.contour(outline[box].T.astype(float), levels=[0.5], colors=colour,
                       linewidths=0.8, linestyles=style)
    ax.set_title("last visit; labels: baseline —, last - -", fontsize=7)
    ax.set_axis_off()


def _draw_trajectories(fig: Figure, cell: SubplotSpec, by_subject: dict[str, list[Visit]]) -> None:
    """Every subject's true key-group volumes (``TRAJECTORIES``) over time, in % of baseline,
    coloured by baseline diagnosis, one panel per group stacked in ``cell``."""
    panels = cell.subgridspec(2, 1, hspace=0.35)
    for i, (key, name) in enumerate(TRAJECTORIES):
        ax = fig.add_subplot(panels[i])
        for vs in by_subject.values():
            t = [v.age - vs[0].age for v in vs]
            vol = np.array([float(v.extra[f"vol_{key}"]) for v in vs])
            ax.plot(t, percent_change(vol, vol[0]), "-o", ms=2.5, lw=1.0,
                    color=COLOURS[vs[0].diagnosis], alpha=0.8)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_title(f"{name} volume (truth)", fontsize=9)
        ax.set_ylabel("% of baseline", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 1:
            ax.set_xlabel("years since baseline", fontsize=8)
