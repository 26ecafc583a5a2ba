"""Shapes, zero-initialisation, save/load and UNet-to-ControlNet weight copy (tiny, 3D, CPU)."""

import pytest
import torch
from monai.networks.utils import pixelunshuffle

from mambacontrol.data.covariates import encode_covariates
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.schedulers import NoiseSchedule, sampling_scheduler, training_scheduler
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.nn.padding import pad_to_multiple

TINY_UNET = dict(latent_channels=3, channels=(16, 32), attention_levels=(False, True),
                 norm_num_groups=8, num_head_channels=8, context_dim=16)
TINY_CONTROL = dict(fourier_modes=(2, 2, 2), hint_width=8, mamba_d_state=4)


@pytest.fixture
def unet():
    """A UNet with perturbed weights, like a trained one (a fresh MONAI UNet outputs zeros)."""
    torch.manual_seed(0)
    u = DenoisingUNet(**TINY_UNET)
    for p in u.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return u


def _inputs(b=2, s=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, s, s, s, generator=g)
    zb = torch.randn(b, 3, s, s, s, generator=g)
    cov = encode_covariates([70, 80][:b], [1, 3][:b], ["F", "M"][:b], ["CN", "AD"][:b])
    return x, zb, torch.tensor([5, 700][:b]), cov


@pytest.mark.parametrize("channels,shape,latent", [
    ((8, 8), (16, 16, 16), (8, 8, 8)),
    ((8, 8, 16), (16, 24, 16), (4, 6, 4)),
])
def test_autoencoder_shapes(channels, shape, latent):
    ae = Autoencoder(channels=channels, latent_channels=3, norm_num_groups=4)
    x = torch.rand(2, 1, *shape)
    z = ae.encode(x)
    assert z.shape == (2, 3, *latent)
    assert ae.decode(z).shape == x.shape
    rec, mu, sigma = ae(x)
    assert rec.shape == x.shape and mu.shape == sigma.shape == z.shape


def test_autoencoder_scaling_factor_is_applied_and_saved(tmp_path):
    torch.manual_seed(0)
    ae = Autoencoder(channels=(8, 8), latent_channels=2, norm_num_groups=4).eval()
    x = torch.rand(1, 1, 8, 8, 8)
    z1 = ae.encode(x)
    ae.set_scaling_factor(0.5)
    assert torch.allclose(ae.encode(x), 0.5 * z1)
    assert torch.allclose(ae.decode(ae.encode(x)), ae.net.decode(z1), atol=1e-6)
    ae.save(tmp_path / "ae")
    assert Autoencoder.load(tmp_path / "ae").scaling_factor == 0.5


def test_folded_latent_is_the_finer_latent_rearranged():
    """latent_patch folds p³ blocks into channels: the fine latent rearranged on a grid p times
    coarser, decoded exactly as the unfolded autoencoder decodes it (the fold is lossless)."""
    torch.manual_seed(0)
    fine = Autoencoder(channels=(8, 8), latent_channels=2, norm_num_groups=4).eval()
    folded = Autoencoder(channels=(8, 8), latent_channels=2, norm_num_groups=4,
                         latent_patch=2).eval()
    folded.load_state_dict(fine.state_dict())
    fine.set_scaling_factor(0.5)
    folded.set_scaling_factor(0.5)
    assert (folded.downsample_factor, folded.network_factor,
            folded.num_latent_channels) == (4, 2, 16)
    x = torch.rand(1, 1, 16, 24, 16)
    z_fine, z = fine.encode(x), folded.encode(x)
    assert z_fine.shape == (1, 2, 8, 12, 8) and z.shape == (1, 16, 4, 6, 4)
    assert torch.equal(z, pixelunshuffle(z_fine, 3, 2))
    assert torch.allclose(folded.decode(z), fine.decode(z_fine), atol=1e-6)


