"""MambaBlock3d: shapes, exact merges, shared versus per-direction weights, float32 inside."""

import pytest
import torch

from mambacontrol.errors import MambaControlError
from mambacontrol.nn import MambaBlock3d, scan_order

CASES = [  # (kwargs, input shape)
    ({"channels": 8}, (1, 8, 4, 4, 4)),
    ({"channels": 6, "directions": ("x+", "y-")}, (3, 6, 3, 5, 2)),
    ({"channels": 4, "share_weights": False, "d_state": 4}, (2, 4, 2, 3, 4)),
    ({"channels": 5, "expand": 1, "d_conv": 2, "directions": ("z-",)}, (2, 5, 1, 1, 7)),
]


@pytest.mark.parametrize("kwargs,shape", CASES)
def test_shape_dtype_and_gradients(kwargs, shape):
    torch.manual_seed(0)
    block = MambaBlock3d(**kwargs)
    x = torch.randn(shape, requires_grad=True)
    y = block(x)
    assert y.shape == shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in block.parameters())


def reference_one_direction(block, x, direction):
    """x + unscan(Mamba(scan(LayerNorm(x)))) written out with explicit permutations."""
    batch, channels, *grid = x.shape
    tokens = block.norm(x.flatten(2).transpose(1, 2))
    order = scan_order(tuple(grid), direction)
    out = torch.empty_like(tokens)
    out[:, order] = block.mixers[0](tokens[:, order])
    return x + out.transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("direction", ["x-", "y+", "z+"])
def test_single_direction_matches_explicit_permutation(direction):
    torch.manual_seed(1)
    block = MambaBlock3d(6, d_state=4, directions=(direction,))
    x = torch.randn(2, 6, 3, 4, 5)
    assert torch.allclose(block(x), reference_one_direction(block, x, direction), atol=1e-6)


def test_scan_direction_sets_the_dependencies():
    """With only "z+", a voxel sees exactly the voxels before it in the raster."""
    torch.manual_seed(2)
    block = MambaBlock3d(4, d_state=4, directions=("z+",))
    x = torch.randn(1, 4, 3, 3, 3)
    base = block(x)
    x2 = x.clone()
    x2[0, 0, 1, 1, 1] += 1.0  # token 13 of 27 (one channel: LayerNorm removes a shift of all)
    changed = (block(x2) - base).abs().amax(dim=1).flatten()
    assert torch.equal(changed[:13], torch.zeros(13))
    assert (changed[13:] > 0).all()


def test_shared_weights_equal_per_direction_copies():
    """Sharing runs the projections once; that must equal averaging full per-direction mixers."""
    torch.manual_seed(3)
    shared = MambaBlock3d(8, d_state=4)
    separate = MambaBlock3d(8, d_state=4, share_weights=False)
    separate.norm.load_state_dict(shared.norm.state_dict())
    for mixer in separate.mixers:
        mixer.load_state_dict(shared.mixers[0].state_dict())
    x = torch.randn(2, 8, 4, 3, 5)
    assert torch.allclose(shared(x), separate(x), atol=1e-6)
    assert len(separate.mixers) == 6 and len(shared.mixers) == 1


def test_runs_in_float32_under_autocast():
    torch.manual_seed(4)
    block = MambaBlock3d(8, d_state=4, directions=("x+", "z-"))
    x = torch.randn(1, 8, 3, 4, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, block(x.float()).bfloat16())


def test_backends_agree():
    torch.manual_seed(5)
    fast = MambaBlock3d(4, d_state=4, backend="torch").double()
    ref = MambaBlock3d(4, d_state=4, backend="sequential").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, 3, 2, 4, dtype=torch.float64)
    assert torch.allclose(fast(x), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 0}, "channels"),
    ({"channels": 4, "directions": ("x+", "up")}, "'up'"),
    ({"channels": 4, "directions": ("x+", "x+")}, "repeats"),
    ({"channels": 4, "backend": "tpu"}, "backend"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MambaBlock3d(**kwargs)


def test_bad_input():
    block = MambaBlock3d(4)
    with pytest.raises(MambaControlError, match=r"\(B, C, X, Y, Z\) with C = 4"):
        block(torch.zeros(1, 3, 2, 2, 2))
    with pytest.raises(MambaControlError, match="got shape"):
        block(torch.zeros(1, 4, 2, 2))
