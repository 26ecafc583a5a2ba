"""Speed and accuracy of mambacontrol.registration on stand-in scans with known answers.

Usage::

    python benchmarks/bench_registration.py speed       # align_to_atlas + propagate_labels, 1 mm
    python benchmarks/bench_registration.py calibrate   # similarity of brains vs non-brain images
    python benchmarks/bench_registration.py measure     # regional volume measurement: error, time
    python benchmarks/bench_registration.py all --json results.json

Every figure is printed as a Markdown table with the load average beside it (timings on a shared
machine are inflated by other work; CPU seconds are the process's user + system time, all threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mambacontrol.atlas import Atlas, load_atlas
from mambacontrol.errors import RegistrationError
from mambacontrol.io import Volume
from mambacontrol.registration import (
    ALIGNMENT,
    LABEL_PROPAGATION,
    MEASUREMENT,
    MIN_SIMILARITY,
    AlignmentSettings,
    SyNSettings,
    align_to_atlas,
    measure_regional_volumes,
    propagate_labels,
)
from mambacontrol.testing.standins import (
    lps_grid,
    non_brain_images,
    radial_warp,
    random_smooth_warp,
    rigid_motion,
    standin_scan,
)

SKULL_CROP_MM = ((-15, -15), (-15, -15), (-45, -10))
MIN_REGION_VOXELS = 20


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def timed(fn: Callable, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def brain_error_mm(matrix: np.ndarray, truth: np.ndarray, atlas: Atlas) -> tuple[float, float]:
    ijk = np.argwhere(atlas.mask).T.astype(np.float64)
    pts = atlas.grid.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    err = np.linalg.norm((matrix @ pts - truth @ pts)[:3], axis=0)
    return float(err.mean()), float(err.max())


def mean_dice(a: np.ndarray, b: np.ndarray, ids) -> float:
    scores = [2.0 * ((a == i) & (b == i)).sum() / ((a == i).sum() + (b == i).sum())
              for i in ids if (b == i).sum() >= MIN_REGION_VOXELS]
    return float(np.mean(scores))


def subject(atlas: Atlas, seed: int, amplitude_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A new "subject" on the atlas grid: the template and labels under a random smooth warp
    (``amplitude_mm`` root-mean-square displacement, 15 mm smoothness)."""
    image, labels = random_smooth_warp(atlas.template, atlas.labels, atlas.grid.affine,
                                       amplitude_mm=amplitude_mm, smoothness_mm=15.0, seed=seed)
    return image * (labels > 0), labels


