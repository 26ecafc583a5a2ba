"""Training throughput (samples/s) and peak memory of every stage of a config.

    python benchmarks/bench_training.py --config demo --manifest runs/demo/cohort/manifest.csv
    python benchmarks/bench_training.py --config synthetic-2mm \\
        --manifest runs/quality/cohort/manifest.csv --steps 20

Each stage runs a few steps (``--steps``; the config's batch sizes and models) in its own
process into a fresh run folder, so the peak resident memory is the stage's own; throughput is
the engine's (optimizer steps × batch / training time, setup excluded). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from mambacontrol.training.configs import bundled_config

STAGES = ("autoencoder", "latents", "graph", "unet", "controlnet")

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(int(sys.argv[5]))
from mambacontrol.training.runner import TrainingRun, resolve_config
cfg = resolve_config(sys.argv[1], json.loads(sys.argv[4]), manifest=sys.argv[2])
[summary] = TrainingRun(cfg, sys.argv[3]).run(sys.argv[6])
print(json.dumps({"summary": summary.to_dict(),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="bundled config name or YAML path")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per trained stage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. 'autoencoder.model.channels=[16, 32]'")
    args = parser.parse_args()
    config = args.config if args.config.endswith(".yaml") else str(bundled_config(args.config))
    overrides = [f"{s}.train.steps={args.steps}"
                 for s in ("autoencoder", "graph", "unet", "controlnet")]
    overrides += ["engine.checkpoint_every=0", "engine.image_every=0", *args.override]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in STAGES:
            out = subprocess.run([sys.executable, "-c", CHILD, config, args.manifest, tmp,
                                  json.dumps(overrides), str(args.threads), stage],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                return out.returncode
            rows.append((stage, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"config {Path(config).stem} {' '.join(args.override)}, {args.steps} steps per stage, "
          f"{args.threads} thread(s), {platform.machine()}")
    print("| stage | steps | wall (s) | samples/s | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for stage, r in rows:
        s = r["summary"]
        print(f"| {stage} | {s['steps']} | {s['wall_time_s']:.1f} | {s['samples_per_s']:.3g} | "
              f"{r['peak_rss_gb']:.2f} GB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
