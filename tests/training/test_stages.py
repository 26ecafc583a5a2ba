"""Every training stage on a tiny config: order, outputs, resume, refusals."""

import shutil

import numpy as np
import pytest
import torch

from mambacontrol.errors import ConfigError, ModelError
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.progression import ProgressionPipeline
from mambacontrol.training.config import dump_config
from mambacontrol.training.runner import (
    STAGE_SECTIONS,
    STAGES,
    TrainingRun,
    resolve_config,
    stage_config,
)
from mambacontrol.training.validate import validate_run_config


def test_all_stages_write_a_loadable_model(tiny_model):
    for stage in STAGES:
        assert (tiny_model / "stages" / f"{stage}.json").is_file()
    for comp in ("autoencoder", "unet", "controlnet", "graph_encoder", "trajectory_head"):
        assert (tiny_model / comp / "config.json").is_file()
    assert (tiny_model / "config.yaml").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for stage, tag in (("autoencoder", "samples/reconstruction"),
                       ("unet", "samples/target_vs_estimate"),
                       ("controlnet", "samples/target_vs_estimate")):
        events = EventAccumulator(str(tiny_model / "logs" / stage))
        events.Reload()
        assert tag in events.Tags()["images"], events.Tags()
        assert "train/loss" in events.Tags()["scalars"]
    pipe = ProgressionPipeline.from_pretrained(tiny_model)
    assert pipe.controlnet is not None and pipe.graph_encoder is not None
    assert pipe.autoencoder.scaling_factor != 1.0
    assert DenoisingUNet.load(tiny_model / "unet").config.target_scale != 1.0


def test_all_skips_finished_stages(tiny_model, tiny_cohort, tiny_run_config):
    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    assert TrainingRun(cfg, tiny_model).run("all") == []


def test_other_config_in_same_folder_is_refused(tiny_model, tiny_cohort, tiny_run_config):
    cfg = resolve_config(tiny_run_config, ["unet.train.lr=0.5"], manifest=tiny_cohort)
    with pytest.raises(ConfigError, match="another config.*unet.train.lr"):
        TrainingRun(cfg, tiny_model).run("unet")


def test_a_stage_records_the_sections_that_decide_it(tiny_cohort, tiny_run_config):
    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    assert list(stage_config(cfg, "autoencoder")) == ["seed", "data", "engine", "autoencoder"]
    assert "trackers" not in stage_config(cfg, "autoencoder")["engine"]
    assert list(stage_config(cfg, "controlnet")) == [
        "seed", "data", "engine", "autoencoder", "graph", "diffusion", "unet", "controlnet"]
    assert all("sampling" not in stage_config(cfg, s) for s in STAGE_SECTIONS)


def test_a_later_stage_setting_does_not_stop_an_earlier_stage_resuming(
        tiny_model, tiny_cohort, tiny_run_config, tmp_path):
    run = shutil.copytree(tiny_model, tmp_path / "run")
    later = resolve_config(tiny_run_config, ["controlnet.train.lr=0.5"], manifest=tiny_cohort)
    (run / "config.yaml").write_text(dump_config(later))  # as if the run had started with it
    summary, = TrainingRun(later, run).run("autoencoder", resume=True)
    assert summary.stage == "autoencoder" and summary.resumed_from == summary.steps
    other = resolve_config(tiny_run_config, ["controlnet.train.lr=0.5",
                                             "autoencoder.train.lr=0.5"], manifest=tiny_cohort)
    (run / "config.yaml").write_text(dump_config(other))
    with pytest.raises(ConfigError, match="step-.* was started with another config "
                                          "\\(autoencoder.train.lr"):
        TrainingRun(other, run).run("autoencoder", resume=True)


def test_stage_needs_its_inputs(tmp_path, tiny_cohort, tiny_run_config):
    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    with pytest.raises(ConfigError, match="stage 'unet' needs stage 'latents' first"):
        TrainingRun(cfg, tmp_path / "run").run("unet")
    with pytest.raises(ConfigError, match="stage 'decoder' is not one of"):
        TrainingRun(cfg, tmp_path / "run").run("decoder")


