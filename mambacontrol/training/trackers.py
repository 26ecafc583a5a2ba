"""A stage's experiment trackers (Accelerate's): scalars and images for TensorBoard, W&B, MLflow.

:class:`StageTrackers` starts the trackers of one stage on the main process (TensorBoard into
``<out_dir>/logs/<stage>/``), logs to them and closes them at the end of the stage;
:func:`check_trackers` refuses an unknown or uninstalled tracker before anything runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

from mambacontrol.errors import ConfigError

#: experiment trackers (Accelerate's) a run may log to, and the module each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(names: Sequence[str], key: str = "engine.trackers") -> list[str]:
    """The tracker names, checked: known to the engine, and installed.

    Raises:
        ConfigError: one line naming the tracker and the fix.
    """
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


class StageTrackers:
    """The experiment trackers of one stage, through an ``accelerate.Accelerator``.

    Args:
        accelerator: the run's accelerator (its ``trackers`` are replaced by this stage's).
        names: tracker names (:data:`TRACKERS`), already checked.
        stage: the stage name; names the TensorBoard folder and the W&B/MLflow run.
        out_dir: the run directory (TensorBoard writes into ``<out_dir>/logs/<stage>/``).
        config: JSON-able config given to the trackers other than TensorBoard.
    """

    def __init__(self, accelerator: Any, names: Sequence[str], stage: str, out_dir: Path | None,
                 config: Mapping[str, Any] | None):
        self.accelerator = accelerator
        self.names = list(names)
        self.stage = stage
        self.out_dir = out_dir
        self.config = config
        self.active = False

    def start(self, start_step: int) -> bool:
        """Start the trackers on the main process (Accelerate's ``init_trackers``); TensorBoard
        drops events after ``start_step`` left by an interrupted run (``purge_step``).

        Returns:
            Whether any tracker logs in this process.
        """
        acc = self.accelerator
        if not acc.is_main_process or not self.names:
            return False
        acc.log_with = [_make_tracker(n, self.stage, self.out_dir, start_step or None)
                        for n in self.names]
        acc.trackers = []
        acc.init_trackers(self.stage)
        if self.config is not None:  # TensorBoard has it as config.yaml beside its logs
            for tracker in acc.trackers:
                if tracker.name != "tensorboard":
                    tracker.store_init_configuration(_flat(self.config))
        self.active = True
        return True

    def end(self) -> None:
        """Close this stage's trackers (not ``end_training``, which also ends DDP's process
        group that later stages still need)."""
        acc = self.accelerator
        for tracker in getattr(acc, "trackers", []):
            tracker.finish()
        acc.trackers = []
        self.active = False

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """``{tag: value}`` at ``step``."""
        self.accelerator.log(dict(values), step=step)

    def log_images(self, images: Mapping[str, Any], step: int) -> None:
        """``{tag: (H, W) or (C, H, W) in [0, 1]}`` (tensors or arrays) as ``samples/<tag>``.

        Raises:
            ValueError: for an image of another shape.
        """
        for tag, image in images.items():
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


def _make_tracker(name: str, stage: str, out_dir: Path, purge_step: int | None) -> Any:
    """An Accelerate tracker for one stage: TensorBoard in ``<out>/logs/<stage>``; W&B project
    ``$WANDB_PROJECT`` (default ``mambacontrol``), MLflow experiment ``$MLFLOW_EXPERIMENT_NAME``
    (default ``mambacontrol``), each run named ``<run folder>/<stage>``."""
    logs = out_dir / "logs"
    run = out_dir.resolve().name
    if name == "tensorboard":
        return TensorBoardTracker(stage, logs, purge_step=purge_step)
    if name == "wandb":
        logs.mkdir(parents=True, exist_ok=True)
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
