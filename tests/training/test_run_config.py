"""The run config's network sections are their components' keyword arguments, with the
components' defaults."""

import inspect

import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.graph import AnatomyGraph, GraphEncoder, TrajectoryHead
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.schedulers import NoiseSchedule
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.nn.component import Component
from mambacontrol.nn.scan_order import DIRECTIONS
from mambacontrol.pipeline.conditioning import hint_channels
from mambacontrol.pipeline.progression import SamplingDefaults
from mambacontrol.training.common import engine_settings
from mambacontrol.training.config import dump_config, load_config
from mambacontrol.training.engine import Trainer
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.stage_autoencoder import build_autoencoder
from mambacontrol.training.stage_diffusion import build_controlnet, build_unet, noise_schedule
from mambacontrol.training.stage_graph import graph_encoder_arch


def _same_network(built: Component, default: Component) -> None:
    assert built.to_json_string() == default.to_json_string()  # the saved config.json
    assert ({k: v.shape for k, v in built.state_dict().items()}
            == {k: v.shape for k, v in default.state_dict().items()})


def test_default_run_config_builds_the_default_constructors_networks():
    cfg = RunConfig()
    derived = dict(latent_channels=cfg.autoencoder.model.latent_channels,
                   context_dim=cfg.graph.model.embed_dim)  # what the run takes from other stages
    graph_dim = cfg.graph.model.embed_dim
    with torch.device("meta"):
        _same_network(build_autoencoder(cfg), Autoencoder())
        unet = DenoisingUNet(**derived)
        _same_network(build_unet(cfg, **derived), unet)
        _same_network(build_controlnet(cfg, unet, graph_dim, True), MambaControlNet.from_unet(
            unet, hint_channels(unet.config.latent_channels, graph_dim, True)))
    assert noise_schedule(cfg) == NoiseSchedule()
    assert NoiseSchedule().prediction_type == "v_prediction"  # the run's default, the only one
    assert cfg.sampling == SamplingDefaults()
    assert cfg.controlnet.model.mamba_directions == list(DIRECTIONS)


def test_saved_run_config_reads_back_equal():
    cfg = load_config(RunConfig, overrides=["controlnet.model.mamba_levels=[false, true, true]",
                                            "sampling.num_samples=3"])
    assert load_config(RunConfig, text=dump_config(cfg)) == cfg
    assert isinstance(cfg.sampling, SamplingDefaults) and cfg.sampling.num_samples == 3


def test_engine_and_graph_sections_take_their_components_defaults():
    cfg = RunConfig()
    trainer = inspect.signature(Trainer).parameters
    assert engine_settings(cfg) == {
        **{k: trainer[k].default for k in engine_settings(cfg) if k not in ("seed", "trackers")},
        "trackers": list(trainer["trackers"].default), "seed": cfg.seed}
    graph = AnatomyGraph.from_atlas(load_atlas(grid="4mm"))
    with torch.device("meta"):
        _same_network(GraphEncoder.from_graph(graph, **graph_encoder_arch(cfg)),
                      GraphEncoder.from_graph(graph))
    assert cfg.graph.model.head_hidden == inspect.signature(TrajectoryHead).parameters[
        "hidden"].default
    assert (cfg.graph.model.grouping, cfg.graph.model.homologue_edges) == ("region", True)