def bench_speed(atlas: Atlas, repeats: int, bias_correction: bool = True,
                use_mask: bool = False, align: AlignmentSettings = ALIGNMENT,
                labels_syn: SyNSettings = LABEL_PROPAGATION) -> list[dict]:
    """align_to_atlas + propagate_labels + back-mapping on 1 mm stand-in scans of new subjects.

    Intensity error: mean |normalised image − the same scan's without its bias field| inside the
    brain mask (the reference is aligned without bias correction, so the column shows what the
    bias field still leaves after ``bias_correction``). ``use_mask``: align with the subject's
    true brain mask (as a skull-stripping tool would give it) instead of the atlas's."""
    rows = []
    cases = [("1 mm LPS, skull off", False), ("1 mm LPS, skull + neck", True)]
    for r in range(repeats):
        for name, skull in cases:
            brain, truth = subject(atlas, seed=100 + r)
            motion = rigid_motion((8.0, -5.0, 10.0), (6.0, -9.0, 12.0), (0.0, -16.0, 6.0))
            grid = lps_grid(atlas, 1.0, SKULL_CROP_MM if skull else ((10, 10), (12, 12), (8, 8)))
            scan = standin_scan(atlas, grid, brain=brain, motion=motion, skull=skull, seed=r)
            mask = None
            if use_mask:  # the subject's own brain, moved like the scan, on the scan's grid
                solid = standin_scan(atlas, grid, brain=(brain > 0).astype(np.float32),
                                     motion=motion, bias=0.0, noise=0.0, seed=r)
                mask = Volume((solid.data > 0.5 * solid.data.max()).astype(np.uint8), solid.affine)
            aligned, t_align, c_align = timed(align_to_atlas, scan, atlas, seed=0,
                                              bias_correction=bias_correction, brain_mask=mask,
                                              settings=align)
            clean = standin_scan(atlas, grid, brain=brain, motion=motion, skull=skull, seed=r,
                                 bias=0.0)
            reference = align_to_atlas(clean, atlas, seed=0, bias_correction=False,
                                       settings=align)
            both = aligned.mask & reference.mask
            intensity_error = float(np.abs(aligned.image - reference.image)[both].mean())
            labels, t_labels, c_labels = timed(propagate_labels, aligned.image, atlas, seed=0,
                                               settings=labels_syn)
            _, t_back, c_back = timed(aligned.to_native, aligned.image)
            again = propagate_labels(aligned.image, atlas, seed=0, settings=labels_syn)
            repeatable = bool(np.array_equal(again, labels))
            err_mean, err_max = brain_error_mm(aligned.transform.atlas_to_scan, motion, atlas)
            rows.append({
                "case": name, "repeat": r, "scan_shape": list(scan.shape),
                "align_s": t_align, "align_cpu_s": c_align, "labels_s": t_labels,
                "labels_cpu_s": c_labels, "back_s": t_back, "back_cpu_s": c_back,
                "total_s": t_align + t_labels + t_back,
                "similarity": aligned.similarity, "affine_error_mm_mean": err_mean,
                "affine_error_mm_max": err_max,
                "dice_atlas": mean_dice(atlas.labels, truth, atlas.label_ids),
                "dice_propagated": mean_dice(labels, truth, atlas.label_ids),
                "dice_hippocampus": mean_dice(labels, truth, atlas.key_groups["hippocampus"]),
                "labels_deterministic": repeatable, "intensity_error": intensity_error,
                "bias_correction": bias_correction, "brain_mask": use_mask, "load": load(),
            })
            row = rows[-1]
            print(f"| {name} {tuple(scan.shape)} | {t_align:.1f} ({c_align:.1f}) | "
                  f"{t_labels:.1f} ({c_labels:.1f}) | {t_back:.1f} | {row['total_s']:.1f} | "
                  f"{err_mean:.2f} / {err_max:.2f} | {row['dice_atlas']:.3f} → "
                  f"{row['dice_propagated']:.3f} ({row['dice_hippocampus']:.3f}) | "
                  f"{aligned.similarity:.3f} | {intensity_error:.4f} | "
                  f"{'yes' if repeatable else 'NO'} | {row['load']} |",
                  flush=True)
    return rows


def bench_calibrate(atlas: Atlas) -> list[dict]:
    """Template similarity of brain stand-ins (should pass) and non-brain images (must fail)."""
    motion = rigid_motion((-10.0, 6.0, -12.0), (8.0, 10.0, -6.0), (0.0, -16.0, 6.0))
    g1 = lps_grid(atlas, 1.0)
    g_skull = lps_grid(atlas, 1.0, SKULL_CROP_MM)
    atrophy, _ = radial_warp(atlas.template, atlas.grid.affine, (0.0, -16.0, 6.0), 0.04)
    vent = np.argwhere(np.isin(atlas.labels, atlas.key_groups["lateral_ventricles"])).mean(axis=0)
    vent_mm = tuple(float(v) for v in (atlas.grid.affine @ np.r_[vent, 1.0])[:3])
    atrophy, _ = radial_warp(atrophy, atlas.grid.affine, vent_mm, -0.12, 25.0)
    positives = {
        "template, 1 mm": standin_scan(atlas, g1, motion=motion),
        "template, 1 mm, skull + neck": standin_scan(atlas, g_skull, motion=motion, skull=True),
        "template, 1 mm, noise 5 %, bias 40 %": standin_scan(atlas, g1, motion=motion, noise=0.05,
                                                             bias=0.4, seed=1),
        "atrophied (brain −11 %, ventricles up), 1 mm": standin_scan(atlas, g1, brain=atrophy,
                                                                    motion=motion),
    }
    for s, amplitude in enumerate((3.0, 5.0, 7.0, 9.0)):
        positives[f"new subject {s} (warp {amplitude:g} mm rms), 1 mm, skull"] = standin_scan(
            atlas, g_skull, brain=subject(atlas, 200 + s, amplitude)[0], motion=motion, skull=True,
            seed=s)
    negatives = non_brain_images(lps_grid(atlas, 2.0), atlas)
    rows = []
    for kind, images in (("brain", positives), ("non-brain", negatives)):
        for name, scan in images.items():
            try:
                aligned, wall, _ = timed(align_to_atlas, scan, atlas, min_similarity=-1.0)
                score = aligned.similarity
            except RegistrationError as exc:  # e.g. nothing of the scan lands on the template
                score, wall = float("nan"), 0.0
                print(f"  {name}: {exc}")
            rows.append({"kind": kind, "image": name, "similarity": score, "load": load()})
            print(f"| {kind} | {name} | {score:.3f} | {wall:.1f} | {load()} |", flush=True)
    brains = [r["similarity"] for r in rows if r["kind"] == "brain"]
    others = [r["similarity"] for r in rows if r["kind"] == "non-brain"]
    print(f"lowest brain {min(brains):.3f}, highest non-brain {np.nanmax(others):.3f}, "
          f"threshold {MIN_SIMILARITY:.2f}")
    return rows


