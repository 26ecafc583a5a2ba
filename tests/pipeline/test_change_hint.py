"""The regional change in the ControlNet's hint: painted like the graph map, the truth or the
trajectory head's prediction in training, the head's at sampling, and nothing under the null."""

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.errors import ModelError
from mambacontrol.graph import AnatomyGraph, TrajectoryHead, region_fractions
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.conditioning import (
    CHANGE_UNIT_PERCENT,
    build_hint,
    change_map,
    hint_channels,
    hint_uses_graph,
)
from mambacontrol.pipeline.denoiser import ConditionedDenoiser
from mambacontrol.pipeline.progression import ProgressionPipeline
from mambacontrol.training import stage_diffusion
from tests.pipeline.test_denoiser import GRAPH_DIM, TINY_UNET, _batch, _perturbed
from tests.pipeline.test_progression import build


@pytest.fixture(scope="module")
def demo_grid():
    """The demo's 4 mm atlas and its 4× latent grid's soft region fractions."""
    atlas = load_atlas(grid="4mm")
    graph = AnatomyGraph.from_atlas(atlas)
    return graph, region_fractions(atlas.labels, graph, 4)


def test_each_region_is_painted_with_its_change_where_it_lies(demo_grid):
    graph, fractions = demo_grid
    node = graph.num_nodes // 2
    ratio = torch.zeros(1, graph.num_nodes)
    ratio[0, node] = -0.05  # −5 %: −0.5 in the map's unit of 10 %
    painted = change_map(ratio, fractions)
    assert painted.shape == (1, 1, *fractions.shape[1:])
    inside = fractions[node] > 0
    assert inside.any() and torch.equal(painted[0, 0] != 0, inside)
    torch.testing.assert_close(painted[0, 0][inside],
                               -5.0 / CHANGE_UNIT_PERCENT * fractions[node][inside])
    assert change_map(torch.zeros(1, graph.num_nodes), fractions).abs().max() == 0


def test_the_hint_channels_say_which_maps_a_controlnet_reads():
    assert hint_channels(3, 16, change=True) == 3 + 16 + 1 + 1
    assert hint_uses_graph(hint_channels(3, 16, True), 3, change=True)
    assert not hint_uses_graph(hint_channels(3, 0, True), 3, change=True)
    assert MambaControlNet.legacy_defaults["change_hint"] is False  # older models had none


@pytest.fixture
def change_nets():
    torch.manual_seed(0)
    unet = _perturbed(DenoisingUNet(**TINY_UNET), 1).requires_grad_(False)
    cn = MambaControlNet.from_unet(unet, hint_channels=hint_channels(3, GRAPH_DIM, True),
                                   fourier_modes=(2, 2, 2), hint_width=8, mamba_d_state=4)
    return unet, _perturbed(cn, 2)


