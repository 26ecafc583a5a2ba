"""A generic, resumable training loop on HF Accelerate.

A stage gives the :class:`Trainer` its models, an optimizer (and optionally an LR scheduler) over
their parameters, a ``step_fn`` that turns a batch into a loss, and a resumable batch stream
(:class:`~mambacontrol.training.data_order.ResumableBatches`, or any source with the same
``state_dict``/``load_state_dict``). ``Trainer.run(resume)`` does the rest:

- **devices and precision**: ``accelerate.Accelerator`` places models and batches, runs
  ``step_fn`` under ``accelerator.autocast()`` (``mixed_precision="auto"`` is bf16 on a GPU that
  supports it, fp32 otherwise), accumulates gradients over ``gradient_accumulation_steps``
  micro-batches (``accelerator.accumulate`` / ``accelerator.backward``) and clips them. The same
  code runs single-process on a CPU and under ``accelerate launch`` or ``torchrun`` (DDP); only
  the main process writes checkpoints, logs and summaries. A stage too small to gain from any of
  this trains on one process's CPU in fp32 with a
  :class:`~mambacontrol.training.local_accelerator.LocalAccelerator`.
- **EMA** of chosen models with diffusers' ``EMAModel``, updated after every optimizer step.
- **checkpoints** (:class:`~mambacontrol.training.checkpointing.StageCheckpoints`) every
  ``checkpoint_every`` optimizer steps and at the end, atomic, keeping the last
  ``keep_checkpoints``: model weights, optimizer, LR scheduler, EMA, gradient scaler, data order,
  every process's RNG states and the loss history. ``run(resume=True)`` restores all of it, so a
  killed run resumed from a checkpoint continues with the same losses as an uninterrupted one (bit
  for bit on a CPU). With ``out_dir=None`` a run writes nothing (no checkpoints, logs or summary):
  for stages that take seconds and are simply repeated.
- **divergence**: a non-finite loss (or, outside fp16, a non-finite gradient norm) stops the run
  before the weights are touched with :class:`TrainingDivergedError`; checkpoints already written
  are kept.
- **evaluation**: ``evaluate(models, step)`` runs before the first step of a fresh run, every
  ``evaluate_every`` steps and after the last one (e.g.
  :class:`~mambacontrol.training.best_state.BestState`, which keeps the best-scoring weights).
- **people**: a tqdm bar or log lines (:mod:`~mambacontrol.training.progress`); scalars
  (``train/loss``, ``train/lr`` (and ``train/lr_<group>`` for further parameter groups),
  ``train/samples_per_s``, ``train/grad_norm`` and every metric
  ``step_fn`` returns) every ``log_every`` steps and images from ``image_logger`` every
  ``image_every`` steps, through Accelerate's experiment trackers
  (:mod:`~mambacontrol.training.trackers`: TensorBoard by default, into
  ``<out_dir>/logs/<stage>/``; Weights & Biases and MLflow when installed), and a one-line
  :class:`StageSummary` at the end. The trainer does not write that summary: a stage is
  finished only once its models are saved, so the stage's caller writes
  ``<out_dir>/stages/<stage>.json`` (:func:`write_stage_summary`) after its saves.

Run-directory layout::

    <out_dir>/checkpoints/<stage>/step-000123/   state.json + *.safetensors
    <out_dir>/logs/<stage>/                      TensorBoard event files
    <out_dir>/stages/<stage>.json                summary of a finished stage (written by the caller)

Example::

    def step_fn(batch, models, step):
        pred = models["net"](batch["image"])
        loss = torch.nn.functional.mse_loss(pred, batch["target"])
        return loss, {"mse": loss.item()}

    trainer = Trainer("toy", {"net": net}, torch.optim.AdamW(net.parameters(), 1e-3), step_fn,
                      ResumableBatches(dataset, batch_size=4, seed=0), "runs/x", steps=1000,
                      ema=("net",), config=config_to_dict(cfg))
    summary = trainer.run(resume=args.resume)
    with trainer.ema_weights():
        trainer.unwrap("net").save("runs/x/net")
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from torch import nn

from mambacontrol.errors import ConfigError, MambaControlError, ModelError
from mambacontrol.io.tables import write_json
from mambacontrol.training.checkpointing import (
    ResumableBatchSource,
    RunProgress,
    StageCheckpoints,
    TrainingParts,
)
from mambacontrol.training.progress import ScalarWindow, StageProgress, format_duration
from mambacontrol.training.trackers import StageTrackers, check_trackers

logger = logging.getLogger(__name__)

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
StepFn = Callable[[Any, Mapping[str, nn.Module], int], tuple[torch.Tensor, Mapping[str, float]]]
ImageLogger = Callable[[Mapping[str, nn.Module], int], Mapping[str, Any]]
EvaluateFn = Callable[[Mapping[str, nn.Module], int], None]

#: the final loss of a stage is the mean over its last steps
FINAL_LOSS_WINDOW = 20


class TrainingDivergedError(MambaControlError):
    """The loss or the gradients became NaN or infinite; the run stopped before using them."""


@dataclass(frozen=True)
class StageSummary:
    """What a finished stage reports.

    Attributes:
        stage: the stage name.
        steps: optimizer steps done in total.
        wall_time_s: training time in seconds, summed over resumed runs.
        samples_per_s: training samples per second (all processes) over ``wall_time_s``.
        final_loss: mean loss over the last :data:`FINAL_LOSS_WINDOW` steps.
        resumed_from: the checkpoint step the last run started from (0 for a fresh run).
    """

    stage: str
    steps: int
    wall_time_s: float
    samples_per_s: float
    final_loss: float
    resumed_from: int = 0

    def line(self) -> str:
        """One line for people, e.g. ``unet: 2000 steps in 1h02m03s, 12.3 samples/s, final loss
        0.0412``."""
        resumed = f" (resumed from step {self.resumed_from})" if self.resumed_from else ""
        return (f"{self.stage}: {self.steps} steps in {format_duration(self.wall_time_s)}, "
                f"{self.samples_per_s:.3g} samples/s, final loss {self.final_loss:.4g}{resumed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSummary:
        """Inverse of :meth:`to_dict` (a number written as JSON ``null`` comes back as NaN)."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for k in ("wall_time_s", "samples_per_s", "final_loss"):
            if k in values and values[k] is None:
                values[k] = float("nan")
        return cls(**values)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``train/lr`` for the first parameter group, ``train/lr_<name>`` for each further one
    (its ``"name"`` key, or its index when it has none)."""
    out = {}
    for i, group in enumerate(optimizer.param_groups):
        key = "train/lr" if i == 0 else f"train/lr_{group.get('name', i)}"
        out[key] = float(group["lr"])
    return out


def stage_summary_path(out_dir: str | Path, stage: str) -> Path:
    """``<out_dir>/stages/<stage>.json``."""
    return Path(out_dir) / "stages" / f"{stage}.json"


def write_stage_summary(out_dir: str | Path, summary: StageSummary) -> Path:
    """Record a finished stage (atomically), so ``train all`` can skip it."""
    return write_json(stage_summary_path(out_dir, summary.stage), summary.to_dict(), indent=1)


def read_stage_summary(out_dir: str | Path, stage: str) -> StageSummary | None:
    """The summary of a finished stage, or ``None`` when the stage has not finished.

    Raises:
        ModelError: when the summary file is corrupt.
    """
    path = stage_summary_path(out_dir, stage)
    if not path.is_file():
        return None
    try:
        return StageSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ModelError(f"{path}: corrupt stage summary ({exc}); delete it to rerun the "
                         f"stage") from None


class Trainer:
    """Trains ``models`` for ``steps`` optimizer steps; see the module docstring.

    Args:
        stage: stage name; names the checkpoint, log and summary folders.
        models: the modules to train, by name. They are prepared by Accelerate (on the device,
            DDP-wrapped when distributed: call them through ``forward``) and checkpointed.
        optimizer: an optimizer over the trainable models' parameters.
        step_fn: ``step_fn(batch, models, step) -> (loss, metrics)``: ``batch`` is on the
            device, ``models`` holds ``models`` and ``frozen``, ``step`` counts optimizer steps
            from 0; ``loss`` a scalar tensor, ``metrics`` a dict of floats to log.
        batches: the resumable batch stream (its state is checkpointed).
        out_dir: the run directory (None: write nothing; the run cannot be resumed).
        steps: optimizer steps to train in total.
        lr_scheduler: stepped once per optimizer step (not once per process or micro-batch).
        frozen: modules ``step_fn`` needs but that are not trained (moved to the device, eval
            mode, no gradients, not checkpointed).
        checkpoint_every: optimizer steps between checkpoints (0: only at the end).
        keep_checkpoints: how many checkpoints to keep.
        log_every: optimizer steps between TensorBoard scalars.
        image_every: optimizer steps between ``image_logger`` calls (0: never).
        image_logger: ``image_logger(models, step) -> {name: (H, W) or (C, H, W) array in
            [0, 1]}``, called on the main process under ``torch.no_grad`` in eval mode, with the
            EMA weights swapped in, and with its own RNG (it never changes the training's).
        evaluate: ``evaluate(models, step)``, called with the trained (not EMA) and frozen
            models in eval mode, under ``torch.no_grad`` and with its own RNG: before the first
            step of a fresh run (step 0), every ``evaluate_every`` steps and after the last.
        evaluate_every: optimizer steps between ``evaluate`` calls.
        seed: seeds the training RNGs on a fresh start (the batch order has its own seed;
            None: the RNGs are left as the caller seeded them, e.g. before building the models).
        mixed_precision: ``"auto"`` (bf16 on a capable GPU, else fp32), ``"no"``, ``"bf16"`` or
            ``"fp16"``.
        gradient_accumulation_steps: micro-batches per optimizer step.
        max_grad_norm: clip the gradient norm to this (``None``: no clipping, norm still logged).
        ema: names of models to keep an exponential moving average of.
        ema_decay: EMA decay (diffusers' warm-up ``(1 + t) / (10 + t)`` caps it early on).
        config: JSON-able config recorded in every checkpoint; resuming with another is refused.
        trackers: Accelerate experiment trackers to log to (``tensorboard``, ``wandb``,
            ``mlflow``; ``()`` for none); each must be installed (``ConfigError``).
        accelerator: an ``accelerate.Accelerator`` (or a
            :class:`~mambacontrol.training.local_accelerator.LocalAccelerator`) to use instead of
            making one; ``mixed_precision`` and ``gradient_accumulation_steps`` are then its own.

    Attributes:
        history: the loss of every optimizer step so far (restored on resume).
        trackers: the experiment trackers' names.
    """

    def __init__(self, stage: str, models: Mapping[str, nn.Module],
                 optimizer: torch.optim.Optimizer, step_fn: StepFn, batches: ResumableBatchSource,
                 out_dir: str | Path | None, *, steps: int, lr_scheduler: Any | None = None,
                 frozen: Mapping[str, nn.Module] | None = None, checkpoint_every: int = 200,
                 keep_checkpoints: int = 2, log_every: int = 10, image_every: int = 0,
                 image_logger: ImageLogger | None = None, evaluate: EvaluateFn | None = None,
                 evaluate_every: int = 0, seed: int | None = 0,
                 mixed_precision: MixedPrecision = "auto", gradient_accumulation_steps: int = 1,
                 max_grad_norm: float | None = 1.0, ema: Sequence[str] = (),
                 ema_decay: float = 0.9999, config: Mapping[str, Any] | None = None,
                 trackers: Sequence[str] = ("tensorboard",), accelerator: Any | None = None):
        frozen = dict(frozen or {})
        _check_arguments(stage, models, frozen, batches, ema, ema_decay, mixed_precision, config,
                         at_least_one={"steps": steps, "keep_checkpoints": keep_checkpoints,
                                       "log_every": log_every,
                                       "gradient_accumulation_steps": gradient_accumulation_steps},
                         at_least_zero={"checkpoint_every": checkpoint_every,
                                        "image_every": image_every})
        if evaluate is not None and int(evaluate_every) < 1:
            raise ValueError(f"evaluate_every must be ≥ 1 with an evaluate hook, got "
                             f"{evaluate_every}")
        if out_dir is None and trackers:
            raise ValueError(f"trackers {list(trackers)} need an out_dir to log into")
        self.trackers = check_trackers(trackers, "trackers")
        self.stage = stage
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.steps = int(steps)
        self.step_fn = step_fn
        self.batches = batches
        self.lr_scheduler = lr_scheduler
        self.log_every = int(log_every)
        self.image_every = int(image_every)
        self.image_logger = image_logger
        self.evaluate = evaluate
        self.evaluate_every = int(evaluate_every)
        self.seed = None if seed is None else int(seed)
        self.max_grad_norm = max_grad_norm
        self.config = None if config is None else json.loads(json.dumps(config))
        self.progress = RunProgress()

        if accelerator is None:
            accelerator = Accelerator(mixed_precision=_resolve_precision(mixed_precision),
                                      gradient_accumulation_steps=int(gradient_accumulation_steps),
                                      cpu=not torch.cuda.is_available())
        self.accelerator = accelerator
        self._accumulation = int(accelerator.gradient_accumulation_steps)
        names = list(models)
        prepared = accelerator.prepare(*[models[n] for n in names], optimizer)
        self._prepared = dict(zip(names, prepared[:-1]))
        self.optimizer = prepared[-1]
        self._frozen = {n: _frozen_on(m, accelerator.device) for n, m in frozen.items()}
        self._params = [p for n in names for p in self.unwrap(n).parameters() if p.requires_grad]
        self._ema = _make_ema({n: self.unwrap(n) for n in ema}, ema_decay)
        self._trackers = StageTrackers(accelerator, self.trackers, stage, self.out_dir,
                                       self.config)
        self._checkpoints = None if self.out_dir is None else StageCheckpoints(
            self.out_dir / "checkpoints" / stage, stage, every=int(checkpoint_every),
            keep=int(keep_checkpoints), config=self.config, seed=self.seed)

    # --- public helpers ---------------------------------------------------------------------------

    @property
    def history(self) -> list[float]:
        """The loss of every optimizer step so far."""
        return self.progress.history

    def unwrap(self, name: str) -> nn.Module:
        """The trained module ``name`` without DDP/compile wrappers."""
        return self.accelerator.unwrap_model(self._prepared[name])

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[dict[str, nn.Module]]:
        """Swap the EMA weights into the EMA'd models for the ``with`` block, then restore them.

        Yields:
            The unwrapped trained models by name (EMA weights where an EMA is kept).
        """
        for name, ema in self._ema.items():
            ema.store(self.unwrap(name).parameters())
            ema.copy_to(self.unwrap(name).parameters())
        try:
            yield {n: self.unwrap(n) for n in self._prepared}
        finally:
            for name, ema in self._ema.items():
                ema.restore(self.unwrap(name).parameters())

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> StageSummary:
        """Train to ``steps`` optimizer steps, from scratch or from the latest checkpoint.

        Args:
            resume: continue from the latest checkpoint of this stage (a fresh start when there is
                none).

        Returns:
            The stage summary (also logged). It is not written to ``stages/``: the caller does
            that once the stage's models are saved.

        Raises:
            ConfigError: checkpoints exist but ``resume`` is false; or the checkpoint belongs to
                another stage or config.
            ModelError: the checkpoint is corrupt or was written for other models.
            TrainingDivergedError: the loss or the gradients became NaN or infinite.
        """
        acc = self.accelerator
        # Accelerate keeps one gradient-accumulation state per process: claim it for this run.
        acc.gradient_accumulation_steps = self._accumulation
        acc.step = 0
        self.progress = self._start(resume)
        start = self.progress.step
        if start >= self.steps:
            return self._finish(start)
        self._trackers.start(start)
        display = StageProgress(self.stage, self.steps, start, self.log_every, acc.is_main_process)
        for module in self._prepared.values():
            module.train()
        try:
            self._train_steps(display)
        finally:
            display.close()
            self._trackers.end()
        return self._finish(start)

    def _start(self, resume: bool) -> RunProgress:
        """The progress to start from: the latest checkpoint's (restored), or a fresh start."""
        latest = self._checkpoints.latest() if self._checkpoints is not None else None
        if latest is not None and not resume:
            raise ConfigError(f"{self._checkpoints.root} already holds checkpoints (latest "
                              f"{latest.name}); resume them (--resume) or use another output "
                              f"folder")
        if latest is not None:
            progress = self._checkpoints.restore(latest, self.accelerator, self._parts())
            logger.info("%s: resuming from %s", self.stage, latest)
            return progress
        if self.seed is not None:
            set_seed(self.seed, device_specific=True)
        return RunProgress()

    def _train_steps(self, display: StageProgress) -> None:
        """The optimizer steps from ``progress.step`` to ``steps``, with their reports,
        evaluations and checkpoints."""
        progress = self.progress
        window = ScalarWindow()
        run_start, elapsed_before = time.perf_counter(), progress.elapsed_s
        batches = iter(self.batches)
        if progress.step == 0 and self.evaluate is not None:
            self._run_evaluate(0)
        for step in range(progress.step, self.steps):
            loss, metrics, grad_norm, n = self._optimizer_step(batches, step)
            done = step + 1
            progress.step, progress.samples = done, progress.samples + n
            progress.history.append(loss)
            window.add({"loss": loss, "grad_norm": grad_norm, **metrics}, n)
            display.step(loss)
            if done % self.log_every == 0 or done == self.steps:
                self._report(done, window, display)
                window = ScalarWindow()
            if self._trackers.active and self.image_logger and self.image_every \
                    and done % self.image_every == 0:
                self._log_images(done)
            if self.evaluate is not None and (done % self.evaluate_every == 0
                                              or done == self.steps):
                self._run_evaluate(done)
            progress.elapsed_s = elapsed_before + time.perf_counter() - run_start
            if self._checkpoints is not None and self._checkpoints.due(done, self.steps):
                self._checkpoints.save(self.accelerator, self._parts(), progress)
        progress.elapsed_s = elapsed_before + time.perf_counter() - run_start

    def _finish(self, start: int) -> StageSummary:
        """The stage summary, logged."""
        p = self.progress
        tail = p.history[-FINAL_LOSS_WINDOW:]
        summary = StageSummary(stage=self.stage, steps=p.step, wall_time_s=round(p.elapsed_s, 3),
                               samples_per_s=p.samples / p.elapsed_s if p.elapsed_s > 0 else 0.0,
                               final_loss=float(np.mean(tail)) if tail else math.nan,
                               resumed_from=start)
        self.accelerator.wait_for_everyone()
        logger.info("%s", summary.line())
        return summary

    def _optimizer_step(self, batches: Iterator[Any], step: int,
                        ) -> tuple[float, dict[str, float], float, int]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns:
            ``(mean loss over processes and micro-batches, mean metrics, gradient norm, samples)``.
        """
        acc = self.accelerator
        models = {**self._frozen, **self._prepared}
        losses, metric_sums, samples, grad_norm = [], {}, 0, float("nan")
        for _ in range(acc.gradient_accumulation_steps):
            batch = send_to_device(_plain_tensors(next(batches)), acc.device)
            samples += _batch_len(batch) * acc.num_processes
            with acc.accumulate(*self._prepared.values()):
                with acc.autocast():
                    loss, metrics = self.step_fn(batch, models, step)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"step_fn must return a scalar loss tensor, got {loss!r}")
                mean_loss = float(acc.reduce(loss.detach().float().reshape(()), "mean"))
                if not math.isfinite(mean_loss):
                    self._diverged(step, f"the loss became {mean_loss}")
                losses.append(mean_loss)
                for key, value in (metrics or {}).items():
                    metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = self._apply_gradients(step)
        count = len(losses)
        return (sum(losses) / count, {k: v / count for k, v in metric_sums.items()}, grad_norm,
                samples)

    def _apply_gradients(self, step: int) -> float:
        """Clip, step the optimizer, the LR scheduler and the EMAs; returns the gradient norm."""
        acc = self.accelerator
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        grad_norm = float(acc.clip_grad_norm_(self._params, max_norm))
        if not math.isfinite(grad_norm) and acc.mixed_precision != "fp16":
            self._diverged(step, f"the gradient norm became {grad_norm}")
        self.optimizer.step()
        stepped = not getattr(self.optimizer, "step_was_skipped", False)
        if stepped and self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            for name, ema in self._ema.items():
                ema.step(self.unwrap(name).parameters())
        return grad_norm

    def _diverged(self, step: int, what: str) -> None:
        latest = self._checkpoints.latest() if self._checkpoints is not None else None
        kept = (f"the last good checkpoint {latest} is kept; lower the learning rate and resume "
                f"(--resume)" if latest is not None else
                "no checkpoint was written yet; lower the learning rate and start again")
        raise TrainingDivergedError(f"stage {self.stage!r}: {what} at step {step + 1}, so training "
                                    f"stopped before updating the weights; {kept}")

    def _parts(self) -> TrainingParts:
        """What a checkpoint saves and restores."""
        return TrainingParts({n: self.unwrap(n) for n in self._prepared}, self.optimizer,
                             self.lr_scheduler, self._ema, self.batches)

    # --- reports, images and evaluations ----------------------------------------------------------

    def _report(self, done: int, window: ScalarWindow, display: StageProgress) -> None:
        """The window's scalars to the progress display and the trackers."""
        rate = window.rate()
        display.report(done, window, rate)
        if self._trackers.active:
            values = {f"train/{k}": v for k, v in window.finite_means().items()}
            values.update(learning_rates(self.optimizer))
            values["train/samples_per_s"] = float(rate)
            self._trackers.log_scalars(values, done)

    def _log_images(self, step: int) -> None:
        with self._inspecting(self.ema_weights()) as models:
            images = self.image_logger(models, step)
        self._trackers.log_images(images or {}, step)

    def _run_evaluate(self, step: int) -> None:
        with self._inspecting(contextlib.nullcontext(
                {n: self.unwrap(n) for n in self._prepared})) as models:
            self.evaluate(models, step)

    @contextlib.contextmanager
    def _inspecting(self, weights: contextlib.AbstractContextManager,
                    ) -> Iterator[dict[str, nn.Module]]:
        """The frozen and trained models (as ``weights`` yields them) in eval mode, under
        ``no_grad`` and with a forked RNG; the training modes are restored afterwards."""
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        modes = {n: m.training for n, m in self._prepared.items()}
        with torch.random.fork_rng(devices=devices), torch.no_grad(), weights as models:
            for module in models.values():
                module.eval()
            try:
                yield {**self._frozen, **models}
            finally:
                for name, module in models.items():
                    module.train(modes[name])


# --- helpers -------------------------------------------------------------------------------------

def _check_arguments(stage: str, models: Mapping[str, nn.Module], frozen: Mapping[str, nn.Module],
                     batches: Any, ema: Sequence[str], ema_decay: float, mixed_precision: str,
                     config: Mapping[str, Any] | None, *, at_least_one: Mapping[str, int],
                     at_least_zero: Mapping[str, int]) -> None:
    """Raise ``ValueError`` naming the first bad argument of :class:`Trainer`."""
    if not stage or not stage.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"stage must be a plain name (letters, digits, '-', '_'), got {stage!r}")
    if not models:
        raise ValueError("models must name at least one module to train")
    if set(models) & set(frozen):
        raise ValueError(f"models and frozen share names {sorted(set(models) & set(frozen))}")
    for name, value in at_least_one.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    for name, value in at_least_zero.items():
        if int(value) < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value}")
    if mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {mixed_precision!r}")
    unknown_ema = [n for n in ema if n not in models]
    if unknown_ema:
        raise ValueError(f"ema names {unknown_ema} are not among the trained models {list(models)}")
    if not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must be within [0, 1], got {ema_decay}")
    for attr in ("state_dict", "load_state_dict", "__iter__"):
        if not hasattr(batches, attr):
            raise ValueError(f"batches must be resumable (iterable with state_dict and "
                             f"load_state_dict, e.g. ResumableBatches); "
                             f"{type(batches).__name__} has no {attr}")
    if config is not None:
        try:
            json.dumps(config)   # it goes into every checkpoint
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config must be JSON-able (e.g. config_to_dict(cfg)): "
                             f"{exc}") from None


