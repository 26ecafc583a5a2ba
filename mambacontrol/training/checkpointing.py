"""Save and restore everything a stage's run needs to continue exactly where it stopped.

A :class:`StageCheckpoints` writes, through :mod:`~mambacontrol.training.checkpoint`'s pickle-free
files, the trained models' weights, the optimizer, LR scheduler, EMA and gradient-scaler states,
the batch order, every process's RNG states and the run's progress (step, elapsed time, samples,
loss history), and checks on restore that the checkpoint was written by this stage, with this
config and these models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from accelerate.utils import gather_object, set_seed
from torch import nn

from mambacontrol.errors import ConfigError, MambaControlError, ModelError
from mambacontrol.training.checkpoint import (
    Checkpoint,
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


class ResumableBatchSource(Protocol):
    """What a run needs from its batches: an endless iterable with a JSON-able state."""

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class TrainingParts:
    """The stateful parts of a run that a checkpoint holds.

    Attributes:
        models: the trained modules by name, unwrapped (no DDP wrapper).
        optimizer: the optimizer (Accelerate's wrapper or a plain one).
        lr_scheduler: the LR scheduler, or None.
        ema: name → diffusers ``EMAModel`` of that model.
        batches: the batch stream.
    """

    models: Mapping[str, nn.Module]
    optimizer: Any
    lr_scheduler: Any | None
    ema: Mapping[str, Any]
    batches: ResumableBatchSource


@dataclass
class RunProgress:
    """How far a stage's run has come.

    Attributes:
        step: optimizer steps done.
        elapsed_s: training time so far, summed over resumed runs.
        samples: training samples seen (all processes).
        history: the loss of every optimizer step.
    """

    step: int = 0
    elapsed_s: float = 0.0
    samples: int = 0
    history: list[float] = field(default_factory=list)


class StageCheckpoints:
    """The checkpoints of one stage in ``root`` (``step-000123/`` folders).

    Args:
        root: the stage's checkpoint folder, ``<out_dir>/checkpoints/<stage>``.
        stage: the stage name, recorded and checked on restore.
        every: optimizer steps between checkpoints (0: only at the end).
        keep: how many checkpoints to keep.
        config: JSON-able config recorded in every checkpoint; restoring with another is refused.
        seed: seeds a process the checkpoint holds no RNG state of.
    """

    def __init__(self, root: Path, stage: str, *, every: int, keep: int,
                 config: Mapping[str, Any] | None, seed: int | None):
        self.root = root
        self.stage = stage
        self.every = every
        self.keep = keep
        self.config = config
        self.seed = seed or 0

    def latest(self) -> Path | None:
        """The newest checkpoint folder, or None."""
        return latest_checkpoint(self.root)

    def due(self, done: int, steps: int) -> bool:
        """Whether a checkpoint is written after step ``done`` of ``steps``."""
        return done == steps or bool(self.every and done % self.every == 0)

    def save(self, accelerator: Any, parts: TrainingParts, progress: RunProgress) -> None:
        """Write a checkpoint (main process; every process contributes its RNG state)."""
        rng = capture_rng_state(accelerator.device)
        gathered = gather_object([rng]) if accelerator.num_processes > 1 else [rng]
        if accelerator.is_main_process:
            state: dict[str, Any] = {
                "stage": self.stage, "config": self.config, "seed": self.seed,
                "elapsed_s": progress.elapsed_s, "samples": progress.samples,
                "history": progress.history,
                "models": {n: module_signature(m) for n, m in parts.models.items()},
                "data": parts.batches.state_dict(), "rng": [tree for tree, _ in gathered],
            }
            tensors = {f"model.{n}": m.state_dict() for n, m in parts.models.items()}
            tensors["rng"] = {f"rank{r}.{k}": t for r, (_, ts) in enumerate(gathered)
                              for k, t in ts.items()}
            state["sections"] = {}
            for section, value in _sections(accelerator, parts).items():
                tree, flat = flatten_state(value)
                state["sections"][section] = tree
                if flat:
                    tensors[section] = flat
            path = write_checkpoint(self.root, progress.step, state, tensors, keep=self.keep)
            logger.debug("%s: checkpoint %s", self.stage, path)
        accelerator.wait_for_everyone()

    def restore(self, path: Path, accelerator: Any, parts: TrainingParts) -> RunProgress:
        """Load every state from the checkpoint at ``path`` into ``parts`` and this process's
        RNGs.

        Raises:
            ConfigError: the checkpoint belongs to another stage or config.
            ModelError: it is corrupt, or was written for other models or optimizer settings.
        """
        ckpt = read_checkpoint(path)
        state = ckpt.state
        if state.get("stage") != self.stage:
            raise ConfigError(f"{path}: a checkpoint of stage {state.get('stage')!r}, not "
                              f"{self.stage!r}; point to this stage's checkpoints")
        require_same_config(_recorded_part(state.get("config"), self.config), self.config,
                            f"checkpoint {path}")
        _load_models(ckpt, parts.models)
        _load_optimizer_states(ckpt, accelerator, parts)
        _load_ema(ckpt, accelerator, parts.ema)
        parts.batches.load_state_dict(state["data"])
        self._restore_rng(ckpt, accelerator)
        return RunProgress(ckpt.step, float(state.get("elapsed_s", 0.0)),
                           int(state.get("samples", 0)),
                           [float(v) for v in state.get("history", [])])

    def _restore_rng(self, ckpt: Checkpoint, accelerator: Any) -> None:
        rank = accelerator.process_index
        ranks = ckpt.state.get("rng", [])
        if rank < len(ranks):
            restore_rng_state(ranks[rank], {k.split(".", 1)[1]: t for k, t in
                                            ckpt.tensors.get("rng", {}).items()
                                            if k.startswith(f"rank{rank}.")}, accelerator.device)
        else:
            logger.warning("%s: the checkpoint holds RNG states of %d processes, this is process "
                           "%d: seeding it afresh", self.stage, len(ranks), rank)
            set_seed(self.seed + 1000 * ckpt.step + rank)


def _recorded_part(saved: Any, current: Any) -> Any:
    """The sections of a checkpoint's ``saved`` config that this run records in ``current``.

    Checkpoints written before a stage recorded only its own sections hold the whole run config;
    the sections this run does not record do not decide its result and are not compared. A
    section this run records and the checkpoint lacks stays a difference."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return {key: value for key, value in saved.items() if key in current}
    return saved


def module_signature(module: nn.Module) -> dict[str, Any]:
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


def _sections(accelerator: Any, parts: TrainingParts) -> dict[str, Any]:
    """The optimizer, EMA, LR scheduler and gradient scaler states, by section name."""
    sections = {"optimizer": parts.optimizer.state_dict(),
                **{f"ema.{n}": e.state_dict() for n, e in parts.ema.items()}}
    if parts.lr_scheduler is not None:
        sections["scheduler"] = parts.lr_scheduler.state_dict()
    if accelerator.scaler is not None:
        sections["scaler"] = accelerator.scaler.state_dict()
    return sections


def _section(ckpt: Checkpoint, name: str) -> Any:
    return unflatten_state(ckpt.state["sections"][name], ckpt.tensors.get(name, {}))


def _load_models(ckpt: Checkpoint, models: Mapping[str, nn.Module]) -> None:
    """Each trained model's weights, after checking it was built the same way."""
    path = ckpt.path
    saved_models = ckpt.state.get("models", {})
    if set(saved_models) != set(models):
        raise ModelError(f"{path}: the checkpoint trains {sorted(saved_models)}, this run "
                         f"{sorted(models)}; use the matching stage and config")
    for name, module in models.items():
        diffs = config_differences(saved_models[name], module_signature(module))
        if diffs:
            raise ModelError(f"{path}: model {name!r} was built differently "
                             f"({'; '.join(diffs[:4])}); resume with the config that wrote "
                             f"the checkpoint or use another output folder")
        weights = ckpt.tensors.get(f"model.{name}", {})
        check_tensors_match(f"model {name!r}", module.state_dict(), weights, path)
        module.load_state_dict(weights, strict=True)


def _load_optimizer_states(ckpt: Checkpoint, accelerator: Any, parts: TrainingParts) -> None:
    """The optimizer, LR scheduler and gradient scaler states."""
    path = ckpt.path
    sections = ckpt.state.get("sections", {})
    try:
        parts.optimizer.load_state_dict(_section(ckpt, "optimizer"))
        if parts.lr_scheduler is not None:
            if "scheduler" not in sections:
                raise ModelError(f"{path}: the checkpoint has no LR scheduler state, this run "
                                 f"uses one; resume with the config that wrote it")
            parts.lr_scheduler.load_state_dict(_section(ckpt, "scheduler"))
        if accelerator.scaler is not None and "scaler" in sections:
            accelerator.scaler.load_state_dict(_section(ckpt, "scaler"))
    except (ValueError, KeyError, RuntimeError) as exc:
        if isinstance(exc, MambaControlError):
            raise
        raise ModelError(f"{path}: optimizer/scheduler state does not fit this run "
                         f"({str(exc).splitlines()[0]}); resume with the config that wrote "
                         f"it") from None


def _load_ema(ckpt: Checkpoint, accelerator: Any, ema: Mapping[str, Any]) -> None:
    """Every EMA's shadow weights, after checking their shapes."""
    sections = ckpt.state.get("sections", {})
    for name, model_ema in ema.items():
        if f"ema.{name}" not in sections:
            raise ModelError(f"{ckpt.path}: the checkpoint has no EMA of {name!r}; resume with "
                             f"the config that wrote it")
        saved = _section(ckpt, f"ema.{name}")
        shadow = saved.get("shadow_params", [])
        expected = {str(i): p for i, p in enumerate(model_ema.shadow_params)}
        check_tensors_match(f"EMA of {name!r}", expected,
                            {str(i): p for i, p in enumerate(shadow)}, ckpt.path)
        model_ema.load_state_dict(saved)
        model_ema.to(accelerator.device)