def test_the_change_map_enters_the_hint_and_the_null_has_none(change_nets):
    unet, cn = change_nets
    b = _batch()
    change = torch.randn(2, 1, 8, 8, 8)
    args = (b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"])
    denoiser = ConditionedDenoiser(unet, cn, graph_hint=True, change_hint=True)
    with pytest.raises(ValueError, match="pass change"):
        denoiser.condition(*args)
    c = denoiser.condition(*args, change=change)
    assert torch.equal(c.hint, build_hint(b["z_base"], b["years"], denoiser.norm,
                                          b["graph_map"], change))
    with_change = denoiser(b["noisy"], b["t"], c)
    without = denoiser(b["noisy"], b["t"], denoiser.condition(*args, change=0 * change))
    assert not torch.allclose(with_change, without)  # the ControlNet reads it
    guided = ConditionedDenoiser(unet, cn, graph_hint=True, change_hint=True, guidance=1.0)
    null = guided.condition(*args, change=change).hint[2:, -2]  # the null rows' change map
    assert null.abs().max() == 0
    dropped = denoiser.condition(*args, change=change, drop_horizon=torch.tensor([True, False]))
    assert dropped.hint[0, -2].abs().max() == 0 and torch.equal(dropped.hint[1, -2], change[1, 0])


def test_training_paints_the_truth_or_the_heads_prediction(demo_grid):
    graph, fractions = demo_grid
    head = TrajectoryHead(embed_dim=4, num_nodes=graph.num_nodes,
                          prior_coef=(-torch.rand(graph.num_nodes, 6)).tolist())
    b = _batch()
    batch = {"covariates": b["covariates"], "years": b["years"],
             "log_ratio": 0.01 * torch.randn(2, graph.num_nodes),
             "assignment": fractions.expand(2, *fractions.shape)}
    nodes = torch.randn(2, graph.num_nodes, 4)
    truth = change_map(batch["log_ratio"], fractions)
    predicted = change_map(head(nodes, b["covariates"], b["years"]), fractions)
    assert torch.equal(stage_diffusion.hinted_change(batch, nodes, head, 0.0), truth)
    torch.testing.assert_close(stage_diffusion.hinted_change(batch, nodes, head, 1.0), predicted)
    torch.manual_seed(0)
    rows = [torch.equal(m, t) for m, t in
            zip(stage_diffusion.hinted_change(batch, nodes, head, 0.5), truth)]
    torch.manual_seed(0)
    assert rows == (torch.rand(2) >= 0.5).tolist()  # the share, drawn per pair


def test_training_and_sampling_paint_the_same_change(change_nets, monkeypatch):
    """The controlnet stage's step with the true change equals the sampler's step given that
    change painted."""
    unet, cn = change_nets
    b = _batch()
    log_ratio = 0.02 * torch.randn(2, 5)
    fractions = torch.rand(5, 8, 8, 8) / 5
    sampler = ConditionedDenoiser(unet, cn, graph_hint=True, change_hint=True)
    c = sampler.condition(b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"],
                          change=change_map(log_ratio, fractions))
    monkeypatch.setattr(stage_diffusion, "encode_graph",
                        lambda encoder, features, assignment, covariates:
                        (None, b["tokens"], b["graph_map"]))
    batch = {"z_base": b["z_base"], "covariates": b["covariates"], "years": b["years"],
             "features": None, "assignment": fractions, "log_ratio": log_ratio}
    models = {"unet": unet, "controlnet": cn, "graph_encoder": torch.nn.Identity(),
              "trajectory_head": None}  # share 0: the head is not asked
    trained = stage_diffusion._denoise(models, batch, b["noisy"], b["t"], graph_hint=True,
                                       predicted_change=0.0)
    assert torch.equal(sampler(b["noisy"], b["t"], c), trained)


def test_a_change_hint_needs_the_trajectory_head():
    atlas = load_atlas(grid="4mm")
    pipe = build(atlas)
    assert pipe.change_hint
    with pytest.raises(ModelError, match="no trajectory head"):
        ProgressionPipeline(pipe.autoencoder, pipe.unet, pipe.schedule, atlas,
                            controlnet=pipe.controlnet, graph_encoder=pipe.graph_encoder)


def test_the_prediction_follows_the_heads_change():
    """At sampling the map is the head's prediction at each horizon: a head predicting more
    atrophy changes the prediction."""
    atlas = load_atlas(grid="4mm")
    pipe = build(atlas)
    image, labels = atlas.template.copy(), atlas.labels.copy()
    a = pipe.predict(image, labels, 72.0, "F", "AD", 3.0, seed=0)[0]
    head = pipe.trajectory_head
    head.prior.zero_()
    head.prior[:, :3] = -3.0  # −3 % per year in every region, any diagnosis and age
    b = pipe.predict(image, labels, 72.0, "F", "AD", 3.0, seed=0)[0]
    assert np.allclose(b.node_log_ratio, -0.09, atol=1e-6)
    assert not np.array_equal(a.image, b.image)
