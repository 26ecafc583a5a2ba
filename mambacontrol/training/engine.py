"""A generic, resumable training loop on HF Accelerate.

A stage gives the :class:`Trainer` its models, an optimizer (and optionally an LR scheduler) over
their parameters, a ``step_fn`` that turns a batch into a loss, and a resumable batch stream
(:class:`~mambacontrol.training.data_order.ResumableBatches`). ``Trainer.run(resume)`` does the
rest:

- **devices and precision**: ``accelerate.Accelerator`` places models and batches, runs
  ``step_fn`` under ``accelerator.autocast()`` (``mixed_precision="auto"`` is bf16 on a GPU that
  supports it, fp32 otherwise), accumulates gradients over ``gradient_accumulation_steps``
  micro-batches (``accelerator.accumulate`` / ``accelerator.backward``) and clips them. The same
  code runs single-process on a CPU and under ``accelerate launch`` or ``torchrun`` (DDP); only
  the main process writes checkpoints, logs and summaries.
- **EMA** of chosen models with diffusers' ``EMAModel``, updated after every optimizer step.
- **checkpoints** every ``checkpoint_every`` optimizer steps and at the end, atomic, keeping the
  last ``keep_checkpoints`` (see :mod:`~mambacontrol.training.checkpoint`): model weights,
  optimizer, LR scheduler, EMA, gradient scaler, data order, every process's RNG states and the
  loss history. ``run(resume=True)`` restores all of it, so a killed run resumed from a checkpoint
  continues with the same losses as an uninterrupted one (bit for bit on a CPU).
- **divergence**: a non-finite loss (or, outside fp16, a non-finite gradient norm) stops the run
  before the weights are touched with :class:`TrainingDivergedError`; checkpoints already written
  are kept.
- **people**: a tqdm bar (loss, samples/s) on a terminal, or, where the output is not a terminal
  (a log file, a batch job), a log line about every 5 % of the run (step, loss, samples/s, time
  left); scalars (``train/loss``, ``train/lr``,
  ``train/samples_per_s``, ``train/grad_norm`` and every metric ``step_fn`` returns) every
  ``log_every`` steps and images from ``image_logger`` every ``image_every`` steps, through
  Accelerate's experiment trackers (``trackers``: TensorBoard by default, into
  ``<out_dir>/logs/<stage>/``; Weights & Biases and MLflow when installed), and a one-line
  :class:`StageSummary` at the end, also written to ``<out_dir>/stages/<stage>.json``.

Run-directory layout::

    <out_dir>/checkpoints/<stage>/step-000123/   state.json + *.safetensors
    <out_dir>/logs/<stage>/                      TensorBoard event files
    <out_dir>/stages/<stage>.json                summary of a finished stage

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
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mambacontrol.errors import ConfigError, MambaControlError, ModelError
from mambacontrol.io.tables import write_json
from mambacontrol.training.checkpoint import (
    capture_rng_state,
    check_tensors_match,
    flatten_state,
    latest_checkpoint,
    read_checkpoint,
    restore_rng_state,
    unflatten_state,
    write_checkpoint,
)
from mambacontrol.training.config import config_differences, require_same_config

logger = logging.getLogger(__name__)

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
StepFn = Callable[[Any, Mapping[str, nn.Module], int], tuple[torch.Tensor, Mapping[str, float]]]
ImageLogger = Callable[[Mapping[str, nn.Module], int], Mapping[str, Any]]

#: the final loss of a stage is the mean over its last steps
FINAL_LOSS_WINDOW = 20

#: experiment trackers (Accelerate's) a run may log to, and the module each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(names: Sequence[str], key: str = "engine.trackers") -> list[str]:
    """The tracker names, checked: known to the engine, and installed.

    Raises:
        ConfigError: one line naming the tracker and the fix.
    """
    import importlib.util

    names = list(names)
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"{key}: unknown experiment tracker {name!r}; choose from "
                              f"{', '.join(TRACKERS)} (or [] for none)")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"{key}: experiment tracker {name!r} is not installed; "
                              f"`pip install {TRACKERS[name]}`, or remove it from {key}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: {names} names a tracker twice; list each once")
    return names


def _make_tracker(name: str, stage: str, out_dir: Path, purge_step: int | None) -> Any:
    """An Accelerate tracker for one stage: TensorBoard in ``<out>/logs/<stage>``; W&B project
    ``$WANDB_PROJECT`` (default ``mambacontrol``), MLflow experiment ``$MLFLOW_EXPERIMENT_NAME``
    (default ``mambacontrol``), each run named ``<run folder>/<stage>``."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    logs = out_dir / "logs"
    run = out_dir.resolve().name
    if name == "tensorboard":
        return TensorBoardTracker(stage, logs, purge_step=purge_step)
    if name == "wandb":
        logs.mkdir(parents=True, exist_ok=True)
        import os

        return WandBTracker(os.environ.get("WANDB_PROJECT", "mambacontrol"), name=f"{run}/{stage}",
                            group=run, dir=str(logs))
    return MLflowTracker("mambacontrol", run_name=f"{run}/{stage}")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON tree as ``{"a.b": value}`` with scalar values (lists become their text)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    value = tree if tree is None or isinstance(tree, (bool, int, float, str)) else json.dumps(tree)
    return {prefix[:-1]: value}


