"""Fingerprint a tiny end-to-end run, to show that a refactor changed no numbers.

Runs, through the CLI and with fixed seeds on one thread: ``synth`` (7 subjects, 4 mm), ``train
all`` (every stage, tiny networks), ``predict`` (one test baseline, two horizons) and ``evaluate``
(the test split, copy and linear baselines). Then it writes a JSON fingerprint: the SHA-256 of every
saved weight file, every stage's final loss, the predicted regional volumes and every figure of
``metrics.json``. Run it before and after a change and compare::

    python benchmarks/same_numbers.py --out /tmp/before
    # ... change the code ...
    python benchmarks/same_numbers.py --out /tmp/after --compare /tmp/before/fingerprint.json

``--compare`` lists every entry that differs and exits 1 when any does. Fingerprints are only
comparable on the same machine and library versions (float reductions differ between CPUs).
About 2 minutes on the 2-core VM.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from safetensors.numpy import load_file

TINY_RUN_YAML = """
seed: 0
data: {grid: 4mm}
engine: {mixed_precision: "no", checkpoint_every: 4, keep_checkpoints: 1, log_every: 2,
         image_every: 0, trackers: []}
autoencoder:
  model: {channels: [8, 8, 8], latent_channels: 2, num_res_blocks: 1, norm_num_groups: 4}
  train: {steps: 6, batch_size: 1, lr: 1.0e-3, warmup_steps: 0, patch_size: [16, 16, 16],
          scale_scans: 2}
graph:
  model: {embed_dim: 8, num_layers: 1, num_tokens: 2}
  train: {steps: 60, batch_size: 4}
unet:
  model: {channels: [8, 16], attention_levels: [false, true], norm_num_groups: 4,
          num_head_channels: 8}
  train: {steps: 6, batch_size: 2, lr: 1.0e-3, warmup_steps: 0}
controlnet:
  model: {mamba_d_state: 4, fourier_modes: [2, 2, 2], hint_width: 8}
  train: {steps: 6, batch_size: 2, lr: 1.0e-3, warmup_steps: 0}
sampling: {num_inference_steps: 3, num_samples: 2}
"""


TIMINGS = ("wall_time_s", "samples_per_s", "seconds")
"""Keys that hold timings, left out of the fingerprint."""


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "mambacontrol.cli.main", "--threads", "1", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _tensor_sha(path: Path) -> str:
    """Digest of a safetensors file's tensors (its metadata's key order is not stable)."""
    digest = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        digest.update(name.encode() + str(array.dtype).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def _flat(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flat(item, f"{prefix}[{i}]", out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def run(out: Path) -> dict:
    """Run the tiny pipeline into ``out`` and return its fingerprint (flat name → value)."""
    out.mkdir(parents=True, exist_ok=False)
    (out / "tiny.yaml").write_text(TINY_RUN_YAML)
    _cli("synth", "--out", str(out / "cohort"), "--subjects", "7", "--seed", "5", "--spacing", "4",
         "--visits", "2-3", "--split", "60/15/25", "--no-figure", "--workers", "1")
    manifest = out / "cohort" / "manifest.csv"
    _cli("train", "all", "--config", str(out / "tiny.yaml"), "--out", str(out / "run"),
         f"data.manifest={manifest}")
    with manifest.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    first = rows[0]
    _cli("predict", first["image_path"] if Path(first["image_path"]).is_absolute()
         else str(manifest.parent / first["image_path"]),
         "--age", first["age"], "--sex", first["sex"], "--diagnosis", first["diagnosis"],
         "--years", "1", "3", "--model", str(out / "run"), "--out", str(out / "predict"),
         "--seed", "3")
    _cli("evaluate", "--manifest", str(manifest), "--model", str(out / "run"),
         "--out", str(out / "evaluation"), "--seed", "2")

    prints: dict = {}
    for weights in sorted((out / "run").rglob("*.safetensors")):
        if "checkpoints" not in weights.parts:
            prints[f"weights:{weights.relative_to(out / 'run')}"] = _tensor_sha(weights)
    for summary in sorted((out / "run" / "stages").glob("*.json")):
        _flat(json.loads(summary.read_text()), f"stage:{summary.stem}", prints)
    for table in sorted((out / "predict").rglob("regions.csv")):
        prints[f"table:{table.relative_to(out / 'predict')}"] = _sha(table)
    for nifti in sorted((out / "predict").rglob("*.nii.gz")):
        prints[f"image:{nifti.relative_to(out / 'predict')}"] = _sha(nifti)
    _flat(json.loads((out / "evaluation" / "metrics.json").read_text()), "metrics", prints)
    for key in [k for k in prints if k.endswith(TIMINGS)]:
        del prints[key]
    return prints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="new folder for the run")
    parser.add_argument("--compare", type=Path, help="an earlier fingerprint.json")
    args = parser.parse_args()
    prints = run(args.out)
    (args.out / "fingerprint.json").write_text(json.dumps(prints, indent=1, sort_keys=True))
    print(f"{len(prints)} entries -> {args.out / 'fingerprint.json'}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [f"{k}: {before.get(k, '<absent>')} -> {prints.get(k, '<absent>')}"
                  for k in sorted(set(before) | set(prints)) if before.get(k) != prints.get(k)]
        print("\n".join(differ) if differ else "identical")
        raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
