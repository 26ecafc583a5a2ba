"""Our prediction against BrLP's networks at BrLP's own settings, back to back on this machine.

    python benchmarks/bench_vs_brlp.py --json runs/vs_brlp.json
    python benchmarks/bench_vs_brlp.py --model runs/x/model --samples 10 --steps 25
    python benchmarks/bench_vs_brlp.py --device cuda --config brain-1p5mm --json runs/gpu.json

BrLP predicts one scan at 1.5 mm (120×144×120) with M = 10 samples and 25 DDIM steps. Its side is
``../shared/anchors/brlp_reference.py --mode full``: BrLP's autoencoder, UNet and ControlNet
rebuilt in MONAI with random weights (encode, 25 steps on 10 latents, average, decode; no
preprocessing, no volumes). Ours is ``predict_scan``, what ``mambacontrol predict`` runs, with
``brain-1p5mm-cpu.yaml``'s architecture (random weights; speed does not depend on training) or a
trained ``--model``, on a 1 mm stand-in scan: registration to the atlas, label propagation,
encoding, sampling, decoding, the sub-voxel regional volumes and the mapping back to the scan's
grid all included. Each side runs in its own process, one after the other, so that each peak
resident memory is its own; nothing else should run (the figures are wall times).

``--device cuda`` runs both sides' networks on the GPU (ours: registration and measurement stay
on the CPU; BrLP's: the reference script's own networks and loop, moved to the GPU). Both start
cold, as one prediction does: no warm-up pass. The peaks are then the GPU allocator's.

``--json PATH`` writes ``{"ours_s", "brlp_s", "ours_peak_gb", "brlp_peak_gb"}`` and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from devices import describe, device_arg, peak_gb, reset_peak, synchronize

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parents[1] / "shared" / "anchors" / "brlp_reference.py"
TARGET_SPEEDUP, TARGET_PEAK_GB = 5.0, 4.0


def run_ours(model: str | None, config: str, samples: int, steps: int, sampler: str | None,
             threads: int, tmp: Path, device: str = "cpu") -> dict:
    """Our prediction in a child process (``bench_predict.py``): timings and peak RSS."""
    from bench_predict import untrained_pipeline  # the benchmarks folder: run as a script

    model = model or str(untrained_pipeline(config, tmp / "model"))
    if sampler is not None:
        model = str(with_sampler(model, sampler, tmp / "resampled"))
    cmd = [sys.executable, str(HERE / "bench_predict.py"), "--model", model, "--samples",
           str(samples), "--steps", str(steps), "--threads", str(threads), "--device", device,
           "--child"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def with_sampler(model: str, sampler: str, out: Path) -> Path:
    """A copy of ``model`` whose saved default sampler is ``sampler``."""
    from dataclasses import replace

    from mambacontrol.pipeline.progression import ProgressionPipeline

    pipe = ProgressionPipeline.from_pretrained(model)
    pipe.sampling = replace(pipe.sampling, sampler=sampler)
    return pipe.save_pretrained(out)


def run_brlp(reference: Path, samples: int, steps: int, threads: int,
             device: str = "cpu") -> dict:
    """The reference script in a child process: its JSON and the child's peak memory."""
    cmd = [sys.executable, __file__, "--brlp-child", str(reference), "--samples", str(samples),
           "--steps", str(steps), "--threads", str(threads), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def brlp_child(reference: Path, samples: int, steps: int, threads: int, device: str) -> None:
    """Run the reference script here, then print one JSON line: its result and our peak RSS
    (on a GPU: its networks and loop there, and the GPU's peak)."""
    if device != "cpu":
        print(json.dumps(brlp_on_gpu(reference, samples, steps, threads, device)))
        return
    sys.argv = [str(reference), "--mode", "full", "--m", str(samples), "--steps", str(steps),
                "--threads", str(threads)]
    captured = Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        with open(captured, "w") as fh:
            saved, sys.stdout = sys.stdout, fh
            try:
                runpy.run_path(str(reference), run_name="__main__")
            finally:
                sys.stdout = saved
        result = json.loads(captured.read_text())
    finally:
        captured.unlink()
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(result))


