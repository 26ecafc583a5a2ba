"""Experiment trackers: Accelerate's, TensorBoard by default, checked before a run starts."""

import importlib.util

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mambacontrol.errors import ConfigError
from mambacontrol.training.config import load_config
from mambacontrol.training.data_order import ResumableBatches
from mambacontrol.training.engine import Trainer
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.trackers import TRACKERS, check_trackers

DATA = [{"x": np.full((1, 4), float(i), dtype=np.float32)} for i in range(4)]


def trainer(out, **kwargs):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)

    def step_fn(batch, models, step):
        loss = models["net"](batch["x"]).pow(2).mean()
        return loss, {}

    return Trainer("toy", {"net": net}, torch.optim.SGD(net.parameters(), lr=0.01), step_fn,
                   ResumableBatches(DATA, 2, seed=0), out, steps=4, log_every=2,
                   checkpoint_every=0, mixed_precision="no", **kwargs)


def test_tensorboard_by_default_through_accelerate(tmp_path):
    t = trainer(tmp_path)
    assert t.trackers == ["tensorboard"]
    t.run()
    events = EventAccumulator(str(tmp_path / "logs" / "toy"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert t.accelerator.trackers == []  # closed at the end of the stage


def test_no_trackers_no_logs(tmp_path):
    trainer(tmp_path, trackers=()).run()
    assert not (tmp_path / "logs").exists()


def test_unknown_or_missing_tracker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment tracker 'tensorbored'; choose from "
                                          "tensorboard, wandb, mlflow"):
        check_trackers(["tensorbored"], "engine.trackers")
    with pytest.raises(ConfigError, match="names a tracker twice"):
        check_trackers(["tensorboard", "tensorboard"])
    with pytest.raises(ConfigError, match="trackers: unknown"):
        trainer(tmp_path, trackers=("nope",))

def test_uninstalled_tracker_is_refused(monkeypatch):
    """wandb stands for any tracker missing here (made missing whether or not it is installed)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == TRACKERS["wandb"] else real(name, *a))
    with pytest.raises(ConfigError) as err:
        check_trackers(["tensorboard", "wandb"], "engine.trackers")
    assert str(err.value) == ("engine.trackers: experiment tracker 'wandb' is not installed; "
                              "`pip install wandb`, or remove it from engine.trackers")


def test_config_default_and_override(tmp_path):
    assert load_config(RunConfig).engine.trackers == ["tensorboard"]
    assert load_config(RunConfig, overrides=["engine.trackers=[]"]).engine.trackers == []


def test_trackers_may_change_when_a_run_continues(tiny_model, tiny_cohort, tiny_run_config,
                                                  tmp_path):
    import shutil

    from mambacontrol.training.runner import TrainingRun, resolve_config

    run = shutil.copytree(tiny_model, tmp_path / "run")
    cfg = resolve_config(tiny_run_config, ["engine.trackers=[]"], manifest=tiny_cohort)
    assert TrainingRun(cfg, run).run("all") == []
    assert load_config(RunConfig, run / "config.yaml").engine.trackers == []
    state = (run / "checkpoints" / "unet").glob("step-*/state.json")
    assert all("trackers" not in s.read_text() for s in state)  # not what decides the results
    other = resolve_config(tiny_run_config, ["engine.trackers=[]", "unet.train.lr=0.5"],
                           manifest=tiny_cohort)
    with pytest.raises(ConfigError, match="another config.*unet.train.lr"):
        TrainingRun(other, run).run("unet")
