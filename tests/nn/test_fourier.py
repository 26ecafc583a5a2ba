"""FourierRefine: identity at start, acts on the kept low frequencies only, per channel."""

import pytest
import torch

from mambacontrol.errors import MambaControlError
from mambacontrol.nn import FourierRefine, FourierRefine3d


@pytest.mark.parametrize("block,shape", [
    (FourierRefine3d(4, (2, 3, 2)), (2, 4, 6, 7, 5)),
    (FourierRefine3d(3), (1, 3, 16, 16, 14)),
    (FourierRefine(5, (3,)), (2, 5, 9)),
    (FourierRefine(2, (2, 2)), (1, 2, 4, 3)),
])
def test_identity_at_initialisation(block, shape):
    x = torch.randn(shape)
    assert torch.equal(block(x), x)


def test_filters_exactly_the_kept_modes():
    torch.manual_seed(0)
    block = FourierRefine3d(3, (2, 3, 2))
    with torch.no_grad():
        block.weight[..., 0] = -1.0  # W = -1 on every kept mode: subtracts the low frequencies
    x = torch.randn(2, 3, 8, 9, 6)
    spec_in = torch.fft.rfftn(x, dim=(-3, -2, -1))
    spec_out = torch.fft.rfftn(block(x), dim=(-3, -2, -1))
    kept = torch.zeros(8, 9, 4, dtype=torch.bool)
    for kx in (-1, 0, 1):  # |kx| < 2, |ky| < 3, 0 <= kz < 2
        for ky in (-2, -1, 0, 1, 2):
            kept[kx, ky, :2] = True
    assert spec_out[..., kept].abs().max() < 1e-4
    assert torch.allclose(spec_out[..., ~kept], spec_in[..., ~kept], atol=1e-4)


def test_each_channel_has_its_own_filter():
    torch.manual_seed(1)
    block = FourierRefine3d(3, (2, 2, 2))
    with torch.no_grad():
        block.weight[1] = torch.randn_like(block.weight[1])
    x = torch.randn(1, 3, 5, 6, 4)
    y = block(x)
    assert torch.equal(y[:, [0, 2]], x[:, [0, 2]])
    assert not torch.allclose(y[:, 1], x[:, 1])


def test_gradient_reaches_the_weight_and_dtype_is_kept():
    block = FourierRefine3d(2, (2, 2, 2))
    x = torch.randn(1, 2, 4, 4, 4).bfloat16()
    y = block(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert block.weight.grad is not None and block.weight.grad.abs().sum() > 0


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="channels"):
        FourierRefine3d(0)
    with pytest.raises(ValueError, match="3 numbers"):
        FourierRefine3d(2, (4, 4))
    with pytest.raises(ValueError, match="modes"):
        FourierRefine(2, (0, 2))
    block = FourierRefine3d(2, (4, 4, 4))
    block(torch.zeros(1, 2, 7, 7, 6))  # the smallest grid for these modes
    with pytest.raises(MambaControlError, match="too small for modes"):
        block(torch.zeros(1, 2, 6, 8, 8))
    with pytest.raises(MambaControlError, match="too small for modes"):
        block(torch.zeros(1, 2, 8, 8, 5))
    with pytest.raises(MambaControlError, match="C = 2"):
        block(torch.zeros(1, 3, 8, 8, 8))