def test_disabled_stage_refused(tmp_path, tiny_cohort, tiny_run_config):
    cfg = resolve_config(tiny_run_config, ["controlnet.enabled=false"], manifest=tiny_cohort)
    with pytest.raises(ConfigError, match="switched off"):
        TrainingRun(cfg, tmp_path / "run").run("controlnet")


def test_unknown_key_and_missing_manifest(tiny_run_config, tiny_cohort):
    with pytest.raises(ConfigError, match="unet.train.lrr"):
        resolve_config(tiny_run_config, ["unet.train.lrr=1"], manifest=tiny_cohort)
    with pytest.raises(ConfigError, match="data.manifest is not set"):
        resolve_config(tiny_run_config, [])


def _copy_through_latents(tiny_model, dest):
    """A run folder holding the tiny model's stages up to the UNet's inputs."""
    dest.mkdir()
    for name in ("config.yaml", "autoencoder", "graph_encoder", "trajectory_head", "cache"):
        src = tiny_model / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / "stages").mkdir()
    for s in ("autoencoder", "latents", "graph"):
        shutil.copy(tiny_model / "stages" / f"{s}.json", dest / "stages" / f"{s}.json")


def test_killed_unet_stage_resumes_to_the_same_weights(tiny_model, tiny_cohort, tiny_run_config,
                                                       tmp_path, monkeypatch):
    from mambacontrol.training import stage_diffusion

    overrides = ["unet.train.steps=4"]
    cfg = resolve_config(tiny_run_config, overrides, manifest=tiny_cohort)
    full, killed = tmp_path / "full", tmp_path / "killed"
    for d in (full, killed):
        _copy_through_latents(tiny_model, d)
        (d / "config.yaml").unlink()
    TrainingRun(cfg, full).run("unet")

    calls = {"n": 0}
    original = stage_diffusion.DiffusionObjective.noisy

    def dying(self, target):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3, after the step-2 checkpoint
            raise KeyboardInterrupt
        return original(self, target)

    monkeypatch.setattr(stage_diffusion.DiffusionObjective, "noisy", dying)
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(cfg, killed).run("unet")
    monkeypatch.setattr(stage_diffusion.DiffusionObjective, "noisy", original)
    assert not (killed / "unet").exists()
    TrainingRun(cfg, killed).run("unet", resume=True)
    a = DenoisingUNet.load(full / "unet").state_dict()
    b = DenoisingUNet.load(killed / "unet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_checkpoint_is_refused(tiny_model, tiny_cohort, tiny_run_config, tmp_path):
    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    run = tmp_path / "run"
    _copy_through_latents(tiny_model, run)
    shutil.copytree(tiny_model / "checkpoints", run / "checkpoints")
    latest = sorted((run / "checkpoints" / "unet").glob("step-*"))[-1]
    weights = next(latest.glob("model.*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="step-"):
        TrainingRun(cfg, run).run("unet", resume=True)


def test_a_stage_killed_before_its_save_is_not_marked_finished(
        tiny_model, tiny_cohort, tiny_run_config, tmp_path, monkeypatch):
    """The trainer's steps are done but the autoencoder is not saved yet: not finished."""
    from mambacontrol.models.autoencoder import Autoencoder
    from mambacontrol.training import stage_autoencoder

    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_model / "config.yaml", run / "config.yaml")
    shutil.copytree(tiny_model / "cache", run / "cache")
    shutil.copytree(tiny_model / "checkpoints" / "autoencoder", run / "checkpoints" / "autoencoder")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(stage_autoencoder, "latent_scale", killed)
        with pytest.raises(KeyboardInterrupt):
            TrainingRun(cfg, run).run("all", resume=True)
    assert not (run / "autoencoder").exists()
    assert not (run / "stages" / "autoencoder.json").exists()
    assert TrainingRun(cfg, run).finished("autoencoder") is None

    summary, = TrainingRun(cfg, run).run("autoencoder", resume=True)
    assert summary.resumed_from == summary.steps                       # nothing trained again
    assert (run / "stages" / "autoencoder.json").is_file()
    saved, ref = Autoencoder.load(run / "autoencoder"), Autoencoder.load(tiny_model / "autoencoder")
    assert saved.scaling_factor == ref.scaling_factor


def test_a_folded_finer_latent_trains_and_predicts(tmp_path, tiny_cohort, tiny_run_config):
    """autoencoder.model.latent_patch: a 2× autoencoder whose latent is folded 2³ → channels, so
    the diffusion, its latent cache and the graph's painting work on the 4× grid with 8× the
    channels, and a prediction decodes through the finer latent."""
    from mambacontrol.data import Manifest
    from mambacontrol.pipeline.prepare import load_on_grid

    cfg = resolve_config(tiny_run_config, ["autoencoder.model.channels=[8, 8]",
                                           "autoencoder.model.latent_patch=2"],
                         manifest=tiny_cohort)
    TrainingRun(cfg, tmp_path).run("all")
    pipe = ProgressionPipeline.from_pretrained(tmp_path)
    ae = pipe.autoencoder
    assert (ae.network_factor, ae.downsample_factor, ae.num_latent_channels) == (2, 4, 16)
    assert pipe.unet.config.latent_channels == 16
    v = Manifest.from_csv(tiny_cohort).visits[0]
    s = load_on_grid(v.image_path, v.segm_path, None, pipe.atlas)
    z = ae.encode(torch.from_numpy(s.image)[None, None])
    assert tuple(z.shape[1:]) == (16, *(n // 4 for n in s.image.shape))
    (p,) = pipe.predict(s.image, s.labels, v.age, v.sex, v.diagnosis, [1.0], mask=s.mask)
    assert p.image.shape == s.image.shape and np.isfinite(p.image).all()


@pytest.mark.parametrize("controlnet", [False, True])
def test_a_unet_reading_the_change_map_trains_and_follows_the_head(tmp_path, tiny_cohort,
                                                                    tiny_run_config, controlnet):
    """unet.model.concat_change: the trajectory head's change map is one more input channel of
    the UNet (and of the ControlNet's copy of its input), in training and at sampling, so a head
    that predicts more change moves the prediction."""
    from mambacontrol.data import Manifest
    from mambacontrol.pipeline.prepare import load_on_grid

    cfg = resolve_config(tiny_run_config, ["unet.model.concat_change=true",
                                           f"controlnet.enabled={str(controlnet).lower()}"],
                         manifest=tiny_cohort)
    TrainingRun(cfg, tmp_path).run("all")
    pipe = ProgressionPipeline.from_pretrained(tmp_path)
    assert (pipe.controlnet is not None) == controlnet and pipe.reads_change
    assert pipe.unet.input_channels == 2 * pipe.unet.config.latent_channels + 1
    v = Manifest.from_csv(tiny_cohort).visits[0]
    s = load_on_grid(v.image_path, v.segm_path, None, pipe.atlas)
    args = (s.image, s.labels, v.age, v.sex, v.diagnosis, [3.0])
    before = pipe.predict(*args, mask=s.mask, seed=0)[0]
    again = pipe.predict(*args, mask=s.mask, seed=0)[0]
    np.testing.assert_array_equal(before.image, again.image)
    pipe.trajectory_head.prior.mul_(5.0)  # a head predicting five times the change
    after = pipe.predict(*args, mask=s.mask, seed=0)[0]
    assert np.abs(after.node_log_ratio).mean() > 2 * np.abs(before.node_log_ratio).mean()
    assert np.abs(after.image - before.image).max() > 1e-4


def test_a_unet_reading_the_change_map_needs_the_graph(tiny_cohort, tiny_run_config):
    with pytest.raises(ConfigError, match="concat_change: there is no trajectory head"):
        validate_run_config(resolve_config(tiny_run_config, ["unet.model.concat_change=true",
                                                             "graph.enabled=false"],
                                           manifest=tiny_cohort))