class TrainingDivergedError(MambaControlError):
    """The loss or the gradients became NaN or infinite; the run stopped before using them."""


class ResumableBatchSource(Protocol):
    """What ``Trainer`` needs from its batches: an endless iterable with a JSON-able state."""

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


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
        """One line for people: ``unet: 2000 steps in 1h02m03s, 12.3 samples/s, final loss 0.0412``."""
        resumed = f" (resumed from step {self.resumed_from})" if self.resumed_from else ""
        return (f"{self.stage}: {self.steps} steps in {_duration(self.wall_time_s)}, "
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
        out_dir: the run directory.
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
        seed: seeds the training RNGs on a fresh start (the batch order has its own seed).
        mixed_precision: ``"auto"`` (bf16 on a capable GPU, else fp32), ``"no"``, ``"bf16"`` or
            ``"fp16"``.
        gradient_accumulation_steps: micro-batches per optimizer step.
        max_grad_norm: clip the gradient norm to this (``None``: no clipping, norm still logged).
        ema: names of models to keep an exponential moving average of.
        ema_decay: EMA decay (diffusers' warm-up ``(1 + t) / (10 + t)`` caps it early on).
        config: JSON-able config recorded in every checkpoint; resuming with another is refused.
        trackers: Accelerate experiment trackers to log to (:data:`TRACKERS`: ``tensorboard``,
            ``wandb``, ``mlflow``; ``()`` for none); each must be installed (``ConfigError``).
        accelerator: an ``accelerate.Accelerator`` to use instead of making one.

    Attributes:
        history: the loss of every optimizer step so far (restored on resume).
    """

    def __init__(self, stage: str, models: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                 step_fn: StepFn, batches: ResumableBatchSource, out_dir: str | Path, *, steps: int,
                 lr_scheduler: Any | None = None, frozen: Mapping[str, nn.Module] | None = None,
                 checkpoint_every: int = 500, keep_checkpoints: int = 3, log_every: int = 10,
                 image_every: int = 0, image_logger: ImageLogger | None = None, seed: int = 0,
                 mixed_precision: MixedPrecision = "auto", gradient_accumulation_steps: int = 1,
                 max_grad_norm: float | None = 1.0, ema: Sequence[str] = (),
                 ema_decay: float = 0.9999, config: Mapping[str, Any] | None = None,
                 trackers: Sequence[str] = ("tensorboard",), accelerator: Any | None = None):
        frozen = dict(frozen or {})
        if not stage or not stage.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"stage must be a plain name (letters, digits, '-', '_'), got {stage!r}")
        if not models:
            raise ValueError("models must name at least one module to train")
        if set(models) & set(frozen):
            raise ValueError(f"models and frozen share names {sorted(set(models) & set(frozen))}")
        for name, value in (("steps", steps), ("keep_checkpoints", keep_checkpoints),
                            ("log_every", log_every),
                            ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if int(value) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        for name, value in (("checkpoint_every", checkpoint_every), ("image_every", image_every)):
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
                raise ValueError(f"config must be JSON-able (e.g. config_to_dict(cfg)): {exc}") from None

        self.stage = stage
        self.out_dir = Path(out_dir)
        self.steps = int(steps)
        self.step_fn = step_fn
        self.batches = batches
        self.lr_scheduler = lr_scheduler
        self.checkpoint_every = int(checkpoint_every)
        self.keep_checkpoints = int(keep_checkpoints)
        self.log_every = int(log_every)
        self.image_every = int(image_every)
        self.image_logger = image_logger
        self.seed = int(seed)
        self.max_grad_norm = max_grad_norm
        self.config = None if config is None else json.loads(json.dumps(config))
        self.trackers = check_trackers(trackers, "trackers")
        self.history: list[float] = []

        if accelerator is None:
            from accelerate import Accelerator
            accelerator = Accelerator(mixed_precision=_resolve_precision(mixed_precision),
                                      gradient_accumulation_steps=int(gradient_accumulation_steps),
                                      cpu=not torch.cuda.is_available())
        self.accelerator = accelerator
        self._accumulation = int(accelerator.gradient_accumulation_steps)
        names = list(models)
        prepared = accelerator.prepare(*[models[n] for n in names], optimizer)
        self._prepared = dict(zip(names, prepared[:-1]))
        self.optimizer = prepared[-1]
        self._frozen = {}
        for name, module in frozen.items():
            module = module.to(accelerator.device).eval()
            module.requires_grad_(False)
            self._frozen[name] = module
        self._params = [p for n in names for p in self.unwrap(n).parameters() if p.requires_grad]
        from diffusers.training_utils import EMAModel
        self._ema = {n: EMAModel(self.unwrap(n).parameters(), decay=ema_decay, foreach=True)
                     for n in ema}

    # --- public helpers ---------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        """``<out_dir>/checkpoints/<stage>``."""
        return self.out_dir / "checkpoints" / self.stage

    @property
    def log_dir(self) -> Path:
        """``<out_dir>/logs/<stage>``."""
        return self.out_dir / "logs" / self.stage

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
            The stage summary (also logged and written to ``<out_dir>/stages/<stage>.json``).

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
        latest = latest_checkpoint(self.checkpoint_root)
        if latest is not None and not resume:
            raise ConfigError(f"{self.checkpoint_root} already holds checkpoints (latest "
                              f"{latest.name}); resume them (--resume) or use another output folder")
        if latest is not None:
            start, elapsed, samples = self._restore(latest)
            logger.info("%s: resuming from %s", self.stage, latest)
        else:
            from accelerate.utils import set_seed
            set_seed(self.seed, device_specific=True)
            start, elapsed, samples = 0, 0.0, 0
            self.history = []
        if start >= self.steps:
            return self._finish(self._summary(start, elapsed, samples, start))

        tracking = self._start_trackers(start)
        bar = tqdm(total=self.steps, initial=start, desc=self.stage, unit="step", dynamic_ncols=True,
                   disable=None if acc.is_main_process else True)
        # Without a terminal the bar is off: log a line about every 5 % of the run instead.
        line_every = (self.log_every * math.ceil(self.steps / 20 / self.log_every)
                      if bar.disable and acc.is_main_process else 0)
        for module in self._prepared.values():
            module.train()
        window: dict[str, list[float]] = {}
        run_start = window_start = time.perf_counter()
        window_samples, elapsed_before = 0, elapsed
        batches = iter(self.batches)
        try:
            for step in range(start, self.steps):
                loss, metrics, grad_norm, n = self._optimizer_step(batches, step)
                samples += n
                window_samples += n
                self.history.append(loss)
                for key, value in {"loss": loss, "grad_norm": grad_norm, **metrics}.items():
                    window.setdefault(key, []).append(float(value))
                done = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if done % self.log_every == 0 or done == self.steps:
                    rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                    bar.set_postfix(loss=f"{np.mean(window['loss']):.4g}",
                                    samples_s=f"{rate:.3g}", refresh=False)
                    if tracking:
                        self._log_scalars(window, rate, done)
                    if line_every and (done % line_every == 0 or done == self.steps):
                        spent = time.perf_counter() - run_start
                        left = spent / (done - start) * (self.steps - done)
                        logger.info("%s: step %d/%d, loss %.4g, %.3g samples/s, %s left", self.stage,
                                    done, self.steps, np.mean(window["loss"]), rate, _duration(left))
                    window, window_start, window_samples = {}, time.perf_counter(), 0
                if tracking and self.image_logger and self.image_every \
                        and done % self.image_every == 0:
                    self._log_images(done)
                elapsed = elapsed_before + time.perf_counter() - run_start
                if done == self.steps or (self.checkpoint_every and done % self.checkpoint_every == 0):
                    self._save(done, elapsed, samples)
        finally:
            bar.close()
            self._end_trackers()
        elapsed = elapsed_before + time.perf_counter() - run_start
        return self._finish(self._summary(self.steps, elapsed, samples, start))

    def _finish(self, summary: StageSummary) -> StageSummary:
        if self.accelerator.is_main_process:
            write_stage_summary(self.out_dir, summary)
        self.accelerator.wait_for_everyone()
        logger.info("%s", summary.line())
        return summary

    def _optimizer_step(self, batches: Iterator[Any], step: int,
                        ) -> tuple[float, dict[str, float], float, int]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns:
            ``(mean loss over processes and micro-batches, mean metrics, gradient norm, samples)``.
        """
        from accelerate.utils import send_to_device
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
        count = len(losses)
        return (sum(losses) / count, {k: v / count for k, v in metric_sums.items()}, grad_norm,
                samples)

    def _diverged(self, step: int, what: str) -> None:
        latest = latest_checkpoint(self.checkpoint_root)
        kept = (f"the last good checkpoint {latest} is kept; lower the learning rate and resume "
                f"(--resume)" if latest is not None else
                "no checkpoint was written yet; lower the learning rate and start again")
        raise TrainingDivergedError(f"stage {self.stage!r}: {what} at step {step + 1}, so training "
                                    f"stopped before updating the weights; {kept}")

    # --- logging ----------------------------------------------------------------------------------

    def _start_trackers(self, start: int) -> bool:
        """Start this stage's trackers on the main process (Accelerate's ``init_trackers``).
        TensorBoard drops events after ``start`` left by an interrupted run (``purge_step``)."""
        acc = self.accelerator
        if not acc.is_main_process or not self.trackers:
            return False
        acc.log_with = [_make_tracker(n, self.stage, self.out_dir, start or None)
                        for n in self.trackers]
        acc.trackers = []
        acc.init_trackers(self.stage)
        if self.config is not None:  # TensorBoard has it as config.yaml beside its logs
            for tracker in acc.trackers:
                if tracker.name != "tensorboard":
                    tracker.store_init_configuration(_flat(self.config))
        return True

    def _end_trackers(self) -> None:
        """Close this stage's trackers (not ``end_training``, which also ends DDP's process
        group that later stages still need)."""
        acc = self.accelerator
        for tracker in getattr(acc, "trackers", []):
            tracker.finish()
        acc.trackers = []

    def _log_scalars(self, window: Mapping[str, list[float]], rate: float, step: int) -> None:
        values = {}
        for key, items in window.items():
            finite = [v for v in items if math.isfinite(v)]
            if finite:
                values[f"train/{key}"] = float(np.mean(finite))
        values["train/lr"] = float(self.optimizer.param_groups[0]["lr"])
        values["train/samples_per_s"] = float(rate)
        self.accelerator.log(values, step=step)

    def _log_images(self, step: int) -> None:
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        modes = {n: m.training for n, m in self._prepared.items()}
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.ema_weights() as models:
            for module in models.values():
                module.eval()
            try:
                images = self.image_logger({**self._frozen, **models}, step)
            finally:
                for name, module in models.items():
                    module.train(modes[name])
        for tag, image in (images or {}).items():
            array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) \
                else np.asarray(image, dtype=np.float32)
            if array.ndim not in (2, 3):
                raise ValueError(f"image_logger's {tag!r} has shape {array.shape}; return (H, W) "
                                 f"or (C, H, W)")
            array = np.clip(array, 0.0, 1.0)
            for tracker in self.accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.tracker.add_image(f"samples/{tag}", array, step,
                                              dataformats="HW" if array.ndim == 2 else "CHW")
                elif hasattr(tracker, "log_images"):  # e.g. W&B: (H, W) or (H, W, C)
                    hwc = array if array.ndim == 2 else np.moveaxis(array, 0, -1)
                    tracker.log_images({f"samples/{tag}": [hwc]}, step=step)

    def _summary(self, steps: int, elapsed: float, samples: int, start: int) -> StageSummary:
        tail = self.history[-FINAL_LOSS_WINDOW:]
        return StageSummary(stage=self.stage, steps=steps, wall_time_s=round(elapsed, 3),
                            samples_per_s=samples / elapsed if elapsed > 0 else 0.0,
                            final_loss=float(np.mean(tail)) if tail else math.nan,
                            resumed_from=start)

    # --- checkpoints ------------------------------------------------------------------------------

    def _save(self, step: int, elapsed: float, samples: int) -> None:
        """Write a checkpoint (main process; every process contributes its RNG state)."""
        from accelerate.utils import gather_object
        acc = self.accelerator
        rng_tree, rng_tensors = capture_rng_state(acc.device)
        gathered = gather_object([(rng_tree, rng_tensors)])
        if acc.is_main_process:
            tensors: dict[str, dict[str, torch.Tensor]] = {}
            state: dict[str, Any] = {
                "stage": self.stage, "config": self.config, "seed": self.seed,
                "elapsed_s": elapsed, "samples": samples, "history": self.history,
                "models": {n: _signature(self.unwrap(n)) for n in self._prepared},
                "data": self.batches.state_dict(), "rng": [tree for tree, _ in gathered],
            }
            for name in self._prepared:
                tensors[f"model.{name}"] = self.unwrap(name).state_dict()
            tensors["rng"] = {f"rank{r}.{k}": t for r, (_, ts) in enumerate(gathered)
                              for k, t in ts.items()}
            sections = {"optimizer": self.optimizer.state_dict(),
                        **{f"ema.{n}": e.state_dict() for n, e in self._ema.items()}}
            if self.lr_scheduler is not None:
                sections["scheduler"] = self.lr_scheduler.state_dict()
            if acc.scaler is not None:
                sections["scaler"] = acc.scaler.state_dict()
            state["sections"] = {}
            for section, value in sections.items():
                tree, flat = flatten_state(value)
                state["sections"][section] = tree
                if flat:
                    tensors[section] = flat
            path = write_checkpoint(self.checkpoint_root, step, state, tensors,
                                    keep=self.keep_checkpoints)
            logger.debug("%s: checkpoint %s", self.stage, path)
        acc.wait_for_everyone()

    def _restore(self, path: Path) -> tuple[int, float, int]:
        """Load every state from a checkpoint; returns ``(step, elapsed seconds, samples)``."""
        acc = self.accelerator
        ckpt = read_checkpoint(path)
        state = ckpt.state
        if state.get("stage") != self.stage:
            raise ConfigError(f"{path}: a checkpoint of stage {state.get('stage')!r}, not "
                              f"{self.stage!r}; point to this stage's checkpoints")
        require_same_config(state.get("config"), self.config, f"checkpoint {path}")
        saved_models = state.get("models", {})
        if set(saved_models) != set(self._prepared):
            raise ModelError(f"{path}: the checkpoint trains {sorted(saved_models)}, this run "
                             f"{sorted(self._prepared)}; use the matching stage and config")
        for name in self._prepared:
            module = self.unwrap(name)
            diffs = config_differences(saved_models[name], _signature(module))
            if diffs:
                raise ModelError(f"{path}: model {name!r} was built differently "
                                 f"({'; '.join(diffs[:4])}); resume with the config that wrote "
                                 f"the checkpoint or use another output folder")
            weights = ckpt.tensors.get(f"model.{name}", {})
            check_tensors_match(f"model {name!r}", module.state_dict(), weights, path)
            module.load_state_dict(weights, strict=True)
        sections = state.get("sections", {})
        try:
            self.optimizer.load_state_dict(self._section(ckpt, "optimizer"))
            if self.lr_scheduler is not None:
                if "scheduler" not in sections:
                    raise ModelError(f"{path}: the checkpoint has no LR scheduler state, this run "
                                     f"uses one; resume with the config that wrote it")
                self.lr_scheduler.load_state_dict(self._section(ckpt, "scheduler"))
            if acc.scaler is not None and "scaler" in sections:
                acc.scaler.load_state_dict(self._section(ckpt, "scaler"))
        except (ValueError, KeyError, RuntimeError) as exc:
            if isinstance(exc, MambaControlError):
                raise
            raise ModelError(f"{path}: optimizer/scheduler state does not fit this run "
                             f"({str(exc).splitlines()[0]}); resume with the config that wrote "
                             f"it") from None
        for name, ema in self._ema.items():
            if f"ema.{name}" not in sections:
                raise ModelError(f"{path}: the checkpoint has no EMA of {name!r}; resume with the "
                                 f"config that wrote it")
            saved = self._section(ckpt, f"ema.{name}")
            shadow = saved.get("shadow_params", [])
            expected = {str(i): p for i, p in enumerate(ema.shadow_params)}
            check_tensors_match(f"EMA of {name!r}", expected,
                                {str(i): p for i, p in enumerate(shadow)}, path)
            ema.load_state_dict(saved)
            ema.to(acc.device)
        self.batches.load_state_dict(state["data"])
        self.history = [float(v) for v in state.get("history", [])]
        rank = acc.process_index
        ranks = state.get("rng", [])
        if rank < len(ranks):
            restore_rng_state(ranks[rank], {k.split(".", 1)[1]: t for k, t in
                                            ckpt.tensors.get("rng", {}).items()
                                            if k.startswith(f"rank{rank}.")}, acc.device)
        else:
            from accelerate.utils import set_seed
            logger.warning("%s: the checkpoint holds RNG states of %d processes, this is process "
                           "%d: seeding it afresh", self.stage, len(ranks), rank)
            set_seed(self.seed + 1000 * ckpt.step + rank)
        return ckpt.step, float(state.get("elapsed_s", 0.0)), int(state.get("samples", 0))

    def _section(self, ckpt: Any, name: str) -> Any:
        return unflatten_state(ckpt.state["sections"][name], ckpt.tensors.get(name, {}))


# --- helpers -------------------------------------------------------------------------------------

def _resolve_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _signature(module: nn.Module) -> dict[str, Any]:
    """Class name and (for ``ConfigMixin`` models) the JSON-able part of the config."""
    out: dict[str, Any] = {"class": type(module).__name__}
    config = getattr(module, "config", None)
    if isinstance(config, Mapping):
        plain = {}
        for key, value in config.items():
            if key.startswith("_"):
                continue
            try:
                plain[key] = json.loads(json.dumps(value))
            except (TypeError, ValueError):
                continue
        out["config"] = plain
    return out


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


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"

