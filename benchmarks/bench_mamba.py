"""Speed and memory of the selective scan and of MambaBlock3d, printed as markdown tables.

Every measurement runs in a fresh process (so its peak memory is its own): wall-clock time of
forward + backward, the best of ``--repeats`` after one warm-up, and the peak resident memory
above what the process held before its first forward pass.

    # the scan: ours (backend "torch") vs "sequential" vs mambapy's parallel scan
    .venv/bin/pip install --target /tmp/mambapy-bench mambapy --no-deps   # never a dependency
    .venv/bin/python benchmarks/bench_mamba.py scan --mambapy /tmp/mambapy-bench

    # MambaBlock3d vs self-attention blocks of the same width (fused and explicit attention)
    .venv/bin/python benchmarks/bench_mamba.py block --grids 8 16 24 32 --channels 64
    .venv/bin/python benchmarks/bench_mamba.py block --grids 12x14x12 24x28x24 --channels 32

    # on a GPU: mamba-ssm's CUDA kernel (backend "cuda") against our torch backend
    python benchmarks/bench_mamba.py scan --device cuda --lengths 4096 65536 262144
    python benchmarks/bench_mamba.py block --device cuda --grids 24x28x24 48x56x48

On a GPU the times are taken between synchronisations and the peak is the GPU allocator's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import resource
import sys
import time

import torch
from devices import describe, device_arg, peak_gb, reset_peak, synchronize
from torch import nn

from mambacontrol.nn import MambaBlock3d
from mambacontrol.ops import selective_scan


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def timed(step, repeats: int, device: str = "cpu") -> tuple[float, float]:
    """(best seconds, peak MB) of ``step()`` run 1 + ``repeats`` times: on the CPU the peak
    above the starting RSS, on a GPU the allocator's peak over the repeats."""
    before = peak_rss_mb()
    step()
    reset_peak(device)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    if device != "cpu":
        return best, peak_gb(device) * 1e3
    return best, peak_rss_mb() - before


# ----------------------------------------------------------------------------- scan


