"""Training loss of each diffusion stage of trained models, read from their TensorBoard logs.

One logged loss is one batch's, so a single figure is noisy; this prints, per model and stage,
the mean of the logged losses over the first and the last fifth of the steps, with the standard
error of the last fifth's mean. Comparing a population UNet's ControlNet with the UNet that sees
the baseline (``unet.model.concat_base``) says how much of the subject the ControlNet has learnt
(docs/benchmarks.md, "The population UNet").

    python benchmarks/stage_losses.py runs/quality/full runs/quality/population-unet
    python benchmarks/stage_losses.py runs/quality/population-unet --window 300

``--window N`` prints, instead, the mean loss of every N steps (a row per model and stage), to
follow a long stage's curve.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

STAGES = ("unet", "controlnet")


def logged_losses(run: Path, stage: str) -> dict[int, float]:
    """``{step: loss}`` of a stage over all its event files (a resumed stage has several; a
    later file's value wins for a step logged twice)."""
    losses: dict[int, float] = {}
    for events in sorted((run / "logs" / stage).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            losses.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return losses


def summary(losses: dict[int, float]) -> tuple[int, float, float, float, int]:
    """(last step, mean of the first fifth, mean of the last fifth, its standard error, number of
    losses in the last fifth)."""
    steps = sorted(losses)
    last = steps[-1]
    head = [losses[s] for s in steps if s <= 0.2 * last] or [losses[steps[0]]]
    tail = [losses[s] for s in steps if s > 0.8 * last]
    se = statistics.stdev(tail) / len(tail) ** 0.5 if len(tail) > 1 else float("nan")
    return last, statistics.fmean(head), statistics.fmean(tail), se, len(tail)


def windows(losses: dict[int, float], width: int) -> list[tuple[int, float, int]]:
    """(last step of the window, mean loss, number of losses) of steps 1–width, width+1–2·width,
    ...; windows without a logged loss are left out."""
    by_window: dict[int, list[float]] = {}
    for step, loss in losses.items():
        by_window.setdefault((step - 1) // width, []).append(loss)
    return [((w + 1) * width, statistics.fmean(v), len(v)) for w, v in sorted(by_window.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="trained model folders (train all --out)")
    parser.add_argument("--window", type=int, metavar="N",
                        help="print the mean loss of every N steps instead of the summary")
    args = parser.parse_args(argv)
    if args.window is not None and args.window < 1:
        parser.error(f"--window {args.window} must be at least 1")
    if args.window:
        return print_windows(args.runs, args.window)
    print("| model | stage | steps | loss, first fifth | loss, last fifth (± s.e.) |")
    print("| --- | --- | ---: | ---: | ---: |")
    found = False
    for run in args.runs:
        for stage in STAGES:
            losses = logged_losses(run, stage)
            if not losses:
                continue
            found = True
            last, head, tail, se, n = summary(losses)
            print(f"| {run.name} | {stage} | {last} | {head:.4f} | {tail:.4f} ± {se:.4f} ({n}) |")
    return 0 if found else _nothing_found()


def print_windows(runs: list[Path], width: int) -> int:
    """One line per model and stage: its mean loss per ``width`` steps."""
    found = False
    for run in runs:
        for stage in STAGES:
            losses = logged_losses(run, stage)
            if losses:
                found = True
                cells = ", ".join(f"{end}: {mean:.4f} ({n})"
                                  for end, mean, n in windows(losses, width))
                print(f"{run.name} {stage}, mean loss per {width} steps (up to step: mean "
                      f"(losses)): {cells}")
    return 0 if found else _nothing_found()


def _nothing_found() -> int:
    print("error: no training losses under <run>/logs/{unet,controlnet}; give the folders "
          "`mambacontrol train all --out` wrote", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
