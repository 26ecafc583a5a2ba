"""One conditioned denoiser for training and sampling: the same conditioning gives the same step."""

import pytest
import torch

from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.conditioning import build_hint, hint_channels
from mambacontrol.pipeline.denoiser import ConditionedDenoiser
from mambacontrol.training import stage_diffusion
from mambacontrol.training.run_config import DiffusionTrain

TINY_UNET = dict(latent_channels=3, channels=(16, 32), attention_levels=(False, True),
                 norm_num_groups=8, num_head_channels=8, context_dim=16)
GRAPH_DIM = 16


def _perturbed(module, seed):
    """Trained-like weights: a fresh MONAI UNet outputs zeros, a fresh ControlNet adds zeros."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    return module


@pytest.fixture
def nets():
    torch.manual_seed(0)
    unet = _perturbed(DenoisingUNet(**TINY_UNET), 1)
    cn = MambaControlNet.from_unet(unet, hint_channels=hint_channels(3, GRAPH_DIM),
                                   fourier_modes=(2, 2, 2), hint_width=8, mamba_d_state=4,
                                   change_hint=False)
    return unet, _perturbed(cn, 2)


def _batch(b=2, s=8):
    g = torch.Generator().manual_seed(3)
    return {"z_base": torch.randn(b, 3, s, s, s, generator=g),
            "covariates": encode_covariates([70, 80], [1, 3], ["F", "M"], ["CN", "AD"]),
            "years": torch.tensor([1.0, 3.0]),
            "tokens": torch.randn(b, 2, GRAPH_DIM, generator=g),
            "graph_map": torch.randn(b, GRAPH_DIM, s, s, s, generator=g),
            "noisy": torch.randn(b, 3, s, s, s, generator=g),
            "t": torch.tensor([5, 700])}


def test_the_step_is_controlnet_then_unet_as_written_out(nets):
    """The object computes what the composition says: hint = z_base ⊕ graph map ⊕ Δt, the
    ControlNet's residuals added to the UNet's blocks, one context for both."""
    unet, cn = nets
    unet.requires_grad_(False)
    b = _batch()
    denoiser = ConditionedDenoiser(unet, cn, graph_hint=True)
    c = denoiser.condition(b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"])
    got = denoiser(b["noisy"], b["t"], c)
    context = unet.context(b["covariates"], b["tokens"])
    hint = build_hint(b["z_base"], b["years"], CovariateNorm(), b["graph_map"])
    down, mid = cn(unet.network_input(b["noisy"], b["z_base"]), b["t"], hint, b["covariates"],
                   context=context)
    want = unet.denoise(unet.network_input(b["noisy"], b["z_base"]), b["t"], context, down, mid,
                        covariates=b["covariates"])
    assert torch.equal(got, want)
    assert not torch.equal(got, unet(b["noisy"], b["t"], b["covariates"], z_base=b["z_base"],
                                     graph_tokens=b["tokens"]))  # the ControlNet steers


def test_training_and_sampling_take_the_same_step(nets, monkeypatch):
    """The controlnet stage's step (stage_diffusion) and the pipeline's sampler step agree."""
    unet, cn = nets
    unet.requires_grad_(False)
    b = _batch()
    sampler = ConditionedDenoiser(unet, cn, graph_hint=True, unet_frozen=True)
    c = sampler.condition(b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"])
    sampled = sampler.steps(c)(b["noisy"], b["t"])
    # the frozen graph encoder's outputs for the batch, as sampling received them
    monkeypatch.setattr(stage_diffusion, "encode_graph",
                        lambda encoder, features, assignment, covariates:
                        (None, b["tokens"], b["graph_map"]))
    batch = {"z_base": b["z_base"], "covariates": b["covariates"], "years": b["years"],
             "features": None, "assignment": None}
    models = {"unet": unet, "controlnet": cn, "graph_encoder": torch.nn.Identity()}
    trained = stage_diffusion._denoise(models, batch, b["noisy"], b["t"], graph_hint=True)
    assert torch.equal(sampled, trained)


def test_a_training_unet_computes_its_context_in_its_forward(nets):
    """While the UNet trains, its covariate embedding gets its gradient through forward (as
    distributed data parallel needs), and the output equals the precomputed-context one."""
    unet, _ = nets
    b = _batch()
    training = ConditionedDenoiser(unet)
    assert not training.unet_frozen
    c = training.condition(b["z_base"], b["covariates"], b["years"], b["tokens"])
    assert c.context is None and c.hint is None

    calls = []
    hook = unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    out = training(b["noisy"], b["t"], c)
    hook.remove()
    assert calls == [1]
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in unet.covariate_embed.parameters())
    frozen = ConditionedDenoiser(unet, unet_frozen=True)
    c_frozen = frozen.condition(b["z_base"], b["covariates"], b["years"], b["tokens"])
    assert c_frozen.context is not None
    assert torch.allclose(frozen(b["noisy"], b["t"], c_frozen), out, atol=0, rtol=0)


def test_bad_combinations_are_refused(nets):
    unet, cn = nets
    with pytest.raises(ValueError, match="frozen UNet"):
        ConditionedDenoiser(unet, cn)  # the UNet's parameters still require gradients
    with pytest.raises(ValueError, match="need a ControlNet"):
        ConditionedDenoiser(unet, graph_hint=True)
    unet.requires_grad_(False)
    b = _batch()
    with pytest.raises(ValueError, match="pass graph_map"):
        ConditionedDenoiser(unet, cn, graph_hint=True).condition(
            b["z_base"], b["covariates"], b["years"], b["tokens"])


def test_guidance_zero_is_the_model_as_trained(nets):
    unet, cn = nets
    unet.requires_grad_(False)
    b = _batch()
    args = (b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"])
    plain = ConditionedDenoiser(unet, cn, graph_hint=True)
    zero = ConditionedDenoiser(unet, cn, graph_hint=True, guidance=0.0)
    assert torch.equal(zero(b["noisy"], b["t"], zero.condition(*args)),
                       plain(b["noisy"], b["t"], plain.condition(*args)))


def test_guidance_contrasts_with_the_zero_horizon(nets):
    """out = out(Δt) + w (out(Δt) − out(0)), the null being the same subject at Δt = 0 (its
    covariates' horizon and its hint's Δt map both zero), run as one batch."""
    unet, cn = nets
    unet.requires_grad_(False)
    b = _batch()
    plain = ConditionedDenoiser(unet, cn, graph_hint=True)
    no_time = b["covariates"].clone()
    no_time[:, 1] = 0.0  # COVARIATE_NAMES[1] == "years"
    conditional = plain(b["noisy"], b["t"], plain.condition(
        b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"]))
    null = plain(b["noisy"], b["t"], plain.condition(
        b["z_base"], no_time, torch.zeros(2), b["tokens"], b["graph_map"]))
    assert not torch.allclose(conditional, null)  # the horizon matters to this network
    guided = ConditionedDenoiser(unet, cn, graph_hint=True, guidance=1.5)
    c = guided.condition(b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"])
    assert c.z_base.shape[0] == 4 and c.guidance == 1.5
    assert c.sample_shape == b["noisy"].shape  # what the sampler draws: the guided rows aside
    out = guided.steps(c)(b["noisy"], b["t"])
    assert out.shape == conditional.shape
    torch.testing.assert_close(out, conditional + 1.5 * (conditional - null), rtol=1e-5,
                               atol=1e-5)


def test_a_dropped_horizon_is_the_guidance_null(nets):
    """Condition dropout in training gives a pair exactly the null that guidance contrasts with
    at sampling, and only the dropped pairs; the batch's tensors are not modified."""
    unet, cn = nets
    unet.requires_grad_(False)
    b = _batch()
    covariates, years = b["covariates"].clone(), b["years"].clone()
    denoiser = ConditionedDenoiser(unet, cn, graph_hint=True)
    args = (b["z_base"], b["covariates"], b["years"], b["tokens"], b["graph_map"])
    dropped = denoiser.condition(*args, drop_horizon=torch.tensor([True, False]))
    assert torch.equal(b["covariates"], covariates) and torch.equal(b["years"], years)
    guided = ConditionedDenoiser(unet, cn, graph_hint=True, guidance=1.0).condition(*args)
    assert torch.equal(dropped.covariates[0], guided.covariates[2])  # row 0: the null
    assert torch.equal(dropped.covariates[1], b["covariates"][1])  # row 1: as given
    assert torch.equal(dropped.hint[0], guided.hint[2])
    assert torch.equal(dropped.hint[1], guided.hint[1])
    assert dropped.covariates[0, 1] == 0 and dropped.hint[0, -1].abs().max() == 0
    with pytest.raises(ValueError, match="not both"):
        ConditionedDenoiser(unet, cn, graph_hint=True, guidance=1.0).condition(
            *args, drop_horizon=torch.tensor([True, False]))