def scan_inputs(batch, dim, dstate, length, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return {k: v.to(device) for k, v in {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.nn.functional.softplus(torch.randn(batch, dim, length, generator=g) - 3),
        "A": -torch.exp(torch.randn(dim, dstate, generator=g) * 0.5),
        "B": torch.randn(batch, dstate, length, generator=g),
        "C": torch.randn(batch, dstate, length, generator=g),
        "D": torch.randn(dim, generator=g),
    }.items()}


def mambapy_scan(mambapy_path):
    """mambapy's own selective scan (``MambaBlock.selective_scan``, which calls its ``pscan``) on
    our (B, D, L) layout; it works in (B, L, D), so the inputs are transposed first."""
    sys.path.insert(0, mambapy_path)
    from mambapy.mamba import MambaBlock  # lazy: never a dependency, found on mambapy_path

    def run(u, delta, A, B, C, D):
        y = MambaBlock.selective_scan(None, u.mT, delta.mT, A, B.mT, C.mT, D)
        return y.mT

    return run


def measure_scan(method, batch, dim, dstate, length, repeats, threads, mambapy_path,
                 device="cpu"):
    torch.set_num_threads(threads)
    inputs = {k: v.requires_grad_()
              for k, v in scan_inputs(batch, dim, dstate, length, device=device).items()}
    if method == "mambapy":
        run = mambapy_scan(mambapy_path)
    else:
        def run(u, delta, A, B, C, D):
            return selective_scan(u, delta, A, B, C, D=D, backend=method)

    weight = torch.randn(batch, dim, length, device=device)

    def step():
        y = run(**inputs)
        torch.autograd.grad((y * weight).sum(), list(inputs.values()))

    return timed(step, repeats, device)


# ---------------------------------------------------------------------------- block


def attention_block(channels, fused, head_dim=32):
    """x + MultiHeadAttention(LayerNorm(x)) over the voxels: with PyTorch's fused attention
    (``scaled_dot_product_attention``, memory linear in the tokens) or written out as
    softmax(Q K^T / sqrt(d)) V (memory quadratic, as MONAI's ``SABlock`` by default)."""
    class AttentionBlock3d(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = max(1, channels // head_dim)
            self.norm = nn.LayerNorm(channels)
            self.qkv = nn.Linear(channels, 3 * channels)
            self.out = nn.Linear(channels, channels)

        def forward(self, x):
            tokens = self.norm(x.flatten(2).mT)
            q, k, v = self.qkv(tokens).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
            if fused:
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            else:
                weights = torch.softmax(q @ k.mT * q.shape[-1] ** -0.5, dim=-1)
                y = weights @ v
            y = self.out(y.transpose(1, 2).flatten(2))
            return x + y.mT.reshape(x.shape)

    return AttentionBlock3d()


def measure_block(method, channels, grid, batch, repeats, threads, directions, device="cpu"):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if method.startswith("mamba"):
        backend = "cuda" if method == "mamba, CUDA kernel" else "torch"
        block = MambaBlock3d(channels, directions=directions, backend=backend)
    else:
        block = attention_block(channels, fused=method == "fused attention")
    block = block.to(device)
    x = torch.randn(batch, channels, *grid, device=device, requires_grad=True)

    def step():
        block.zero_grad(set_to_none=True)
        block(x).square().mean().backward()

    return timed(step, repeats, device)


# ------------------------------------------------------------------------------ main


def in_fresh_process(fn, *args):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def header(args) -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads {args.threads}, "
            f"on {describe(args.device)}; load average before: {load}")


def run_scan(args):
    if args.device != "cpu":  # mamba-ssm's kernel against ours; the others are CPU references
        methods = ["cuda", "torch"]
    else:
        methods = ["torch", "sequential"] + (["mambapy"] if args.mambapy else [])
    other = "cuda" if args.device != "cpu" else "mambapy"
    print(header(args))
    print(f"\nselective scan forward + backward, B={args.batch}, D={args.dim}, N={args.dstate}, "
          f"best of {args.repeats}: seconds (peak MB)\n")
    print("| L | " + " | ".join(methods) + f" | {other} / ours |")
    print("|---" * (len(methods) + 2) + "|")
    times = {}
    for length in args.lengths:
        cells = []
        for method in methods:
            if method == "sequential" and length > args.sequential_max:
                cells.append("not run")
                continue
            sec, mb = in_fresh_process(measure_scan, method, args.batch, args.dim, args.dstate,
                                       length, args.repeats, args.threads, args.mambapy,
                                       args.device)
            times[method, length] = sec
            cells.append(f"{sec:.4f} ({mb:.0f})")
        ratio = (f"{times[other, length] / times['torch', length]:.2f}x"
                 if (other, length) in times else "")
        print(f"| {length} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
    lengths = sorted(args.lengths)
    for a, b in zip(lengths, lengths[1:]):
        print(f"\nours: time({b}) / time({a}) = {times['torch', b] / times['torch', a]:.2f}")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def grid_size(text: str) -> tuple[int, int, int]:
    """``"16"`` -> (16, 16, 16); ``"12x14x12"`` -> (12, 14, 12)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a grid: give N or XxYxZ")
    return tuple(parts)


def grid_name(grid: tuple[int, int, int]) -> str:
    return f"{grid[0]}³" if len(set(grid)) == 1 else "×".join(map(str, grid))


def run_block(args):
    directions = tuple(args.directions)
    methods = ("fused attention", "explicit attention", "mamba")
    if args.device != "cpu":
        methods += ("mamba, CUDA kernel",)
    print(header(args))
    print(f"\nblock forward + backward, B={args.batch}, C={args.channels}, Mamba directions "
          f"{','.join(directions)}, best of {args.repeats}: seconds (peak MB)\n")
    kernel = " | MambaBlock3d, CUDA kernel" if args.device != "cpu" else ""
    mamba = methods[-1]  # on a GPU the kernel: what a model there runs
    print("| grid | tokens | self-attention, fused | self-attention, explicit | MambaBlock3d"
          f"{kernel} | fused attention / {mamba} |")
    print("|---" * (len(methods) + 3) + "|")
    times = {}
    for grid in args.grids:
        tokens = grid[0] * grid[1] * grid[2]
        cells = []
        for method in methods:
            if method == "explicit attention" and tokens > args.explicit_max_tokens:
                cells.append("not run")
                continue
            sec, mb = in_fresh_process(measure_block, method, args.channels, grid, args.batch,
                                       args.repeats, args.threads, directions, args.device)
            times[method, tokens] = sec
            cells.append(f"{sec:.4f} ({mb:.0f})")
        ratio = times["fused attention", tokens] / times[mamba, tokens]
        print(f"| {grid_name(grid)} | {tokens} | " + " | ".join(cells) + f" | {ratio:.2f} |",
              flush=True)
    counts = sorted({g[0] * g[1] * g[2] for g in args.grids})
    for a, b in zip(counts, counts[1:]):
        print(f"\n{mamba}: time({b} tokens) / time({a} tokens) = "
              f"{times[mamba, b] / times[mamba, a]:.2f} for {b / a:.2f}x the tokens")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    scan = sub.add_parser("scan", help="selective scan: ours vs sequential vs mambapy")
    scan.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    scan.add_argument("--batch", type=int, default=2)
    scan.add_argument("--dim", type=int, default=128)
    scan.add_argument("--dstate", type=int, default=16)
    scan.add_argument("--mambapy", metavar="PATH",
                      help="folder holding the mambapy package (pip install --target PATH mambapy)")
    scan.add_argument("--sequential-max", type=int, default=16384,
                      help="skip the sequential backend above this length")
    block = sub.add_parser("block", help="MambaBlock3d vs self-attention blocks")
    block.add_argument("--grids", type=grid_size, nargs="+",
                       default=[grid_size(n) for n in ("8", "16", "24", "32")],
                       help="grids as N (a cube) or XxYxZ")
    block.add_argument("--channels", type=int, default=64)
    block.add_argument("--batch", type=int, default=1)
    block.add_argument("--directions", nargs="+", default=["x+", "x-", "y+", "y-", "z+", "z-"])
    block.add_argument("--explicit-max-tokens", type=int, default=8192,
                       help="skip the explicit (quadratic-memory) attention above this many tokens")
    for p in (scan, block):
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--threads", type=int, default=os.cpu_count())
        p.add_argument("--device", type=device_arg, default="cpu",
                       help="cpu (default), cuda, cuda:N")
    args = parser.parse_args(argv)
    (run_scan if args.what == "scan" else run_block)(args)


if __name__ == "__main__":
    main()
