import json
import math
import shutil

import numpy as np
import pytest
import torch
from diffusers.configuration_utils import register_to_config
from monai.transforms import Compose, RandFlipd, RandSpatialCropd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mambacontrol.errors import ConfigError, ModelError
from mambacontrol.nn.component import Component
from mambacontrol.training import checkpoint as ckpt_mod
from mambacontrol.training.checkpoint import list_checkpoints, read_checkpoint
from mambacontrol.training.data_order import ResumableBatches
from mambacontrol.training.engine import (
    StageSummary,
    Trainer,
    TrainingDivergedError,
    learning_rates,
    read_stage_summary,
    write_stage_summary,
)


class ToyNet(Component):
    @register_to_config
    def __init__(self, channels: int = 4, dropout: float = 0.2):
        super().__init__()
        self.conv1 = torch.nn.Conv3d(1, channels, 3, padding=1)
        self.drop = torch.nn.Dropout(dropout)
        self.conv2 = torch.nn.Conv3d(channels, 1, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.drop(torch.relu(self.conv1(x))))


class Killed(Exception):
    """Stands in for a killed process."""


DATA = [{"x": np.random.default_rng(i).normal(size=(1, 6, 6, 6)).astype(np.float32)}
        for i in range(5)]


def make_trainer(out, *, init_seed=0, steps=20, kill_at=None, nan_at=None, inf_grad_at=None,
                 batch_size=2, accumulate=2, augment=True, image_logger=None, stage="toy",
                 config=None, net_kwargs=None, checkpoint_every=5, keep=3):
    torch.manual_seed(1)
    frozen = torch.nn.Conv3d(1, 1, 1)               # frozen parts come from earlier stages
    torch.manual_seed(init_seed)
    net = ToyNet(**(net_kwargs or {}))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4) * 0.9 ** s)
    crop = Compose([RandSpatialCropd("x", (4, 4, 4), random_size=False), RandFlipd("x", prob=0.5)])
    batches = ResumableBatches(DATA, batch_size, seed=3, augment=crop if augment else None)

    def step_fn(batch, models, step):
        if step == kill_at:
            raise Killed()
        x = batch["x"]
        pred = models["net"](x)
        if step == inf_grad_at:
            pred.register_hook(lambda g: g * math.inf)
        loss = torch.nn.functional.mse_loss(pred, models["target"](x.flip(-1)))
        if step == nan_at:
            loss = loss * math.nan
        return loss, {"mse": loss.item()}

    return Trainer(stage, {"net": net}, opt, step_fn, batches, out, steps=steps, lr_scheduler=sched,
                   frozen={"target": frozen}, checkpoint_every=checkpoint_every,
                   keep_checkpoints=keep,
                   log_every=5, image_every=10 if image_logger else 0, image_logger=image_logger,
                   seed=0, mixed_precision="no", gradient_accumulation_steps=accumulate,
                   ema=("net",), ema_decay=0.9, config={"lr": 0.01} if config is None else config)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.unwrap("net").state_dict().items()}


