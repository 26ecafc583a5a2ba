"""Does a trained ControlNet read the regional change map of its hint?

Predicts the first visit of a few test subjects with the trajectory head's change map multiplied
by each ``--scales`` factor (0 removes it), everything else equal (same seed, same model), and
prints how much the predicted image moves against the predicted change itself::

    python benchmarks/probe_change_hint.py --model runs/chg/pc50-cal/model \\
        --manifest /tmp/demo19/cohort/manifest.csv --subjects 3 --years 4

A ControlNet that uses the map moves the prediction by a sizeable part of the predicted change
when the map is removed; one that ignores it, by nearly nothing. ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import numpy as np

from mambacontrol.data import Manifest
from mambacontrol.errors import MambaControlError
from mambacontrol.pipeline import progression
from mambacontrol.pipeline.prepare import load_on_grid
from mambacontrol.pipeline.progression import ProgressionPipeline


def probe(pipe: ProgressionPipeline, manifest: Manifest, subjects: int, years: float,
          scales: list[float], seed: int = 0) -> list[dict]:
    """Per subject and scale: mean |predicted change| over the brain and the hippocampus, and
    mean |prediction − prediction at scale 1| over the brain."""
    if not pipe.change_hint:
        raise MambaControlError("this model's ControlNet has no change map in its hint")
    painted = progression.change_map
    rows = []
    baselines = [visits[0] for visits in manifest.select("test").by_subject().values()]
    for visit in baselines[:subjects]:
        scan = load_on_grid(visit.image_path, visit.segm_path, manifest.mask_path(visit),
                            pipe.atlas)
        brain = scan.image != 0
        hippocampus = np.isin(scan.labels, pipe.atlas.key_groups["hippocampus"])
        images = {}
        for k in scales:
            with mock.patch.object(progression, "change_map",
                                   lambda ratio, assignment, k=k: painted(ratio * k, assignment)):
                images[k] = pipe.predict(scan.image, scan.labels, visit.age, visit.sex,
                                         visit.diagnosis, years, seed=seed)[0].image
        reference = images.get(1.0, images[scales[0]])
        for k, image in images.items():
            change = image - scan.image
            rows.append({"visit": visit.image_uid, "diagnosis": visit.diagnosis, "scale": k,
                         "change_brain": float(np.abs(change[brain]).mean()),
                         "change_hippocampus": float(np.abs(change[hippocampus]).mean()),
                         "moved_vs_scale_1": float(np.abs(image - reference)[brain].mean())})
            r = rows[-1]
            print(f"| {r['visit']} | {r['diagnosis']} | {k:g} | {r['change_brain']:.5f} | "
                  f"{r['change_hippocampus']:.5f} | {r['moved_vs_scale_1']:.5f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model whose ControlNet has a change map")
    parser.add_argument("--manifest", required=True, help="a manifest with a test split")
    parser.add_argument("--subjects", type=int, default=3, help="test subjects (default 3)")
    parser.add_argument("--years", type=float, default=4.0, help="horizon (default 4)")
    parser.add_argument("--scales", default="0,1,3", help="change map factors (default 0,1,3)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    pipe = ProgressionPipeline.from_pretrained(args.model)
    print("| visit | diagnosis | map × | mean \\|change\\| brain | hippocampus | "
          "mean \\|prediction − prediction at × 1\\| |\n|---|---|---:|---:|---:|---:|")
    rows = probe(pipe, Manifest.from_csv(args.manifest), args.subjects, args.years,
                 [float(s) for s in args.scales.split(",")])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
