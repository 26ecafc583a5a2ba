"""The diffusion stages' regional term: a decoder-linearised readout of each group's decoded
change, compared between the step's estimate and the target, switched on per stage."""

import numpy as np
import pytest
import torch

from mambacontrol.errors import ConfigError
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.training import stage_diffusion
from mambacontrol.training.regional_loss import (
    group_readouts,
    readout_norms,
    regional,
    regional_loss,
)
from mambacontrol.training.runner import TrainingRun, resolve_config
from mambacontrol.training.validate import validate_run_config
from tests.training.test_stages import _copy_through_latents


def _labels(shape):
    labels = np.zeros(shape, dtype=np.int32)
    labels[2:8, 3:10, 4:9] = 1
    labels[9:14, 2:7, 6:12] = 2
    labels[9:14, 9:14, 1:5] = 3
    return labels


def test_a_readout_is_the_decoded_groups_change_to_first_order():
    torch.manual_seed(0)
    ae = Autoencoder(channels=(8, 8), latent_channels=2, norm_num_groups=4).double().eval()
    x = torch.rand(1, 1, 16, 16, 16, dtype=torch.float64)
    z = ae.encode(x)[0].detach()
    labels = _labels((16, 16, 16))
    groups = {"a": [1], "bc": [2, 3]}
    w = group_readouts(ae, z, labels, groups)
    assert w.shape == (2, *z.shape)
    delta = 1e-4 * torch.randn_like(z)
    with torch.no_grad():
        change = (ae.decode((z + delta)[None]) - ae.decode(z[None]))[0, 0].numpy()
    for g, ids in enumerate(groups.values()):
        decoded = change[np.isin(labels, ids)].sum()
        assert float(regional(w[g][None, None], delta[None])[0, 0]) == pytest.approx(decoded,
                                                                                 rel=1e-2)


def test_the_term_compares_regional_changes_weighted_by_alpha_bar():
    w = torch.zeros(2, 2, 1, 2, 2, 2)
    w[:, 0, 0, 0] = 1.0  # group 0 sums channel 0's latent voxels at x = 0 (four of them)
    w[:, 1, 0, 1] = 1.0  # group 1 those at x = 1
    target = torch.zeros(2, 1, 2, 2, 2)
    target[:, 0, 0] = 0.5
    norms = readout_norms(list(w), list(target))
    assert norms[0] == pytest.approx(4.0) and norms[1] == 1.0  # (4 · 0.5)²; no change: 1
    a = torch.tensor([1.0, 0.25])
    assert regional_loss(w, target, target, a, norms) == 0
    moved = torch.zeros_like(target)
    moved[:, 0, 1] = 0.5  # the change moved from group 0's voxels to group 1's
    # per pair: group 0 misses 2, group 1 gains 2, each squared over its norm, weighted by ᾱ
    expected = ((4 / 4 + 4 / 1) * 1.0 + (4 / 4 + 4 / 1) * 0.25) / 4
    assert float(regional_loss(w, moved, target, a, norms)) == pytest.approx(expected)
    # the latent error of a move within a group's voxels costs the term nothing
    within = target.clone()
    within[:, 0, 0, 0] = 1.0
    within[:, 0, 0, 1] = 0.0
    assert regional_loss(w, within, target, a, norms) == 0


def test_both_diffusion_stages_train_with_the_term(tiny_model, tiny_cohort, tiny_run_config,
                                                   tmp_path, monkeypatch):
    calls = []

    def counted(*args):
        term = regional_loss(*args)
        calls.append(float(term))
        return term

    monkeypatch.setattr(stage_diffusion, "regional_loss", counted)
    run = tmp_path / "run"
    _copy_through_latents(tiny_model, run)
    (run / "config.yaml").unlink()  # the diffusion stages' settings differ from the tiny model's
    cfg = resolve_config(tiny_run_config, ["unet.train.region_loss_weight=1",
                                           "controlnet.train.region_loss_weight=1"],
                         manifest=tiny_cohort)
    summaries = TrainingRun(cfg, run).run("all")
    steps = cfg.unet.train.steps + cfg.controlnet.train.steps
    assert [s.stage for s in summaries] == ["unet", "controlnet"]
    assert len(calls) == steps and all(np.isfinite(calls)) and max(calls) > 0


def test_a_negative_weight_is_refused(tiny_cohort, tiny_run_config):
    with pytest.raises(ConfigError, match="unet.train.region_loss_weight: -1.0 must be a number"):
        validate_run_config(resolve_config(tiny_run_config, ["unet.train.region_loss_weight=-1"],
                                           manifest=tiny_cohort))