def test_folded_latent_saves_and_checks_its_grid(tmp_path):
    ae = Autoencoder(channels=(8, 8), latent_channels=2, norm_num_groups=4, latent_patch=2)
    ae.save(tmp_path / "ae")
    loaded = Autoencoder.load(tmp_path / "ae")
    assert loaded.config.latent_patch == 2 and loaded.num_latent_channels == 16
    with pytest.raises(ValueError, match="downsampling factor 4"):
        loaded.encode(torch.rand(1, 1, 16, 18, 16))
    with pytest.raises(ValueError, match="latent_patch"):
        Autoencoder(norm_num_groups=4, latent_patch=0)


def test_folded_autoencoder_trains_on_patches_of_the_network_factor():
    """Training never folds: a patch needs only the network's factor (2), not the fold's (4)."""
    ae = Autoencoder(channels=(8, 8), latent_channels=2, norm_num_groups=4, latent_patch=2)
    x = torch.rand(2, 1, 6, 10, 6)
    mu, sigma = ae.encode_moments(x)
    assert mu.shape == sigma.shape == (2, 2, 3, 5, 3)
    assert ae(x)[0].shape == x.shape
    ae.check_patch([6, 10, 6])
    with pytest.raises(ValueError, match="patch size \\[6, 9, 6\\] is not divisible .* factor 2"):
        ae.check_patch([6, 9, 6])


def test_autoencoder_rejects_indivisible_grid():
    ae = Autoencoder(channels=(8, 8, 8), norm_num_groups=4)
    with pytest.raises(ValueError,
                       match="not divisible by the autoencoder's downsampling factor 4"):
        ae.encode(torch.rand(1, 1, 16, 18, 16))


@pytest.mark.parametrize("kwargs,field", [
    (dict(channels=(8, 12), norm_num_groups=8), "norm_num_groups"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(scaling_factor=0.0), "scaling_factor"),
    (dict(channels=(8, 8), attention_levels=(False,)), "attention_levels"),
])
def test_autoencoder_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Autoencoder(**{"norm_num_groups": 4, **kwargs})


@pytest.mark.parametrize("concat_base", [True, False])
def test_unet_shapes_with_and_without_graph_tokens(concat_base):
    torch.manual_seed(0)
    u = DenoisingUNet(**{**TINY_UNET, "concat_base": concat_base})
    x, zb, t, cov = _inputs()
    assert u(x, t, cov, z_base=zb).shape == x.shape
    tokens = torch.randn(2, 5, 16)
    assert u(x, t, cov, z_base=zb, graph_tokens=tokens).shape == x.shape
    assert u.context(cov, tokens).shape == (2, 6, 16)


def test_unet_errors(unet):
    x, zb, t, cov = _inputs()
    with pytest.raises(ValueError, match="pass z_base"):
        unet(x, t, cov)
    with pytest.raises(ValueError, match="context_dim is 16"):
        unet(x, t, cov, z_base=zb, graph_tokens=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="attention_levels"):
        DenoisingUNet(**{**TINY_UNET, "attention_levels": (True,)})
    with pytest.raises(ValueError, match="norm_num_groups"):
        DenoisingUNet(**{**TINY_UNET, "channels": (16, 20)})


@pytest.mark.parametrize("mixer", ["mamba", "attention"])
@pytest.mark.parametrize("fourier", [True, False])
def test_controlnet_shapes_and_zero_init(unet, mixer, fourier):
    cn = MambaControlNet.from_unet(unet, hint_channels=5, mixer=mixer,
                                   fourier_levels=(fourier, False), **TINY_CONTROL)
    x, zb, t, cov = _inputs()
    hint = torch.randn(2, 5, 8, 8, 8)
    down, mid = cn(unet.network_input(x, zb), t, hint, cov, context=unet.context(cov))
    assert [tuple(d.shape[1:]) for d in down] == [(16, 8, 8, 8), (16, 8, 8, 8), (16, 4, 4, 4),
                                                  (32, 4, 4, 4)]
    assert mid.shape == (2, 32, 4, 4, 4)
    base = unet(x, t, cov, z_base=zb)
    assert base.abs().sum() > 0
    steered = unet(x, t, cov, z_base=zb, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid)
    assert torch.equal(base, steered)


