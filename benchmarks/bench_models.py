"""Time and peak memory of each model component's forward + backward at a config's sizes.

    python benchmarks/bench_models.py --config demo --threads 2
    python benchmarks/bench_models.py --config synthetic-2mm --threads 2
    python benchmarks/bench_models.py --config brain-1p5mm --device cuda
    python benchmarks/bench_models.py --config synthetic-2mm --component controlnet \
        --override "controlnet.model.mamba_directions=[x+, x-]"

Each component runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own:
the autoencoder on one training patch batch, the UNet and the ControlNet (with the frozen UNet
behind it, as in training) on one training batch of latents. Prints a markdown table. With
``--device cuda`` the step runs on the GPU and the peak is the GPU allocator's. ``--override``
changes the config as ``mambacontrol train --override`` does (a variant's price before training
it); ``--component`` (repeatable) times only the components named.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import torch
from devices import describe, device_arg, peak_gb, reset_peak, synchronize

from mambacontrol.atlas import load_atlas
from mambacontrol.pipeline.denoiser import ConditionedDenoiser
from mambacontrol.training.config import load_config
from mambacontrol.training.configs import bundled_config
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.stage_autoencoder import build_autoencoder
from mambacontrol.training.stage_diffusion import build_controlnet, build_unet

COMPONENTS = ("autoencoder", "unet", "controlnet")


def measure(config: str, component: str, threads: int, repeats: int,
            device: str = "cpu", overrides: Sequence[str] = ()) -> dict:
    """Forward + backward of one component, in this process, on ``device``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(RunConfig, bundled_config(config), overrides=overrides)
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    ae = build_autoencoder(cfg).to(device)
    graph_dim = cfg.graph.model.embed_dim
    latent = [s // ae.downsample_factor for s in atlas.grid.shape]
    zc = ae.num_latent_channels  # the diffusion's channels (folded ones when latent_patch > 1)
    if component == "autoencoder":
        t = cfg.autoencoder.train
        x = torch.rand(t.batch_size, 1,
                       *[min(p, s) for p, s in zip(t.patch_size, atlas.grid.shape)],
                       device=device)
        params = ae.parameters()

        def step():
            rec, mu, sigma = ae(x)
            return (rec - x).abs().mean() + 1e-6 * mu.square().mean()
        batch = t.batch_size
    else:
        unet = build_unet(cfg, zc, graph_dim).to(device)
        b = (cfg.unet.train if component == "unet" else cfg.controlnet.train).batch_size
        z = torch.randn(b, zc, *latent, device=device)
        cov = torch.randn(b, 6, device=device)
        tok = torch.randn(b, cfg.graph.model.num_tokens, graph_dim, device=device)
        ts = torch.randint(0, 1000, (b,), device=device)
        years = torch.rand(b, device=device) * 5
        graph_map = torch.randn(b, graph_dim, *latent, device=device)
        batch = b
        if component == "unet":
            params = unet.parameters()
            denoiser = ConditionedDenoiser(unet)
        else:
            cn = build_controlnet(cfg, unet, graph_dim).to(device)
            unet.requires_grad_(False)
            params = cn.parameters()
            denoiser = ConditionedDenoiser(unet, cn, graph_hint=True)

        def step():  # as a training step: the batch's conditioning, then one denoising step
            conditioning = denoiser.condition(z, cov, years, tok, graph_map)
            return denoiser(z, ts, conditioning).square().mean()
    params = list(params)
    n_params = sum(p.numel() for p in params)
    step().backward()  # warm-up
    times = []
    reset_peak(device)
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        step().backward()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"component": component, "params_m": n_params / 1e6, "batch": batch,
            "step_s": min(times), "device": describe(device),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            **({"peak_gpu_gb": peak_gb(device)} if device != "cpu" else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="cpu (default), cuda, cuda:N")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. 'controlnet.model.mamba_directions=[x+, x-]'")
    parser.add_argument("--component", action="append", choices=COMPONENTS,
                        help="time only this component (repeatable; default: all)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    components = args.component or list(COMPONENTS)
    if args.in_process:  # one component, in this process: the parent reads the JSON line
        print(json.dumps(measure(args.config, components[0], args.threads, args.repeats,
                                 args.device, args.override)))
        return 0
    rows = []
    for comp in components:
        overrides = [arg for item in args.override for arg in ("--override", item)]
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--threads",
                              str(args.threads), "--repeats", str(args.repeats),
                              "--device", args.device, "--component", comp, "--in-process",
                              *overrides], capture_output=True, text=True)
        if out.returncode != 0:
            why = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
            sys.exit(f"bench_models: timing {comp} failed: {why}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gpu = args.device != "cpu"
    print(f"config {args.config} {' '.join(args.override)}, {args.threads} thread(s), "
          f"{platform.machine()}, torch {torch.__version__}, on {rows[0]['device']}")
    print(f"| component | parameters | batch | forward+backward | peak {'GPU' if gpu else 'RSS'} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak = r["peak_gpu_gb"] if gpu else r["peak_rss_gb"]
        print(f"| {r['component']} | {r['params_m']:.2f} M | {r['batch']} | {r['step_s']:.3f} s | "
              f"{peak:.2f} GB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