def measurement_cases(atlas: Atlas) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(baseline, other, exact Jacobian determinant of baseline → other) on the atlas grid."""
    a = atlas.grid.affine

    def centre(labels):
        ijk = np.argwhere(np.isin(atlas.labels, labels)).mean(axis=0)
        return tuple(float(v) for v in (a @ np.r_[ijk, 1.0])[:3])

    rng = np.random.default_rng(0)

    def noisy(image):  # 2 % noise inside the brain, as in a scan
        return np.where(atlas.mask, np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1),
                        0).astype(np.float32)

    t = atlas.template
    ones = np.ones_like(t)
    hippo = radial_warp(t, a, centre(atlas.key_groups["hippocampus"][:1]), 0.08, 10.0)
    return {
        "identical": (t, t.copy(), ones),
        "same anatomy, independent noise 2 %": (noisy(t), noisy(t), ones),
        "global scaling 0.97": (t, *radial_warp(t, a, (0.0, -16.0, 6.0), 0.03)),
        "left hippocampus shrink": (t, *hippo),
        "left hippocampus shrink, noise 2 %": (noisy(t), noisy(hippo[0]), hippo[1]),
        "ventricles grow": (t, *radial_warp(t, a, centre(atlas.key_groups["lateral_ventricles"]),
                                             -0.06, 25.0)),
    }


def bench_measure(atlas: Atlas, settings: SyNSettings, only: str = "") -> list[dict]:
    """Regional change measured by Jacobian integration against the exact change (cases whose
    name contains ``only``)."""
    groups = {"left hippocampus": atlas.key_groups["hippocampus"][:1], **atlas.key_groups}
    regions = [i for i in atlas.label_ids if (atlas.labels == i).sum() >= MIN_REGION_VOXELS]
    rows = []
    for name, (baseline, other, jac) in measurement_cases(atlas).items():
        if only not in name:
            continue
        result, wall, cpu = timed(measure_regional_volumes, baseline, other, atlas.labels,
                                  atlas.grid, atlas.label_ids, seed=0, settings=settings)
        again = measure_regional_volumes(baseline, other, atlas.labels, atlas.grid,
                                         atlas.label_ids, seed=0, settings=settings)
        truth = {i: 100.0 * (float(jac[atlas.labels == i].mean()) - 1.0) for i in regions}
        measured = dict(zip(result.label_ids, result.percent_change))
        errors = np.array([measured[i] - truth[i] for i in regions])
        group_rows = {}
        for g, ids in groups.items():
            region = np.isin(atlas.labels, ids)
            base, out = result.groups({g: ids})[g]
            group_rows[g] = (100.0 * (float(jac[region].mean()) - 1.0), 100.0 * (out / base - 1.0))
        row = {
            "case": name, "wall_s": wall, "cpu_s": cpu,
            "deterministic": bool(np.array_equal(again.jacobian, result.jacobian)),
            "region_abs_error_mean": float(np.abs(errors).mean()),
            "region_abs_error_p90": float(np.percentile(np.abs(errors), 90)),
            "groups_true_measured": group_rows, "load": load(),
        }
        rows.append(row)
        shown = " | ".join(f"{t:+.2f} / {m:+.2f}" for t, m in group_rows.values())
        print(f"| {name} | {shown} | {row['region_abs_error_mean']:.2f} / "
              f"{row['region_abs_error_p90']:.2f} | {wall:.1f} ({cpu:.1f}) | "
              f"{'yes' if row['deterministic'] else 'NO'} | {row['load']} |", flush=True)
    return rows


def syn_settings(text: str) -> SyNSettings:
    """``metric/it1,it2,it3[/grad_step/flow_sigma/total_sigma]`` as SyN settings."""
    metric, its, *numbers = text.split("/")
    return SyNSettings(metric, tuple(int(i) for i in its.split(",")), *(float(v) for v in numbers))


def alignment_settings(text: str) -> AlignmentSettings:
    """``rigid_it1,it2,it3/affine_it1,it2,it3/sampling_rate`` as alignment settings."""
    rigid, affine, rate = text.split("/")
    return AlignmentSettings(tuple(int(i) for i in rigid.split(",")),  # type: ignore[arg-type]
                             tuple(int(i) for i in affine.split(",")), float(rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "calibrate", "measure", "all"])
    parser.add_argument("--grid", default="2mm", help="atlas grid (default 2mm)")
    parser.add_argument("--repeats", type=int, default=1, help="speed: scans per case")
    parser.add_argument("--syn", default=None, type=syn_settings,
                        help="measure: SyN settings "
                             "metric/it1,it2,it3/grad_step/flow_sigma/total_sigma")
    parser.add_argument("--labels-syn", default=LABEL_PROPAGATION, type=syn_settings,
                        help="speed: label propagation's SyN settings (as --syn)")
    parser.add_argument("--align", default=ALIGNMENT, type=alignment_settings,
                        help="speed: affine schedule rigid_it1,it2,it3/affine_it1,it2,it3/"
                             "sampling_rate")
    parser.add_argument("--cases", default="", help="measure: only cases whose name contains this")
    parser.add_argument("--no-bias-correction", action="store_true",
                        help="speed: align without N4 bias-field correction")
    parser.add_argument("--mask", action="store_true",
                        help="speed: align with the subject's true brain mask (as --mask gives it)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    atlas = load_atlas(grid=args.grid)
    print(f"{platform.node()} {os.cpu_count()} CPUs, atlas {atlas.id} {args.grid}, {load()}")
    results: dict = {}
    if args.what in ("speed", "all"):
        print("\n| scan | align s (CPU s) | labels s (CPU s) | back s | total s | affine error "
              "mean / max mm | mean Dice atlas → propagated (hippocampus) | similarity | "
              "intensity error vs bias-free | labels deterministic | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"alignment {args.align}, label propagation {args.labels_syn}")
        results["speed"] = bench_speed(atlas, args.repeats, not args.no_bias_correction, args.mask,
                                       args.align, args.labels_syn)
    if args.what in ("calibrate", "all"):
        print("\n| kind | image | similarity | align s | load |\n|---|---|---|---|---|")
        results["calibrate"] = bench_calibrate(atlas)
    if args.what in ("measure", "all"):
        settings = args.syn or MEASUREMENT
        print(f"\nsettings: {settings}")
        names = " | ".join(f"{g} true / measured %"
                           for g in ["left hippocampus", *atlas.key_groups])
        print(f"\n| case | {names} | all regions |error| mean / p90 (pp) | s per pair (CPU s) | "
              "deterministic | load |")
        print("|---" * (len(atlas.key_groups) + 6) + "|")
        results["measure"] = bench_measure(atlas, settings, args.cases)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