def ema_weights(trainer):
    with trainer.ema_weights() as models:
        return {k: v.clone() for k, v in models["net"].state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    trainer = make_trainer(out)
    summary = trainer.run()
    return out, trainer, summary


def test_killed_run_resumed_gives_the_same_losses_weights_and_ema(full_run, tmp_path):
    _, full, _ = full_run
    killed = make_trainer(tmp_path, kill_at=12)
    with pytest.raises(Killed):
        killed.run()
    assert killed.history == full.history[:12]                 # same seed, same curve
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints/toy")] == [5, 10]
    resumed = make_trainer(tmp_path, init_seed=99)             # other initial weights
    summary = resumed.run(resume=True)
    assert resumed.history == full.history                     # bit-identical on CPU
    assert same(weights(resumed), weights(full))
    assert same(ema_weights(resumed), ema_weights(full))
    assert not same(ema_weights(full), weights(full))
    assert summary.steps == 20 and summary.resumed_from == 10
    opt_a, opt_b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert all(torch.equal(opt_a["state"][i]["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])
               for i in opt_a["state"])


def test_crash_while_saving_keeps_the_previous_checkpoint_and_resumes_exactly(
        full_run, tmp_path, monkeypatch):
    _, full, _ = full_run
    real = ckpt_mod.save_file

    def crash_at_step_10(tensors, path):
        if "step-000010" in path and path.endswith("optimizer.safetensors"):
            raise OSError("killed while writing")
        real(tensors, path)

    monkeypatch.setattr(ckpt_mod, "save_file", crash_at_step_10)
    with pytest.raises(OSError, match="killed while writing"):
        make_trainer(tmp_path).run()
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert [p.name for p in (tmp_path / "checkpoints/toy").iterdir()] == ["step-000005"]
    resumed = make_trainer(tmp_path, init_seed=7)
    assert resumed.run(resume=True).resumed_from == 5
    assert resumed.history == full.history and same(weights(resumed), weights(full))


def test_layout_summary_and_kept_checkpoints(full_run):
    out, full, summary = full_run
    assert [s for s, _ in list_checkpoints(out / "checkpoints/toy")] == [10, 15, 20]
    files = sorted(p.name for p in (out / "checkpoints/toy/step-000020").iterdir())
    assert files == ["ema.net.safetensors", "model.net.safetensors", "optimizer.safetensors",
                     "rng.safetensors", "state.json"]                      # frozen not saved
    state = read_checkpoint(out / "checkpoints/toy/step-000020").state
    assert state["data"]["epoch"] == 16 and state["models"]["net"]["config"]["channels"] == 4
    # The trainer does not mark the stage finished: its caller does, after saving its models.
    assert read_stage_summary(out, "toy") is None and not (out / "stages").exists()
    assert summary.steps == 20 and summary.samples_per_s > 0
    assert summary.final_loss == pytest.approx(np.mean(full.history))      # 20 steps ≤ window
    assert summary.line().startswith("toy: 20 steps in ") and "\n" not in summary.line()


def test_stage_summary_round_trips(tmp_path, full_run):
    _, _, summary = full_run
    write_stage_summary(tmp_path, summary)
    assert read_stage_summary(tmp_path, "toy") == summary
    assert read_stage_summary(tmp_path, "other") is None
    assert StageSummary.from_dict(json.loads((tmp_path / "stages/toy.json").read_text())) == summary


def test_resume_of_a_finished_stage_trains_nothing(full_run):
    out, full, summary = full_run
    again = make_trainer(out, init_seed=5)
    assert again.run(resume=True).steps == 20
    assert again.history == full.history and same(weights(again), weights(full))


def test_fresh_run_refuses_to_overwrite_checkpoints(full_run):
    out, _, _ = full_run
    with pytest.raises(ConfigError, match="already holds checkpoints \\(latest step-000020\\); "
                                          "resume them"):
        make_trainer(out).run()


def test_tensorboard_logs_and_images_leave_training_rng_alone(full_run, tmp_path):
    _, full, _ = full_run
    calls = []

    def image_logger(models, step):
        calls.append((step, models["net"].training, torch.is_grad_enabled()))
        torch.rand(100)                                        # must not shift the training RNG
        x = torch.from_numpy(DATA[0]["x"])[None]
        return {"pred": models["net"](x)[0, 0, :, :, 3].sigmoid()}

    trainer = make_trainer(tmp_path, image_logger=image_logger)
    trainer.run()
    assert trainer.history == full.history
    assert calls == [(10, False, False), (20, False, False)]
    events = EventAccumulator(str(tmp_path / "logs/toy"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/grad_norm",
            "train/mse"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    assert events.Scalars("train/loss")[-1].value == pytest.approx(np.mean(full.history[15:]))
    assert [e.step for e in events.Images("samples/pred")] == [10, 20]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError) as err:
        make_trainer(tmp_path, nan_at=6).run()
    msg = str(err.value)
    assert "stage 'toy': the loss became nan at step 7" in msg and "\n" not in msg
    assert "step-000005 is kept; lower the learning rate and resume" in msg
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints/toy")] == [5]
    assert read_stage_summary(tmp_path, "toy") is None
    assert make_trainer(tmp_path, steps=8).run(resume=True).steps == 8


def test_infinite_gradients_stop_before_the_weights_change(tmp_path):
    trainer = make_trainer(tmp_path, inf_grad_at=2, checkpoint_every=1)
    with pytest.raises(TrainingDivergedError, match="gradient norm became (inf|nan) at step 3.*"
                                                    "step-000002 is kept"):
        trainer.run()
    saved = read_checkpoint(tmp_path / "checkpoints/toy/step-000002").tensors["model.net"]
    assert same(saved, weights(trainer))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # both built before either runs: Accelerate's gradient state is shared by the process
    a = make_trainer(tmp_path / "a", steps=3, batch_size=2, accumulate=2,
                     net_kwargs={"dropout": 0.0})
    b = make_trainer(tmp_path / "b", steps=3, batch_size=4, accumulate=1,
                     net_kwargs={"dropout": 0.0})
    a.run()
    b.run()
    assert a.history == pytest.approx(b.history, rel=1e-5)
    for k, v in weights(a).items():
        torch.testing.assert_close(v, weights(b)[k], rtol=1e-5, atol=1e-6)


@pytest.fixture
def five_steps(tmp_path):
    make_trainer(tmp_path, steps=5).run()
    return tmp_path


def test_resume_with_another_config_is_refused(five_steps):
    with pytest.raises(ConfigError, match="step-000005 was started with another config "
                                          "\\(lr: 0.01 -> 0.02\\)"):
        make_trainer(five_steps, steps=5, config={"lr": 0.02}).run(resume=True)


def test_resume_compares_the_sections_this_run_records(tmp_path):
    # an older checkpoint recorded sections (here "later") that this run no longer records
    make_trainer(tmp_path, steps=5, config={"lr": 0.01, "later": {"x": 1}}).run()
    resumed = make_trainer(tmp_path, steps=6, config={"lr": 0.01})
    resumed.run(resume=True)
    assert len(resumed.history) == 6
    with pytest.raises(ConfigError, match="another config \\(extra: <absent> -> 2\\)"):
        make_trainer(tmp_path, steps=7, config={"lr": 0.01, "extra": 2}).run(resume=True)


@pytest.mark.parametrize("net_kwargs, expected", [
    ({"channels": 8}, "model 'net' was built differently \\(config.channels: 4 -> 8\\)"),
    ({"dropout": 0.5}, "config.dropout: 0.2 -> 0.5"),
])
def test_resume_with_another_model_is_refused(five_steps, net_kwargs, expected):
    with pytest.raises(ModelError, match=expected):
        make_trainer(five_steps, steps=5, net_kwargs=net_kwargs).run(resume=True)


def test_resume_into_another_stage_is_refused(five_steps):
    shutil.copytree(five_steps / "checkpoints/toy", five_steps / "checkpoints/other")
    with pytest.raises(ConfigError, match="a checkpoint of stage 'toy', not 'other'"):
        make_trainer(five_steps, steps=5, stage="other").run(resume=True)


def test_resume_from_a_corrupt_checkpoint_is_refused(five_steps):
    weights_file = five_steps / "checkpoints/toy/step-000005/model.net.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:50])
    with pytest.raises(ModelError, match="model.net.safetensors: 50 bytes, .* \\(truncated\\?\\); "
                                         "delete this folder"):
        make_trainer(five_steps, steps=5).run(resume=True)
    (five_steps / "checkpoints/toy/step-000005/state.json").unlink()
    with pytest.raises(ModelError, match="state.json is missing"):
        make_trainer(five_steps, steps=5).run(resume=True)


def test_bad_arguments(tmp_path):
    net = ToyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    batches = ResumableBatches(DATA, 2)
    with pytest.raises(ValueError, match="ema names \\['other'\\]"):
        Trainer("t", {"net": net}, opt, lambda *a: None, batches, tmp_path, steps=1, ema=("other",))
    with pytest.raises(ValueError, match="batches must be resumable"):
        Trainer("t", {"net": net}, opt, lambda *a: None, [1, 2], tmp_path, steps=1)
    with pytest.raises(ValueError, match="config must be JSON-able"):
        Trainer("t", {"net": net}, opt, lambda *a: None, batches, tmp_path, steps=1,
                config={"x": object()})
    with pytest.raises(ValueError, match="steps must be ≥ 1"):
        Trainer("t", {"net": net}, opt, lambda *a: None, batches, tmp_path, steps=0)


def test_without_a_terminal_progress_goes_to_the_log(tmp_path, caplog):
    caplog.set_level("INFO", logger="mambacontrol.training.progress")
    make_trainer(tmp_path / "run", steps=20).run()     # pytest's output is not a terminal
    lines = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == ["toy: step 5/20", "toy: step 10/20",
                                                      "toy: step 15/20", "toy: step 20/20"]
    assert all("samples/s" in line and "left" in line for line in lines)


def test_every_parameter_group_logs_its_learning_rate():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 1e-4, "name": "graph"},
                             {"params": [c], "lr": 2e-4}], lr=1e-3)
    assert learning_rates(opt) == {"train/lr": 1e-3, "train/lr_graph": 1e-4, "train/lr_2": 2e-4}
