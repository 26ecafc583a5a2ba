"""ProgressionPipeline: loading, prediction, determinism, ablations, bad input."""

import json

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest
from mambacontrol.errors import MambaControlError, ModelError
from mambacontrol.graph import AnatomyGraph, GraphEncoder, TrajectoryHead
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.schedulers import NoiseSchedule
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.conditioning import hint_channels
from mambacontrol.pipeline.prepare import load_on_grid
from mambacontrol.pipeline.progression import ProgressionPipeline, SamplingDefaults


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


@pytest.fixture(scope="module")
def scan(atlas):
    return atlas.template.copy(), atlas.labels.copy()


def _perturb(module, scale=0.05):
    g = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.data.add_(scale * torch.randn(p.shape, generator=g))
    return module


def build(atlas, *, graph=True, controlnet=True, mixer="mamba", graph_hint=True,
          change_hint=True):
    torch.manual_seed(0)
    ae = Autoencoder(channels=[8, 8, 8], latent_channels=2, norm_num_groups=4)
    unet = _perturb(DenoisingUNet(latent_channels=2, channels=[8, 16],
                                  attention_levels=[False, True], norm_num_groups=4,
                                  num_head_channels=8, context_dim=8))
    enc = head = cn = None
    if graph:
        g = AnatomyGraph.from_atlas(atlas)
        enc = GraphEncoder.from_graph(g, embed_dim=8, num_layers=1, num_tokens=2, token_heads=2)
        head = TrajectoryHead(embed_dim=8, num_nodes=g.num_nodes, graph=g.identity.to_dict())
    if controlnet:
        change = graph and change_hint  # the change comes from the graph's trajectory head
        channels = hint_channels(2, 8 if graph and graph_hint else 0, change)
        cn = _perturb(MambaControlNet.from_unet(unet, hint_channels=channels, mixer=mixer,
                                                mamba_d_state=4, fourier_modes=[2, 2, 2],
                                                hint_width=8, change_hint=change))
    return ProgressionPipeline(ae, unet, NoiseSchedule(num_train_timesteps=100), atlas,
                               controlnet=cn, graph_encoder=enc, trajectory_head=head,
                               sampling=SamplingDefaults(num_inference_steps=3, num_samples=2))


@pytest.mark.parametrize("kwargs", [dict(), dict(graph=False), dict(controlnet=False),
                                    dict(mixer="attention"), dict(graph=False, controlnet=False),
                                    dict(graph_hint=False), dict(change_hint=False)])
def test_every_ablation_predicts(atlas, scan, kwargs):
    pipe = build(atlas, **kwargs)
    image, labels = scan
    preds = pipe.predict(image, labels, 72.0, "F", "AD", [1.0, 3.0], seed=0)
    assert [p.years for p in preds] == [1.0, 3.0]
    for p in preds:
        assert p.image.shape == p.uncertainty.shape == atlas.grid.shape
        assert np.all(p.image[image == 0] == 0) and np.isfinite(p.image).all()
        assert p.uncertainty.max() > 0  # two different samples
        assert (p.node_log_ratio is not None) == kwargs.get("graph", True)


def test_same_seed_same_prediction_other_seed_differs(atlas, scan):
    pipe = build(atlas)
    image, labels = scan
    a = pipe.predict(image, labels, 70, "M", "MCI", 2.0, seed=3)[0]
    b = pipe.predict(image, labels, 70, "M", "MCI", 2.0, seed=3)[0]
    c = pipe.predict(image, labels, 70, "M", "MCI", 2.0, seed=4)[0]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.uncertainty, b.uncertainty)
    assert not np.array_equal(a.image, c.image)


def test_difference_of_decodes_keeps_the_baseline(atlas, scan):
    """With a zero change the difference rule returns the baseline exactly; direct decoding
    returns the autoencoder's reconstruction instead."""
    pipe = build(atlas)
    image, labels = scan
    z_base = pipe.encode(image)[1]
    zero = torch.zeros(1, *z_base.shape[1:])
    x_base = torch.from_numpy(image)[None, None]
    mean, _ = pipe._decode(x_base, z_base, pipe.autoencoder.decode(z_base), zero, image != 0)
    np.testing.assert_allclose(mean, np.clip(image, 0, 1), atol=1e-5)
    direct, _ = pipe._decode(x_base, z_base, None, zero, image != 0)
    assert np.abs(direct - image).max() > 1e-3


def test_save_load_gives_identical_predictions(atlas, scan, tmp_path):
    pipe = build(atlas)
    image, labels = scan
    pipe.save_pretrained(tmp_path / "model")
    idx = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert idx["atlas"]["checksum"] == atlas.checksum and "controlnet" in idx["components"]
    again = ProgressionPipeline.from_pretrained(tmp_path / "model")
    a = pipe.predict(image, labels, 70, "F", "CN", 1.5, seed=1)[0]
    b = again.predict(image, labels, 70, "F", "CN", 1.5, seed=1)[0]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.node_log_ratio, b.node_log_ratio)


def test_model_folder_errors(atlas, tmp_path):
    with pytest.raises(ModelError, match="not a mambacontrol model"):
        ProgressionPipeline.from_pretrained(tmp_path)
    pipe = build(atlas, graph=False, controlnet=False)
    pipe.save_pretrained(tmp_path / "m")
    idx_path = tmp_path / "m" / "model_index.json"
    idx = json.loads(idx_path.read_text())
    idx["atlas"]["checksum"] = "0" * 64
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(ModelError, match="another version of atlas"):
        ProgressionPipeline.from_pretrained(tmp_path / "m")
    idx["atlas"]["grid"] = "3mm"
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(ModelError, match="grid 3mm"):
        ProgressionPipeline.from_pretrained(tmp_path / "m")
    idx_path.write_text("{not json")
    with pytest.raises(ModelError, match="corrupt model index"):
        ProgressionPipeline.from_pretrained(tmp_path / "m")


def test_bad_prediction_inputs(atlas, scan):
    pipe = build(atlas)
    image, labels = scan
    with pytest.raises(MambaControlError, match="not the model grid"):
        pipe.predict(image[:-4], labels, 70, "F", "CN", 1.0)
    with pytest.raises(MambaControlError, match="pass the scan's labels"):
        pipe.predict(image, None, 70, "F", "CN", 1.0)
    with pytest.raises(MambaControlError, match="≥ 0 years"):
        pipe.predict(image, labels, 70, "F", "CN", [1.0, -1.0])
    with pytest.raises(ValueError, match="diagnosis"):
        pipe.predict(image, labels, 70, "F", "XYZ", 1.0)


def test_trained_tiny_model_predicts(tiny_model, tiny_cohort):
    pipe = ProgressionPipeline.from_pretrained(tiny_model)
    v = Manifest.from_csv(tiny_cohort).visits[0]
    s = load_on_grid(v.image_path, v.segm_path, None, pipe.atlas)
    p = pipe.predict(s.image, s.labels, v.age, v.sex, v.diagnosis, [0.5, 2.0], mask=s.mask)
    assert len(p) == 2 and list(p.timings) == ["encoding", "sampling", "decoding"]
