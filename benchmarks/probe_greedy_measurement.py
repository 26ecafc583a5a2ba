"""Would Greedy (PICSL's fast deformable registration) do the regional measurement's job?

The regional measurement (``registration.morphometry``) registers a baseline to another image by
ANTs SyN and integrates the map's Jacobian over each region; at 2 mm it costs more than sampling
(issue 17, item 3). This probe runs the same cases as ``bench_registration.py measure`` with
Greedy in place of SyN, on the same crop, and prints the same columns, so the two can be put
side by side::

    pip install picsl_greedy==1.4.0.3       # not a dependency of the package
    OMP_NUM_THREADS=1 python benchmarks/probe_greedy_measurement.py "-m SSD -n 40x20x10 -e 0.5"
    OMP_NUM_THREADS=1 python benchmarks/probe_greedy_measurement.py "-m WNCC 2x2x2 -n 40x20x10" \\
        --presmooth 1

The argument is Greedy's own option string for the deformable stage (metric, iterations per
level, step ``-e``, smoothing ``-s``); ``--presmooth S`` smooths both images by a Gaussian of
S voxels first. The Jacobian determinant is taken of Greedy's displacement field (fixed =
baseline, so it maps baseline points to the other image's, as the SyN measurement's) by central
differences in world coordinates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_registration import MIN_REGION_VOXELS, load, measurement_cases  # noqa: E402

from mambacontrol.atlas import load_atlas  # noqa: E402
from mambacontrol.registration._ants import RAS_TO_LPS  # noqa: E402
from mambacontrol.registration.deformable import crop_box, cropped_affine  # noqa: E402

try:
    import SimpleITK as sitk
    from picsl_greedy import Greedy3D
except ImportError:  # pragma: no cover - an optional probe
    sys.exit("probe_greedy_measurement: needs picsl_greedy (pip install picsl_greedy==1.4.0.3)")


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image (LPS world) of an (X, Y, Z) array with a RAS voxel-to-world affine."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).T))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    return image


def jacobian_determinant(warp: sitk.Image, affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z) det(I + ∂u/∂x) of a displacement field u (LPS mm) on a grid with RAS
    ``affine``."""
    u = sitk.GetArrayFromImage(warp).transpose(2, 1, 0, 3).astype(np.float64)  # (X, Y, Z, 3)
    by_index = np.stack([np.stack(np.gradient(u[..., c]), -1) for c in range(3)], -2)
    index_per_mm = np.linalg.inv((RAS_TO_LPS @ affine)[:3, :3])
    return np.linalg.det(np.eye(3) + by_index @ index_per_mm)


def greedy_jacobian(baseline: np.ndarray, other: np.ndarray, labels: np.ndarray,
                    affine: np.ndarray, options: str, presmooth: float) -> np.ndarray:
    """The Jacobian of Greedy's baseline → other map on the measurement's crop, 1 outside."""
    if presmooth:
        baseline, other = gaussian_filter(baseline, presmooth), gaussian_filter(other, presmooth)
    box = crop_box((labels > 0) | (baseline != 0))
    crop = cropped_affine(affine, box)
    greedy = Greedy3D()
    greedy.execute(f"-d 3 -threads 1 -V 0 -i fixed moving {options} -o warp",
                   fixed=to_sitk(baseline[box], crop), moving=to_sitk(other[box], crop), warp=None)
    out = np.ones(labels.shape, np.float64)
    out[box] = jacobian_determinant(greedy["warp"], crop)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("options", help="Greedy's deformable options, e.g. '-m SSD -n 40x20x10'")
    parser.add_argument("--presmooth", type=float, default=0.0,
                        help="Gaussian sigma (voxels) applied to both images first (default 0)")
    parser.add_argument("--cases", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    atlas = load_atlas(grid="2mm")
    groups = {"left hippocampus": atlas.key_groups["hippocampus"][:1], **atlas.key_groups}
    regions = [i for i in atlas.label_ids if (atlas.labels == i).sum() >= MIN_REGION_VOXELS]
    print(f"greedy {args.options}, presmooth {args.presmooth} voxels, {load()}")
    for name, (baseline, other, truth) in measurement_cases(atlas).items():
        if args.cases not in name or name == "identical":
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        jac = greedy_jacobian(baseline, other, atlas.labels, atlas.grid.affine, args.options,
                              args.presmooth)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        errors = np.abs([100 * (jac[atlas.labels == i].mean() - truth[atlas.labels == i].mean())
                         for i in regions])
        cells = []
        for ids in groups.values():
            region = np.isin(atlas.labels, ids)
            cells.append(f"{100 * (truth[region].mean() - 1):+.2f} / "
                         f"{100 * (jac[region].mean() - 1):+.2f}")
        print(f"| {name} | {' | '.join(cells)} | {errors.mean():.2f} / "
              f"{np.percentile(errors, 90):.2f} | {wall:.1f} ({cpu:.1f}) | {load()} |", flush=True)


if __name__ == "__main__":
    main()
