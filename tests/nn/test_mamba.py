"""The Mamba mixer: mamba-ssm's parameter layout and initialisation, causality, backends."""

import math

import pytest
import torch
import torch.nn.functional as F

from mambacontrol.nn import Mamba
from mambacontrol.ops.cuda_scan import load_kernel

# mamba_ssm.Mamba(d_model=32, d_state=8, d_conv=3, expand=2): E = 64, dt_rank = ceil(32 / 16) = 2
MAMBA_SSM_LAYOUT = {
    "A_log": (64, 8),
    "D": (64,),
    "in_proj.weight": (128, 32),
    "conv1d.weight": (64, 1, 3),
    "conv1d.bias": (64,),
    "x_proj.weight": (2 + 16, 64),
    "dt_proj.weight": (64, 2),
    "dt_proj.bias": (64,),
    "out_proj.weight": (32, 64),
}


def test_parameter_names_and_shapes_match_mamba_ssm():
    layer = Mamba(32, d_state=8, d_conv=3, expand=2)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == MAMBA_SSM_LAYOUT
    with_bias = Mamba(32, bias=True, conv_bias=False).state_dict()
    assert "in_proj.bias" in with_bias and "out_proj.bias" in with_bias
    assert "conv1d.bias" not in with_bias


def test_initialisation():
    torch.manual_seed(0)
    layer = Mamba(48, d_state=6, dt_min=0.01, dt_max=0.05, dt_scale=2.0)
    assert torch.equal(-torch.exp(layer.A_log), -torch.arange(1.0, 7.0).expand(96, 6))
    assert torch.equal(layer.D, torch.ones(96))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert layer.dt_proj.weight.abs().max() <= 2.0 * 3 ** -0.5  # dt_rank = ceil(48 / 16) = 3
    assert layer.A_log.dtype == layer.D.dtype == torch.float32
    wide = Mamba(16, dtype=torch.float64)
    assert wide.in_proj.weight.dtype == torch.float64 and wide.A_log.dtype == torch.float32


def test_output_is_causal():
    torch.manual_seed(1)
    layer = Mamba(8, d_state=4)
    x = torch.randn(2, 20, 8)
    y = layer(x)
    x2 = x.clone()
    x2[:, 12] += 1.0
    y2 = layer(x2)
    assert y.shape == (2, 20, 8)
    assert torch.equal(y[:, :12], y2[:, :12])
    assert (y[:, 12:] - y2[:, 12:]).abs().amax(dim=(0, 2)).min() > 0


def test_backends_agree_with_gradients():
    torch.manual_seed(2)
    fast = Mamba(12, d_state=4, backend="torch").double()
    ref = Mamba(12, d_state=4, backend="sequential").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, 37, 12, dtype=torch.float64)
    results = []
    for layer in (fast, ref):
        y = layer(x)
        grads = torch.autograd.grad(y.sin().sum(), list(layer.parameters()))
        results.append((y, *grads))
    for got, want in zip(*results):
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-10


@pytest.mark.parametrize("kwargs,match", [
    ({"d_model": 0}, "d_model"),
    ({"d_model": 8, "d_state": 2.5}, "d_state"),
    ({"d_model": 8, "d_conv": 0}, "d_conv"),
    ({"d_model": 8, "expand": 0}, "expand"),
    ({"d_model": 8, "dt_rank": "big"}, "dt_rank"),
    ({"d_model": 8, "dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
    ({"d_model": 8, "dt_init": "zeros"}, "dt_init"),
    ({"d_model": 8, "backend": "gpu"}, "backend"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba(**kwargs)


@pytest.mark.cuda
def test_matches_mamba_ssm_module_with_loaded_weights():
    """Our module with mamba-ssm's weights, loaded by name, gives mamba-ssm's output."""
    if not torch.cuda.is_available() or load_kernel() is None:
        pytest.skip("needs a CUDA GPU and mamba-ssm with its CUDA extension")
    from mamba_ssm import Mamba as ReferenceMamba  # lazy: optional, CUDA only

    torch.manual_seed(3)
    reference = ReferenceMamba(d_model=32, d_state=16, d_conv=4, expand=2).cuda()
    ours = Mamba(32, d_state=16, d_conv=4, expand=2, backend="torch").cuda()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 300, 32, device="cuda")
    results = []
    for layer in (reference, ours):
        y = layer(x)
        names, params = zip(*layer.named_parameters())
        grads = torch.autograd.grad(y.square().sum(), params)
        results.append({"out": y, **dict(zip(names, grads))})
    assert results[0].keys() == results[1].keys()
    for name, want in results[0].items():
        error = ((results[1][name] - want).abs().max() / want.abs().max()).item()
        assert error < (1e-4 if name == "out" else 2e-3), name
    # and both directions: mamba-ssm's module takes ours
    reference.load_state_dict(ours.state_dict(), strict=True)


def test_dt_rank_auto_rounds_up():
    assert Mamba(17).dt_rank == math.ceil(17 / 16) == 2
    assert Mamba(16, dt_rank=5).x_proj.weight.shape == (5 + 32, 32)