def test_condition_dropout_draws_its_rate():
    assert stage_diffusion.dropped_horizons(8, 0.0, "cpu") is None
    torch.manual_seed(0)
    drawn = stage_diffusion.dropped_horizons(20000, 0.1, "cpu")
    assert drawn.dtype == torch.bool and abs(drawn.float().mean().item() - 0.1) < 0.01


def test_zero_horizon_pairs_become_same_visit_pairs_under_the_null():
    b = _batch()
    batch = {"z_base": b["z_base"], "z_follow": torch.randn_like(b["z_base"])}
    off = stage_diffusion.with_null_horizons(batch, DiffusionTrain(zero_horizon_pairs=0.0))
    assert off[0] is batch and off[1] is None  # both off: nothing drawn
    follow = batch["z_follow"].clone()
    torch.manual_seed(1)
    trained, null = stage_diffusion.with_null_horizons(
        batch, DiffusionTrain(zero_horizon_pairs=0.5, condition_dropout=0.5))
    torch.manual_seed(1)
    dropped = torch.rand(2) < 0.5
    same = torch.rand(2) < 0.5
    assert same.any() and not same.all()  # this seed draws one of each
    assert torch.equal(null, dropped | same)
    for row in range(2):
        want = batch["z_base"][row] if same[row] else follow[row]
        assert torch.equal(trained["z_follow"][row], want)
    assert torch.equal(batch["z_follow"], follow)  # the batch given is not modified


