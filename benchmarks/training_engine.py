"""Measure the training engine's costs: checkpoint write/read time and per-step overhead.

    .venv/bin/python benchmarks/training_engine.py [--params 20e6] [--steps 200]

1. Checkpoint: a model of ``--params`` float32 parameters with its AdamW state (after one step)
   and an EMA, written with ``write_checkpoint`` (safetensors, SHA-256, fsync, rename) and read
   back with ``read_checkpoint`` (size and checksum verified).
2. Overhead: ``--steps`` optimizer steps of a small MLP on random batches, as a bare PyTorch loop
   and through ``Trainer`` (Accelerate, loss reduction and NaN check, EMA, tqdm, TensorBoard
   every 50 steps, one final checkpoint).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from mambacontrol.training.checkpoint import flatten_state, read_checkpoint, write_checkpoint
from mambacontrol.training.engine import Trainer


class RandomBatches:
    """Endless seeded random batches with a resumable state (a counter)."""

    def __init__(self, batch_size: int, width: int):
        self.batch_size, self.width, self.count = batch_size, width, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.count)
            self.count += 1
            yield {"x": torch.randn(self.batch_size, self.width, generator=g)}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def checkpoint_cost(params: int, folder: Path) -> str:
    width = 2048
    layers = max(1, round(params / (width * width)))
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net(torch.randn(2, width)).sum().backward()
    opt.step()
    ema = EMAModel(net.parameters())
    opt_tree, opt_tensors = flatten_state(opt.state_dict(), "optimizer")
    ema_tree, ema_tensors = flatten_state(ema.state_dict(), "ema")
    tensors = {"model.net": net.state_dict(), "optimizer": opt_tensors, "ema.net": ema_tensors}
    total = sum(t.numel() * t.element_size() for group in tensors.values() for t in group.values())
    tic = time.perf_counter()
    path = write_checkpoint(folder, 1, {"optimizer": opt_tree, "ema": ema_tree}, tensors)
    write_s = time.perf_counter() - tic
    tic = time.perf_counter()
    read_checkpoint(path)
    read_s = time.perf_counter() - tic
    n = sum(p.numel() for p in net.parameters())
    return (f"checkpoint of {n / 1e6:.1f} M params "
            f"(weights + AdamW + EMA = {total / 2**20:.0f} MiB): "
            f"write {write_s:.2f}s ({total / 2**20 / write_s:.0f} MiB/s), "
            f"read+verify {read_s:.2f}s ({total / 2**20 / read_s:.0f} MiB/s)")


def overhead(steps: int, folder: Path) -> str:
    width, batch = 256, 32

    def build():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(),
                                  torch.nn.Linear(width, width))
        return net, torch.optim.AdamW(net.parameters(), lr=1e-3)

    def loss_of(net, x):
        return (net(x) - x).pow(2).mean()

    net, opt = build()
    batches = iter(RandomBatches(batch, width))
    tic = time.perf_counter()
    for _ in range(steps):
        loss = loss_of(net, next(batches)["x"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    bare = (time.perf_counter() - tic) / steps

    net, opt = build()
    trainer = Trainer("bench", {"net": net}, opt, lambda b, m, s: (loss_of(m["net"], b["x"]), {}),
                      RandomBatches(batch, width), folder, steps=steps, checkpoint_every=0,
                      log_every=50, ema=("net",), mixed_precision="no", max_grad_norm=1.0)
    tic = time.perf_counter()
    trainer.run()
    engine = (time.perf_counter() - tic) / steps
    return (f"{steps} steps of a {width}-wide MLP, batch {batch}: "
            f"bare loop {bare * 1e3:.2f} ms/step, Trainer {engine * 1e3:.2f} ms/step "
            f"(+{(engine - bare) * 1e3:.2f} ms: EMA, clipping, loss check, logging, final "
            "checkpoint)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=20e6)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        print(checkpoint_cost(int(args.params), Path(tmp) / "ckpt"))
        print(overhead(args.steps, Path(tmp) / "run"))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
