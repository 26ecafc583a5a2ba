"""The autoencoder's change term: pairs cropped together, the loss on the difference of decodes."""

import numpy as np
import pytest
import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from mambacontrol.errors import ConfigError
from mambacontrol.training.runner import TrainingRun, resolve_config
from mambacontrol.training.stage_autoencoder import (
    StackPair,
    change_loss,
    pair_patch_dataset,
)
from mambacontrol.training.validate import validate_run_config


def test_change_loss_is_relative_to_each_pairs_true_change():
    x = torch.rand(4, 1, 6, 6, 6)           # pairs (0, 1) and (2, 3)
    smooth = GaussianFilter(3, 1.0)
    assert change_loss(x.clone(), x, smooth) == 0
    # every scan off by the same amount: the differences, and so the term, are unchanged
    assert change_loss(x + 0.5, x, smooth) == pytest.approx(0, abs=1e-6)
    # no change reconstructed (both scans of a pair decoded alike) scores 1
    none = x.clone()
    none[1], none[3] = x[0], x[2]
    assert change_loss(none, x, smooth) == pytest.approx(1)
    # half the true change scores 1/4, without smoothing too
    half = x.clone()
    half[1], half[3] = (x[0] + x[1]) / 2, (x[2] + x[3]) / 2
    assert change_loss(half, x, nn.Identity()) == pytest.approx(0.25)


def test_a_pair_is_cropped_at_one_place():
    earlier = np.arange(10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8)
    stack = StackPair([earlier, earlier + 7])
    from monai.data import Dataset
    from monai.transforms import Compose, RandSpatialCropd

    crop = RandSpatialCropd(keys=["image"], roi_size=[4, 4, 4], random_size=False)
    data = Dataset([{"earlier": 0, "later": 1}], transform=Compose([stack, crop]))
    for seed in range(5):
        data.transform.set_random_state(seed)
        patch = data[0]["image"]
        assert patch.shape == (2, 4, 4, 4)
        assert np.all(np.asarray(patch[1] - patch[0]) == 7)
        i, j, k = np.unravel_index(int(patch[0, 0, 0, 0]), earlier.shape)
        np.testing.assert_array_equal(np.asarray(patch[0]), earlier[i:i + 4, j:j + 4, k:k + 4])


class _NoPairs:
    def pairs(self, split="train"):
        return []


def test_no_training_pairs_is_refused():
    with pytest.raises(ConfigError, match="change_weight > 0 needs subjects with two"):
        pair_patch_dataset(_NoPairs(), [16, 16, 16])


@pytest.mark.parametrize("overrides,message", [
    (["autoencoder.train.change_weight=-1"], "change_weight: -1.0 must be ≥ 0"),
    (["autoencoder.train.change_sigma_mm=nan"], "change_sigma_mm: nan must be ≥ 0"),
    (["autoencoder.train.change_weight=1", "autoencoder.train.batch_size=3"],
     "batch_size: 3 must be even with change_weight > 0"),
])
def test_bad_change_settings_are_refused(tiny_run_config, tiny_cohort, overrides, message):
    cfg = resolve_config(tiny_run_config, overrides, manifest=tiny_cohort)
    with pytest.raises(ConfigError, match=message):
        validate_run_config(cfg)


def test_training_with_the_change_term(tiny_run_config, tiny_cohort, tmp_path):
    cfg = resolve_config(tiny_run_config, ["autoencoder.train.change_weight=2",
                                           "autoencoder.train.batch_size=2"],
                         manifest=tiny_cohort)
    run = TrainingRun(cfg, tmp_path)
    data = run.data
    dataset = pair_patch_dataset(data, [16, 16, 16])
    assert len(dataset) == len(data.pairs("train")) > 0
    summary, = run.run("autoencoder")
    assert summary.steps == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "autoencoder"))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    # the logged loss is the sum of its terms, the change term at its weight
    total = scalars["train/l1"] + 1e-6 * scalars["train/kl"] + 2 * scalars["train/change"]
    assert scalars["train/loss"] == pytest.approx(total, rel=1e-4)
    assert scalars["train/change"] > 0
