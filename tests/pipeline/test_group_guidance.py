"""Per-region guidance weights: painted from the baseline's labels, equal to one weight when all
are equal, saved with a model, replaced by one ``--guidance``, chosen per group by calibrate."""

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation.calibration import choose_group_weights
from mambacontrol.pipeline.progression import (
    GUIDANCE_GROUPS,
    ProgressionPipeline,
    SamplingDefaults,
    SamplingPlan,
    guidance_map,
)
from tests.pipeline.test_progression import build


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


def test_each_group_gets_its_weight_where_it_lies(atlas):
    shape = [s // 4 for s in atlas.grid.shape]
    weights = guidance_map(atlas.labels, atlas, [("hippocampus", 6.0), ("lateral_ventricles", 1.0)],
                           3.0, shape)
    assert weights.shape == (1, 1, *shape)

    def fraction(group):  # of each latent voxel's 4³ image voxels
        inside = np.isin(atlas.labels, atlas.key_groups[group]).astype(np.float32)
        return torch.nn.functional.avg_pool3d(torch.from_numpy(inside)[None, None], 4)

    hippocampus, ventricles = fraction("hippocampus"), fraction("lateral_ventricles")
    torch.testing.assert_close(weights, 3.0 + 3.0 * hippocampus - 2.0 * ventricles)
    assert hippocampus.max() > 0.3  # on the demo's 16 mm latent voxels, at most 39 % of one
    assert weights.min() >= 1.0 and weights.max() <= 6.0  # a mixture of the weights
    assert (weights == 3.0).float().mean() > 0.9  # most of the grid is elsewhere


def test_equal_weights_are_one_weight(atlas):
    """Group weights all equal to the weight elsewhere predict what that one weight does."""
    pipe = build(atlas)
    image, labels = atlas.template.copy(), atlas.labels.copy()
    kwargs = dict(num_samples=1, num_inference_steps=3, seed=0)
    one = pipe.predict(image, labels, 72.0, "F", "AD", 2.0, guidance=2.0, **kwargs)[0].image
    pipe.sampling = SamplingDefaults(num_inference_steps=3, num_samples=1, guidance=2.0,
                                     guidance_groups={g: 2.0 for g in GUIDANCE_GROUPS})
    same = pipe.predict(image, labels, 72.0, "F", "AD", 2.0, seed=0)[0].image
    np.testing.assert_allclose(same, one, atol=1e-5)
    pipe.sampling.guidance_groups = {"hippocampus": 6.0}
    other = pipe.predict(image, labels, 72.0, "F", "AD", 2.0, seed=0)[0].image
    assert not np.allclose(other, one, atol=1e-5)
    with pytest.raises(MambaControlError, match="labels"):
        pipe.predict(image, None, 72.0, "F", "AD", 2.0, seed=0)


def test_group_weights_are_saved_and_one_guidance_replaces_them(atlas, tmp_path):
    pipe = build(atlas)
    pipe.sampling.guidance, pipe.sampling.guidance_groups = 1.0, {"amygdala": 4.0}
    loaded = ProgressionPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "model"))
    assert loaded.sampling.guidance_groups == {"amygdala": 4.0}
    plan = SamplingPlan.resolve(loaded.sampling)
    assert plan.guidance == 1.0 and plan.guidance_groups == (("amygdala", 4.0),) and plan.guided
    chosen = SamplingPlan.resolve(loaded.sampling, guidance=2.0)
    assert chosen.guidance == 2.0 and chosen.guidance_groups is None
    plain = ProgressionPipeline.from_pretrained(build(atlas).save_pretrained(tmp_path / "plain"))
    assert plain.sampling.guidance_groups is None
    index = (tmp_path / "plain" / "model_index.json").read_text()
    assert "guidance_groups" not in index  # models without them keep their index


@pytest.mark.parametrize("groups, message", [({"thalamus": 1.0}, "thalamus"),
                                             ({"amygdala": 25.0}, "amygdala guidance weight")])
def test_bad_group_weights_are_refused(groups, message):
    with pytest.raises(MambaControlError, match=message):
        SamplingDefaults(guidance_groups=groups)


def test_calibrate_chooses_each_groups_closest_weight(caplog):
    def row(ratios):
        return {g: {"change_ratio": r, "abs_error_pct": 1.0} for g, r in ratios.items()}

    names = (*GUIDANCE_GROUPS, "whole_brain")
    table = {"0": row(dict(zip(names, (0.3, 0.4, 0.2, 0.5, 0.6)))),
             "2": row(dict(zip(names, (0.7, 1.0, 0.5, 0.95, 1.05)))),
             "4": row(dict(zip(names, (0.95, 1.3, 0.8, 1.4, 1.6)))),
             "6": row(dict(zip(names, (1.2, 1.6, None, 1.8, 2.0))))}
    elsewhere, groups = choose_group_weights(table, [0, 2, 4, 6])
    assert elsewhere == 2  # the whole brain's
    assert groups == {"hippocampus": 4, "amygdala": 2, "entorhinal": 4, "lateral_ventricles": 2}
    assert "largest weight tried" not in caplog.text  # 6 was tried: no group at the top
    del table["6"]
    _, groups = choose_group_weights(table, [0, 2, 4])
    assert groups == {"hippocampus": 4, "amygdala": 2, "entorhinal": 4, "lateral_ventricles": 2}
    # at the top of the grid and still under-sized: named, with a wider grid to try
    assert "entorhinal: guidance 4, the largest weight tried" in caplog.text
    assert "still 0.80 of the true one" in caplog.text and "--weights 4,6,8,12" in caplog.text
    assert "hippocampus: guidance 4" in caplog.text
    assert "amygdala" not in caplog.text and "lateral_ventricles" not in caplog.text
    caplog.clear()
    for group in ("hippocampus", "entorhinal"):  # over-sized at the top: nothing to widen
        table["4"][group]["change_ratio"] = 1.1
    choose_group_weights(table, [0, 2, 4])
    assert "largest weight tried" not in caplog.text
