"""The bundled configs load against the schema and build their models."""

import pytest

from mambacontrol.errors import ConfigError
from mambacontrol.training.config import load_config
from mambacontrol.training.configs import bundled_config, bundled_names
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.stage_autoencoder import build_autoencoder
from mambacontrol.training.stage_diffusion import build_controlnet, build_unet, noise_schedule


def test_the_documented_configs_are_bundled():
    """The configs the README and docs name are found (the test below builds only what it finds)."""
    assert {"demo", "synthetic-2mm", "synthetic-2mm-4x", "synthetic-2mm-folded", "brain-1p5mm",
            "brain-1p5mm-cpu"} <= set(bundled_names())


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_config_builds_its_models(name):
    from mambacontrol.atlas import load_atlas

    cfg = load_config(RunConfig, bundled_config(name))
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    ae = build_autoencoder(cfg)
    ae.check_shape(atlas.grid.shape)
    ae.check_patch(cfg.autoencoder.train.patch_size)
    unet = build_unet(cfg, ae.num_latent_channels, cfg.graph.model.embed_dim)
    cn = build_controlnet(cfg, unet, cfg.graph.model.embed_dim)
    assert cn.config.mamba_levels == list(cfg.unet.model.attention_levels)
    noise_schedule(cfg)


def test_cpu_config_on_brlps_grid_denoises_its_odd_latent():
    """brain-1p5mm-cpu: the 8× latent of the 1.5 mm grid is 15×18×15, which the UNet (two
    levels) cannot halve; one ControlNet + UNet step runs on it and returns that grid."""
    import torch

    from mambacontrol.atlas import load_atlas
    from mambacontrol.data.covariates import encode_covariates

    cfg = load_config(RunConfig, bundled_config("brain-1p5mm-cpu"))
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    ae = build_autoencoder(cfg)
    latent = tuple(s // ae.downsample_factor for s in atlas.grid.shape)
    assert latent == (15, 18, 15)
    unet = build_unet(cfg, cfg.autoencoder.model.latent_channels, cfg.graph.model.embed_dim)
    cn = build_controlnet(cfg, unet, cfg.graph.model.embed_dim)
    torch.manual_seed(0)
    z = torch.randn(1, cfg.autoencoder.model.latent_channels, *latent)
    cov = encode_covariates([70.0], [2.0], ["F"], ["MCI"])
    x = unet.network_input(z, z)
    hint = torch.randn(1, cn.config.hint_channels, *latent)
    with torch.no_grad():
        down, mid = cn(x, torch.tensor([500]), hint, cov, context=unet.context(cov))
        out = unet.denoise(x, torch.tensor([500]), unet.context(cov), down, mid, covariates=cov)
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_unknown_bundled_config():
    with pytest.raises(ConfigError, match="available: .*demo"):
        bundled_config("nope")
