"""Check the training engine under DDP: a killed and resumed run equals an uninterrupted one.

Run on a CPU with two processes (gloo) or on GPUs, e.g.::

    torchrun --nproc_per_node 2 benchmarks/training_ddp_resume.py --out /tmp/ddp-check
    accelerate launch --num_processes 2 --cpu benchmarks/training_ddp_resume.py --out /tmp/ddp-check

Each process trains a tiny Conv3d with dropout, AdamW, a warm-up schedule, EMA, random crops and
gradient accumulation on its own shard of the batches. The main process prints the loss curves'
largest difference and whether weights and EMA weights agree, and exits non-zero if they do not.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, RandFlipd, RandSpatialCropd

from mambacontrol.training.data_order import ResumableBatches, process_state
from mambacontrol.training.engine import Trainer

DATA = [{"x": np.random.default_rng(i).normal(size=(1, 8, 8, 8)).astype(np.float32)}
        for i in range(9)]


class Killed(Exception):
    pass


def make_trainer(out: Path, steps: int, kill_at: int | None, init_seed: int,
                 precision: str) -> Trainer:
    torch.manual_seed(init_seed)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Dropout(0.2), torch.nn.Conv3d(8, 1, 3, padding=1))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    crop = Compose([RandSpatialCropd("x", (6, 6, 6), random_size=False), RandFlipd("x", prob=0.5)])
    batches = ResumableBatches(DATA, batch_size=2, seed=1, augment=crop)

    def step_fn(batch, models, step):
        if step == kill_at:
            raise Killed()
        x = batch["x"]
        loss = torch.nn.functional.mse_loss(models["net"](x), x.flip(-1))
        return loss, {}

    return Trainer("toy", {"net": net}, opt, step_fn, batches, out, steps=steps, lr_scheduler=sched,
                   checkpoint_every=4, log_every=4, gradient_accumulation_steps=2, ema=("net",),
                   ema_decay=0.9, seed=0, mixed_precision=precision)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"))
    args = parser.parse_args()
    state = process_state()
    if state.is_main_process:
        shutil.rmtree(args.out, ignore_errors=True)
    state.wait_for_everyone()
    tic = time.perf_counter()
    full = make_trainer(args.out / "full", args.steps, None, 0, args.mixed_precision)
    full.run()
    killed = make_trainer(args.out / "killed", args.steps, args.steps // 2 + 1, 0,
                          args.mixed_precision)
    try:
        killed.run()
    except Killed:
        pass
    resumed = make_trainer(args.out / "killed", args.steps, None, 123, args.mixed_precision)
    summary = resumed.run(resume=True)
    diff = max(abs(a - b) for a, b in zip(full.history, resumed.history))
    same_w = all(torch.equal(a, b) for a, b in zip(full.unwrap("net").state_dict().values(),
                                                   resumed.unwrap("net").state_dict().values()))
    with full.ema_weights() as fa, resumed.ema_weights() as fb:
        same_ema = all(torch.equal(a, b) for a, b in zip(fa["net"].state_dict().values(),
                                                         fb["net"].state_dict().values()))
    ok = diff == 0.0 and same_w and same_ema and len(resumed.history) == args.steps
    if state.is_main_process:
        print(f"processes {state.num_processes} ({state.device}, mixed precision "
              f"{full.accelerator.mixed_precision}), {summary.line()}")
        print(f"loss curves: max |difference| {diff:.3g}; weights identical {same_w}; "
              f"EMA identical {same_ema}; total {time.perf_counter() - tic:.1f}s")
    return 0 if ok and math.isfinite(diff) else 1


if __name__ == "__main__":
    sys.exit(main())