@pytest.mark.parametrize("mixer", ["mamba", "attention"])
def test_odd_latent_grid_is_padded_for_both_networks(unet, mixer):
    """A 7×6×5 latent (an 8× autoencoder on an odd grid, like BrLP's 1.5 mm one): the UNet and
    the ControlNet pad it the same way, residuals fit, the output comes back on the latent grid,
    and the padding only extends the grid (the output is the same network on the padded input)."""
    torch.manual_seed(3)
    cn = MambaControlNet.from_unet(unet, hint_channels=5, mixer=mixer, **TINY_CONTROL)
    for p in cn.parameters():  # a trained ControlNet: residuals not zero
        p.data.add_(0.05 * torch.randn_like(p))
    x, zb, t, cov = (v[..., :7, :6, :5] if v.dim() == 5 else v for v in _inputs())
    hint = torch.randn(2, 5, 7, 6, 5)
    down, mid = cn(unet.network_input(x, zb), t, hint, cov, context=unet.context(cov))
    assert down[0].shape[2:] == (8, 6, 6) and mid.shape[2:] == (4, 3, 3)
    out = unet(x, t, cov, z_base=zb, down_block_additional_residuals=down,
               mid_block_additional_residual=mid)
    assert out.shape == x.shape
    padded = unet.net(pad_to_multiple(unet.network_input(x, zb), 2), t, context=unet.context(cov),
                      class_labels=cov, down_block_additional_residuals=tuple(down),
                      mid_block_additional_residual=mid)
    assert torch.equal(out, padded[..., :7, :6, :5])


def test_controlnet_learns_to_steer(unet):
    """After one optimiser step on the ControlNet, its residuals change the UNet's output."""
    cn = MambaControlNet.from_unet(unet, hint_channels=5, **TINY_CONTROL)
    opt = torch.optim.SGD(cn.parameters(), lr=0.1)
    x, zb, t, cov = _inputs()
    hint = torch.randn(2, 5, 8, 8, 8)
    down, mid = cn(unet.network_input(x, zb), t, hint, cov)
    out = unet(x, t, cov, z_base=zb, down_block_additional_residuals=down,
               mid_block_additional_residual=mid)
    out.square().mean().backward()
    opt.step()
    down, mid = cn(unet.network_input(x, zb), t, hint, cov)
    assert mid.abs().sum() > 0 and all(d.abs().sum() > 0 for d in down)


def test_controlnet_copies_unet_weights_and_reports(unet):
    cn = MambaControlNet.from_unet(unet, hint_channels=5, mixer="mamba", **TINY_CONTROL)
    report = cn.copy_weights_from_unet(unet)
    u_sd, c_sd = unet.net.state_dict(), cn.state_dict()
    assert report.copied and all(torch.equal(u_sd[k], c_sd[k]) for k in report.copied)
    assert "conv_in.conv.weight" in report.copied
    assert any(k.startswith("middle_block.resnet_1") for k in report.copied)
    # Mamba replaces attention: the UNet's attention tensors have no counterpart
    assert report.unet_only and all(".attention" in k for k in report.unet_only)
    assert any(k.startswith("mamba_blocks") for k in report.controlnet_only)
    att = MambaControlNet.from_unet(unet, hint_channels=5, mixer="attention", **TINY_CONTROL)
    assert att.copy_weights_from_unet(unet).unet_only == []


def test_controlnet_invalid_config(unet):
    with pytest.raises(ValueError, match="mixer 'lstm'"):
        MambaControlNet.from_unet(unet, hint_channels=5, mixer="lstm")
    with pytest.raises(ValueError, match="mamba_levels"):
        MambaControlNet.from_unet(unet, hint_channels=5, mamba_levels=(True,))
    with pytest.raises(ValueError, match="channels come from the UNet"):
        MambaControlNet.from_unet(unet, hint_channels=5, channels=(8, 8))
    cn = MambaControlNet.from_unet(unet, hint_channels=5, mixer="attention", **TINY_CONTROL)
    x, zb, t, cov = _inputs()
    with pytest.raises(ValueError, match="needs the UNet's cross-attention context"):
        cn(unet.network_input(x, zb), t, torch.randn(2, 5, 8, 8, 8), cov)
    with pytest.raises(ValueError, match="hint grid"):
        cn(unet.network_input(x, zb), t, torch.randn(2, 5, 4, 4, 4), cov, context=unet.context(cov))


