"""How much of each key group's measured change survives a blurred change image?

A model whose predicted change is right in place but spatially smoother than the truth is read
smaller by the regional measurement (SyN from the baseline, Jacobian integrated per region). This
probe takes the autoencoder ceiling of every pair of a split (the true later scan through the
model's representation, decoded as a prediction is: ``x_base + D(E(x_later)) − D(E(x_base))``),
blurs its change image by a Gaussian of σ voxels, measures it as ``evaluate`` does, and prints
per key group the ratio of the summed measured change to the summed measured true change::

    python benchmarks/probe_blurred_ceiling.py --manifest runs/demo/cohort/manifest.csv \\
        --model runs/demo/model --sigmas 0,1,2

σ = 0 is the ceiling itself (its ratio is ``evaluate``'s ``autoencoder-ceiling`` change ratio up
to the groups' summation). If one group loses much more of its change to blur than the others,
blur explains that group's shortfall in a model's prediction; if all lose alike, it does not.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from mambacontrol.data import Manifest
from mambacontrol.evaluation.evaluate import GridScans
from mambacontrol.pipeline.progression import ProgressionPipeline


def group_change(base: dict[int, float], other: dict[int, float], labels) -> float:
    """% volume change of the union of ``labels``."""
    b = sum(base[i] for i in labels)
    return 100.0 * (sum(other[i] for i in labels) - b) / b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="a cohort on the model's atlas grid")
    p.add_argument("--model", required=True, help="a trained model folder")
    p.add_argument("--split", default="test")
    p.add_argument("--pairs", choices=("all", "last"), default="all")
    p.add_argument("--sigmas", default="0,1,2", help="Gaussian σ of the blur, in voxels")
    p.add_argument("--seed", type=int, default=0, help="the measurement's registration seed")
    args = p.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]

    pipe = ProgressionPipeline.from_pretrained(args.model)
    manifest = Manifest.from_csv(args.manifest)
    scans = GridScans(manifest, pipe.atlas, seed=args.seed)
    groups = pipe.atlas.key_groups
    true = dict.fromkeys(groups, 0.0)
    blurred = {s: dict.fromkeys(groups, 0.0) for s in sigmas}

    def decoded(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
            return pipe.autoencoder.decode(pipe.autoencoder.encode(x))[0, 0].numpy()

    pairs = manifest.select(args.split).pairs(args.pairs)
    start = time.perf_counter()
    for pair in pairs:
        base, later = scans.load(pair.earlier), scans.load(pair.later)
        base_vols, true_vols = scans.measure(base, later.image)
        change = decoded(later.image) - decoded(base.image)
        inside = base.image != 0
        for g, labels in groups.items():
            true[g] += group_change(base_vols, true_vols, labels)
        for s in sigmas:
            smooth = gaussian_filter(change, s) if s > 0 else change
            image = np.where(inside, base.image + smooth, 0.0).astype(np.float32)
            _, vols = scans.measure(base, image)
            for g, labels in groups.items():
                blurred[s][g] += group_change(base_vols, vols, labels)
    spacing = float(pipe.atlas.spacing)
    print(f"{len(pairs)} {args.split} pairs, {time.perf_counter() - start:.0f} s; measured change "
          "of the blurred ceiling / measured true change, summed over the pairs")
    print("| group | " + " | ".join(f"σ = {s:g} voxel ({s * spacing:g} mm)" for s in sigmas) + " |")
    print("|---|" + "---:|" * len(sigmas))
    for g in groups:
        print(f"| {g} | " + " | ".join(f"{blurred[s][g] / true[g]:.2f}" for s in sigmas) + " |")


if __name__ == "__main__":
    main()