def _frozen_on(module: nn.Module, device: torch.device) -> nn.Module:
    """A module that is used but not trained: on ``device``, in eval mode, without gradients."""
    module = module.to(device).eval()
    module.requires_grad_(False)
    return module


def _make_ema(models: Mapping[str, nn.Module], decay: float) -> dict[str, Any]:
    """diffusers' ``EMAModel`` of each model."""
    if not models:
        return {}
    from diffusers.training_utils import EMAModel  # heavy (diffusers): only where an EMA is kept

    return {n: EMAModel(m.parameters(), decay=decay, foreach=True) for n, m in models.items()}


def _resolve_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _plain_tensors(batch: Any) -> Any:
    """Tensor subclasses (MONAI's ``MetaTensor``) as plain tensors: their per-op metadata
    tracking is slow and training does not need it."""
    if isinstance(batch, torch.Tensor):
        return batch if type(batch) is torch.Tensor else batch.as_subclass(torch.Tensor)
    if isinstance(batch, Mapping):
        return {k: _plain_tensors(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_plain_tensors(v) for v in batch)
    return batch


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    values: Iterable[Any] = batch.values() if isinstance(batch, Mapping) else \
        batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        if isinstance(value, (torch.Tensor, Mapping, list, tuple)):
            return _batch_len(value)
    return len(batch) if isinstance(batch, (list, tuple)) else 1
