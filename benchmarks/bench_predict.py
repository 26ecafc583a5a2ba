"""Wall time of ``mambacontrol predict`` on one native scan, split into phases, and peak memory.

    python benchmarks/bench_predict.py --config synthetic-2mm --samples 4 --steps 25
    python benchmarks/bench_predict.py --model runs/demo/model --samples 4 --steps 20
    python benchmarks/bench_predict.py --config brain-1p5mm --samples 10 --steps 25  # BrLP's
    python benchmarks/bench_predict.py --config synthetic-2mm --years 1 2 4  # three horizons
    python benchmarks/bench_predict.py --config brain-1p5mm --samples 10 --device cuda

The scan is the atlas template as a 1 mm LPS scan with bias field and noise (a stand-in for a
scan straight from a pipeline), so the timing includes registration to the atlas and label
propagation. ``--config`` builds that config's architecture with random weights (speed does not
depend on training); ``--model`` times a trained model. Runs in a subprocess so that the peak
resident memory is the prediction's own. With ``--device cuda`` the networks run on the GPU
(registration and measurement stay on the CPU) and the GPU's allocator peak is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from devices import describe, device_arg, peak_gb, reset_peak

from mambacontrol.atlas import load_atlas
from mambacontrol.graph import AnatomyGraph, GraphEncoder, TrajectoryHead
from mambacontrol.io import save_nifti
from mambacontrol.pipeline.progression import ProgressionPipeline, SamplingDefaults
from mambacontrol.pipeline.scan_prediction import PredictRequest, PredictSettings, predict_scan
from mambacontrol.testing.standins import lps_grid, standin_scan
from mambacontrol.training.config import load_config
from mambacontrol.training.configs import bundled_config
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.stage_autoencoder import build_autoencoder
from mambacontrol.training.stage_diffusion import build_controlnet, build_unet, noise_schedule


def untrained_pipeline(config: str, out: Path) -> Path:
    """Save a pipeline with ``config``'s architecture and random weights into ``out``."""
    torch.manual_seed(0)
    cfg = load_config(RunConfig, bundled_config(config))
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    g = cfg.graph.model
    graph = AnatomyGraph.from_atlas(atlas, g.grouping, g.homologue_edges)
    enc = GraphEncoder.from_graph(graph, embed_dim=g.embed_dim, num_layers=g.num_layers,
                                  num_tokens=g.num_tokens)
    head = TrajectoryHead(embed_dim=g.embed_dim, num_nodes=graph.num_nodes,
                          graph=graph.identity.to_dict())
    ae = build_autoencoder(cfg)
    unet = build_unet(cfg, ae.num_latent_channels, g.embed_dim)
    cn = build_controlnet(cfg, unet, g.embed_dim)
    s = cfg.sampling
    pipe = ProgressionPipeline(ae, unet, noise_schedule(cfg), atlas,
                               controlnet=cn, graph_encoder=enc, trajectory_head=head,
                               sampling=SamplingDefaults(s.sampler, s.num_inference_steps,
                                                         s.num_samples, s.decode))
    return pipe.save_pretrained(out)


def run_once(model: str, num_samples: int, num_inference_steps: int, threads: int,
             measure: bool, years: list[float], device: str = "cpu") -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        atlas2 = load_atlas(grid="2mm")
        scan = standin_scan(atlas2, lps_grid(atlas2, spacing=1.0), seed=3)
        path = Path(tmp) / "scan.nii.gz"
        save_nifti(path, scan.data, scan.affine)
        pipe = ProgressionPipeline.from_pretrained(model, device=device)
        reset_peak(device)
        settings = PredictSettings(num_samples=num_samples,
                                   num_inference_steps=num_inference_steps,
                                   measure_volumes=measure)
        summary = predict_scan(pipe, PredictRequest(path, 72.0, "F", "MCI", years),
                               Path(tmp) / "out", settings, model_dir=model)
    return {"timings": summary["timings_s"], "grid": pipe.atlas.grid_name,
            "scan_shape": list(scan.shape), "device": describe(device),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            **({"peak_gpu_gb": peak_gb(device)} if device != "cpu" else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="bundled config whose architecture to time (random weights)")
    src.add_argument("--model", help="trained model folder")
    parser.add_argument("--samples", type=int, default=4, dest="num_samples")
    parser.add_argument("--steps", type=int, default=25, dest="num_inference_steps")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--years", type=float, nargs="+", default=[2.0],
                        help="horizons to predict (default: one, 2 years)")
    parser.add_argument("--no-volumes", action="store_true", help="skip the regional measurement")
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="where the networks run: cpu (default), cuda, cuda:N")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_once(args.model, args.num_samples, args.num_inference_steps,
                                  args.threads, not args.no_volumes, args.years,
                                  args.device)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(untrained_pipeline(args.config, Path(tmp) / "model"))
        cmd = [sys.executable, __file__, "--model", model, "--samples", str(args.num_samples),
               "--steps", str(args.num_inference_steps), "--threads", str(args.threads),
               "--years", *(str(y) for y in args.years), "--device", args.device, "--child"]
        if args.no_volumes:
            cmd.append("--no-volumes")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    t = r["timings"]
    print(f"{args.config or args.model}: grid {r['grid']}, scan {r['scan_shape']} at 1 mm, "
          f"M={args.num_samples}, {args.num_inference_steps} steps, "
          f"{len(args.years)} horizon(s), {args.threads} thread(s), "
          f"{platform.machine()}, networks on {r['device']}")
    print("| phase | seconds |")
    print("| --- | ---: |")
    for k in ("registration", "encoding", "sampling", "decoding", "measurement", "back_mapping",
              "total"):
        if k in t:
            print(f"| {k} | {t[k]:.1f} |")
    if "peak_gpu_gb" in r:
        print(f"peak GPU memory {r['peak_gpu_gb']:.2f} GB")
    print(f"peak RSS {r['peak_rss_gb']:.2f} GB; load average after the run "
          "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