@pytest.mark.parametrize("cls,kwargs", [
    (Autoencoder, dict(channels=(8, 8), norm_num_groups=4)),
    (DenoisingUNet, TINY_UNET),
    (MambaControlNet, dict(in_channels=6, hint_channels=5, channels=(16, 32),
                           attention_levels=(False, True), norm_num_groups=8, num_head_channels=8,
                           context_dim=16, **TINY_CONTROL)),
])
def test_save_load_bit_identical(tmp_path, cls, kwargs):
    torch.manual_seed(0)
    m = cls(**kwargs).eval()
    for p in m.parameters():  # make zero-initialised projections non-trivial
        p.data.add_(0.01 * torch.randn_like(p))
    m.save(tmp_path / "m")
    m2 = cls.load(tmp_path / "m")
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    if cls is Autoencoder:
        x = torch.rand(1, 1, 8, 8, 8)
        assert torch.equal(m.encode(x), m2.encode(x))
    else:
        x, zb, t, cov = _inputs()
        if cls is DenoisingUNet:
            assert torch.equal(m(x, t, cov, z_base=zb), m2(x, t, cov, z_base=zb))
        else:
            h = torch.randn(2, 5, 8, 8, 8)
            xin = torch.cat([x, zb], 1)
            assert torch.equal(m(xin, t, h, cov)[1], m2(xin, t, h, cov)[1])


def test_schedulers_share_the_forward_process():
    s = NoiseSchedule(prediction_type="v_prediction", num_train_timesteps=100)
    train = training_scheduler(s)
    for name in ("ddim", "dpm-solver", "ddpm"):
        samp = sampling_scheduler(s, name)
        assert samp.config.prediction_type == "v_prediction"
        assert torch.allclose(samp.alphas_cumprod, train.alphas_cumprod)
        samp.set_timesteps(10)
        assert len(samp.timesteps) == 10 and int(samp.timesteps[0]) == 99
    with pytest.raises(ValueError, match="sampler 'euler'"):
        sampling_scheduler(s, "euler")
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        NoiseSchedule(prediction_type="x0")


@pytest.mark.parametrize("target", ["delta", "absolute"])
def test_unet_target_round_trip(tmp_path, target):
    u = DenoisingUNet(**{**TINY_UNET, "target": target})
    u.set_target_scale(4.0)
    x, zb, _, _ = _inputs()
    tgt = u.target_from_latents(zb, x)
    expected = 4.0 * (x - zb) if target == "delta" else 4.0 * x
    assert torch.allclose(tgt, expected)
    assert torch.allclose(u.latents_from_target(zb, tgt), x, atol=1e-6)
    u.save(tmp_path / "u")
    assert DenoisingUNet.load(tmp_path / "u").config.target_scale == 4.0
    with pytest.raises(ValueError, match="target 'x0'"):
        DenoisingUNet(**{**TINY_UNET, "target": "x0"})


def test_covariates_enter_the_time_embedding(unet):
    """With a fixed cross-attention context the covariates still steer every level through the
    time embedding; without the setting (models saved before it) they do not."""
    x, zb, t, cov = _inputs()
    context = unet.context(cov)
    inp = unet.network_input(x, zb)
    older = cov.flip(0)
    with torch.no_grad():
        assert not torch.allclose(unet.denoise(inp, t, context, covariates=cov),
                                  unet.denoise(inp, t, context, covariates=older))
    with pytest.raises(ValueError, match="pass covariates"):
        unet.denoise(inp, t, context)
    torch.manual_seed(0)
    plain = DenoisingUNet(**TINY_UNET, covariate_time_embedding=False)
    assert not any("class_embedding" in k for k in plain.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.denoise(inp, t, context, covariates=cov),
                           plain.denoise(inp, t, context, covariates=older))
    fresh = DenoisingUNet(**TINY_UNET)  # the embedding starts at zero
    assert all(p.abs().sum() == 0 for p in fresh.net.class_embedding[-1].parameters())
