"""``controlnet.train.graph_lr``: the graph encoder trained with the ControlNet."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from mambacontrol.errors import ConfigError
from mambacontrol.pipeline.progression import ProgressionPipeline
from mambacontrol.training.config import dump_config
from mambacontrol.training.runner import TrainingRun, resolve_config
from mambacontrol.training.stage_graph import TUNED_MARKER
from mambacontrol.training.validate import validate_run_config

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _weights(folder):
    return load_file(str(folder / WEIGHTS))


def _without_controlnet(tiny_model, dest, cfg):
    """The tiny model's run folder up to the ControlNet's inputs, recorded with ``cfg``."""
    shutil.copytree(tiny_model, dest,
                    ignore=shutil.ignore_patterns("controlnet", "controlnet.json"))
    (dest / "config.yaml").write_text(dump_config(cfg))
    return dest


@pytest.fixture(scope="module")
def tuned(tiny_model, tiny_cohort, tiny_run_config, tmp_path_factory):
    cfg = resolve_config(tiny_run_config, ["controlnet.train.graph_lr=0.01"],
                         manifest=tiny_cohort)
    run = _without_controlnet(tiny_model, tmp_path_factory.mktemp("tuned") / "run", cfg)
    TrainingRun(cfg, run).run("controlnet")
    return run, cfg


def test_the_encoder_learns_with_the_controlnet_and_is_saved(tuned, tiny_model):
    run, _ = tuned
    before, after = _weights(tiny_model / "graph_encoder"), _weights(run / "graph_encoder")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    # the painted node embeddings and the pooled tokens both received gradients
    assert "node_identity" in moved and "token_queries" in moved
    assert any(k.startswith("pool.") for k in moved) and any(k.startswith("layers.") for k in moved)
    head_before, head_after = (_weights(f / "trajectory_head") for f in (tiny_model, run))
    assert all(torch.equal(head_before[k], head_after[k]) for k in head_before)  # frozen
    assert (run / "graph_encoder" / TUNED_MARKER).is_file()
    assert not (tiny_model / "graph_encoder" / TUNED_MARKER).exists()  # graph_lr 0: untouched
    pipe = ProgressionPipeline.from_pretrained(run)
    assert pipe.controlnet is not None
    for k, v in pipe.graph_encoder.state_dict().items():
        if k in after:
            torch.testing.assert_close(v, after[k])


def test_the_encoders_learning_rate_is_logged(tuned):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tuned
    events = EventAccumulator(str(run / "logs" / "controlnet"))
    events.Reload()
    assert {"train/lr", "train/lr_graph_encoder"} <= set(events.Tags()["scalars"])


def test_a_tuned_encoder_is_not_tuned_again_from_scratch(tuned, tiny_cohort, tiny_run_config,
                                                         tmp_path):
    run, cfg = tuned
    again = shutil.copytree(run, tmp_path / "again")
    shutil.rmtree(again / "checkpoints" / "controlnet")
    (again / "stages" / "controlnet.json").unlink()
    with pytest.raises(ConfigError, match="already trained with a ControlNet.*train graph"):
        TrainingRun(cfg, again).run("controlnet")
    TrainingRun(cfg, again).run("graph")  # the graph stage's own encoder again
    assert not (again / "graph_encoder" / TUNED_MARKER).exists()


@pytest.mark.parametrize("overrides, message", [
    (["controlnet.train.graph_lr=-1"], "controlnet.train.graph_lr: -1.0 must be a number ≥ 0"),
    (["controlnet.train.graph_trajectory_weight=.nan"], "graph_trajectory_weight: nan must be"),
    (["controlnet.train.graph_lr=1e-4", "graph.enabled=false"],
     "controlnet.train.graph_lr: there is no graph encoder to train"),
])
def test_graph_tuning_settings_are_checked(tiny_run_config, tiny_cohort, overrides, message):
    cfg = resolve_config(tiny_run_config, overrides, manifest=tiny_cohort)
    with pytest.raises(ConfigError, match=message):
        validate_run_config(cfg)