@pytest.mark.parametrize("weight", [-0.5, float("nan")])
def test_a_bad_guidance_weight_is_refused(nets, weight):
    unet, _ = nets
    with pytest.raises(ValueError, match="guidance"):
        ConditionedDenoiser(unet, guidance=weight)


def test_a_unet_without_concat_base_never_sees_the_baseline():
    """The population UNet (``concat_base`` off): another baseline latent, the same step."""
    torch.manual_seed(0)
    unet = _perturbed(DenoisingUNet(**{**TINY_UNET, "concat_base": False}), 1)
    unet.requires_grad_(False)
    b = _batch()
    denoiser = ConditionedDenoiser(unet)
    out = [denoiser(b["noisy"], b["t"], denoiser.condition(z, b["covariates"], b["years"],
                                                           b["tokens"]))
           for z in (b["z_base"], torch.randn_like(b["z_base"]))]
    assert torch.equal(out[0], out[1])


def test_a_trained_controlnet_carries_the_baseline():
    """A tiny run where the target depends on the baseline (Δz = z_base / 2) and the UNet cannot
    see it. Without the baseline no output does better than the target's variance, 0.25; the
    trained ControlNet does, so it carries the baseline to the output."""
    torch.manual_seed(0)
    unet = _perturbed(DenoisingUNet(**{**TINY_UNET, "concat_base": False}), 1)
    unet.requires_grad_(False)  # a trained-like UNet: a fresh one's output layer is zero
    cn = MambaControlNet.from_unet(unet, hint_channels=hint_channels(3, 0),
                                   fourier_modes=(2, 2, 2), hint_width=8, mamba_d_state=4,
                                   change_hint=False)
    denoiser = ConditionedDenoiser(unet, cn)
    optimiser = torch.optim.Adam(cn.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(4)
    covariates = encode_covariates([70] * 4, [2] * 4, ["F"] * 4, ["AD"] * 4)

    def loss() -> torch.Tensor:
        z_base = torch.randn(4, 3, 4, 4, 4, generator=g)
        c = denoiser.condition(z_base, covariates, torch.full((4,), 2.0))
        pred = denoiser(torch.zeros(4, 3, 4, 4, 4), torch.full((4,), 999), c)
        return (pred - z_base / 2).square().mean()

    for _ in range(150):
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()
    with torch.no_grad():
        trained = sum(loss().item() for _ in range(8)) / 8
    assert trained < 0.6 * 0.25, trained
