"""The bundled configs load against the schema and build their models."""

import pytest

from mambacontrol.errors import ConfigError
from mambacontrol.training.config import load_config
from mambacontrol.training.configs import bundled_config
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.stage_autoencoder import build_autoencoder
from mambacontrol.training.stage_diffusion import build_controlnet, build_unet, noise_schedule


@pytest.mark.parametrize("name", ["demo", "synthetic-2mm", "brain-1p5mm"])
def test_bundled_config_builds_its_models(name):
    from mambacontrol.atlas import load_atlas

    cfg = load_config(RunConfig, bundled_config(name))
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    ae = build_autoencoder(cfg)
    ae.check_shape(atlas.grid.shape)
    latent = [s // ae.downsample_factor for s in atlas.grid.shape]
    unet = build_unet(cfg, cfg.autoencoder.model.latent_channels, cfg.graph.model.embed_dim)
    assert all(s % unet.downsample_factor == 0 for s in latent)
    cn = build_controlnet(cfg, unet, cfg.graph.model.embed_dim)
    assert cn.config.mamba_levels == list(cfg.unet.model.attention_levels)
    noise_schedule(cfg)


def test_unknown_bundled_config():
    with pytest.raises(ConfigError, match="available: .*demo"):
        bundled_config("nope")