def brlp_on_gpu(reference: Path, samples: int, steps: int, threads: int, device: str) -> dict:
    """The reference's ``--mode full`` prediction with its networks on ``device``: encode,
    ``steps`` DDIM steps on ``samples`` latents as one batch, average, decode."""
    ref = runpy.run_path(str(reference), run_name="brlp_reference")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ae, unet, cnet = (m.to(device) for m in ref["build"]())
    sched = ref["DDIMScheduler"](num_train_timesteps=1000, schedule="scaled_linear_beta",
                                 beta_start=0.0015, beta_end=0.0205, clip_sample=False)
    sched.set_timesteps(num_inference_steps=steps)
    x = torch.rand(1, 1, *ref["INPUT_SHAPE_AE"]).to(device)
    reset_peak(device)
    with torch.no_grad():
        synchronize(device)
        t0 = time.perf_counter()
        z0 = ref["encode"](ae, x)
        synchronize(device)
        t_enc = time.perf_counter() - t0
        z, _, c, cond = (v.to(device) for v in ref["inputs"](samples, z0.cpu()))
        step_ts = []
        for tt in sched.timesteps:
            s0 = time.perf_counter()
            eps = ref["step"](unet, cnet, z, torch.tensor([tt]).repeat(samples).to(device), c,
                              cond)
            z, _ = sched.step(eps, tt, z)
            synchronize(device)
            step_ts.append(time.perf_counter() - s0)
        zavg = (z.sum(0) / samples)[:, :15, 1:19, :15].unsqueeze(0)
        d0 = time.perf_counter()
        ae.decode_stage_2_outputs(zavg)
        synchronize(device)
        t_dec = time.perf_counter() - d0
    return {"m": samples, "steps": steps, "encode_s": t_enc, "step_s": step_ts,
            "decode_s": t_dec, "total_s": time.perf_counter() - t0,
            "peak_gpu_gb": peak_gb(device), "device": describe(device),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def summary(ours: dict, brlp: dict, args: argparse.Namespace) -> dict:
    t = ours["timings"]
    return {"ours_s": t["total"], "brlp_s": brlp["total_s"],
            # on a GPU the peaks compared are the GPU's; the processes' RSS stay in the details
            "ours_peak_gb": ours.get("peak_gpu_gb", ours["peak_rss_gb"]),
            "brlp_peak_gb": brlp.get("peak_gpu_gb", brlp["peak_rss_gb"]),
            "ours_peak_rss_gb": ours["peak_rss_gb"], "brlp_peak_rss_gb": brlp["peak_rss_gb"],
            "speedup": brlp["total_s"] / t["total"],
            "settings": {"samples": args.samples, "steps": args.steps, "threads": args.threads,
                         "sampler": args.sampler or "the model's", "device": ours["device"],
                         "ours": args.model or
                         f"{args.config} (random weights)", "grid": ours["grid"],
                         "scan_shape": ours["scan_shape"]},
            "ours_phases_s": t,
            "brlp_phases_s": {"encode": brlp["encode_s"], "sampling": sum(brlp["step_s"]),
                              "decode": brlp["decode_s"]},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "loadavg": [brlp.get("loadavg_start"), brlp.get("loadavg_end")]}


def print_table(s: dict) -> None:
    print(f"BrLP's settings: {s['settings']['grid']}, M = {s['settings']['samples']}, "
          f"{s['settings']['steps']} steps, {s['settings']['threads']} threads, {s['machine']}, "
          f"networks on {s['settings']['device']}")
    peak = "peak GPU memory" if s["settings"]["device"] != "cpu" else "peak RSS"
    print(f"| | seconds | {peak} |")
    print("| --- | ---: | ---: |")
    print(f"| ours ({s['settings']['ours']}) | {s['ours_s']:.1f} | {s['ours_peak_gb']:.2f} GB |")
    print(f"| BrLP networks (reference) | {s['brlp_s']:.1f} | {s['brlp_peak_gb']:.2f} GB |")
    print(f"speed-up {s['speedup']:.1f}× (target ≥ {TARGET_SPEEDUP:g}×), our peak "
          f"{s['ours_peak_gb']:.2f} GB (target ≤ {TARGET_PEAK_GB:g} GB)")
    print("ours by phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["ours_phases_s"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="brain-1p5mm-cpu",
                        help="bundled config whose architecture to time (random weights)")
    parser.add_argument("--model", help="a trained model folder instead")
    parser.add_argument("--samples", type=int, default=10, help="M (BrLP: 10)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (BrLP: 25 DDIM)")
    parser.add_argument("--sampler", choices=("ddim", "dpm-solver"),
                        help="our sampler (default: the model's or config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=Path, default=REFERENCE,
                        help="brlp_reference.py (default: ../shared/anchors/)")
    parser.add_argument("--skip-brlp", type=Path, metavar="JSON",
                        help="reuse the BrLP side of an earlier --json instead of rerunning it")
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="where both sides' networks run: cpu (default), cuda, cuda:N")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--brlp-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.brlp_child:
        brlp_child(args.brlp_child, args.samples, args.steps, args.threads, args.device)
        return 0
    if args.skip_brlp is None and not args.reference.is_file():
        parser.error(f"{args.reference} not found; give --reference PATH to brlp_reference.py")
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(args.model, args.config, args.samples, args.steps, args.sampler,
                        args.threads, Path(tmp), args.device)
    if args.skip_brlp is not None:
        earlier = json.loads(args.skip_brlp.read_text())
        brlp = {"total_s": earlier["brlp_s"], "peak_rss_gb": earlier["brlp_peak_gb"],
                "encode_s": earlier["brlp_phases_s"]["encode"],
                "step_s": [earlier["brlp_phases_s"]["sampling"]],
                "decode_s": earlier["brlp_phases_s"]["decode"]}
    else:
        brlp = run_brlp(args.reference, args.samples, args.steps, args.threads, args.device)
    result = summary(ours, brlp, args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
