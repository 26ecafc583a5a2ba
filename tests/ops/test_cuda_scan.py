"""mamba-ssm stays optional and lazy; where it runs (a CUDA GPU), our torch backend matches it."""

import subprocess
import sys
import textwrap

import pytest
import torch

from mambacontrol.ops import resolve_backend, selective_scan
from mambacontrol.ops.cuda_scan import load_kernel

BLOCK_IMPORTS = textwrap.dedent("""
    import importlib.abc, sys
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("mamba_ssm", "triton", "selective_scan_cuda",
                                      "causal_conv1d"):
                raise ImportError(f"{name} must not be imported")
    sys.meta_path.insert(0, Refuse())
""")


def test_import_and_cpu_use_never_touch_mamba_ssm():
    code = BLOCK_IMPORTS + textwrap.dedent("""
        import torch
        import mambacontrol, mambacontrol.ops, mambacontrol.nn
        block = mambacontrol.nn.MambaBlock3d(4, directions=("x+", "z-"))
        block(torch.randn(1, 4, 3, 3, 3)).sum().backward()
        loaded = [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "triton")]
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def needs_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if load_kernel() is None:
        pytest.skip("needs mamba-ssm with its CUDA extension (pip install -e .[cuda])")


def relative_error(a, b):
    """Largest difference over the reference's largest magnitude (0 where both are all zero, as
    dA at length 1, where the state before the only step is zero)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


@pytest.mark.cuda
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("length", [1, 100, 4099])
def test_torch_backend_matches_mamba_ssm_kernel(groups, length):
    needs_kernel()
    g = torch.Generator(device="cuda").manual_seed(length)
    batch, dim, dstate = 2, 64, 16
    bc = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).requires_grad_()

    inputs = {"u": rand(batch, dim, length), "delta": rand(batch, dim, length, scale=0.5),
              "A": (-torch.rand(dim, dstate, device="cuda", generator=g) * 8).requires_grad_(),
              "B": rand(*bc), "C": rand(*bc), "D": rand(dim), "z": rand(batch, dim, length),
              "delta_bias": rand(dim, scale=0.5)}
    assert resolve_backend("auto", inputs["u"]) == "cuda"
    dout = torch.randn(batch, dim, length, device="cuda", generator=g)
    results = {}
    for backend in ("cuda", "torch"):
        out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                                   backend=backend)
        grads = torch.autograd.grad((out * dout).sum(), list(inputs.values()))
        results[backend] = (out, last, *grads)
    for name, got, want in zip(["out", "last", *inputs], results["torch"], results["cuda"]):
        assert relative_error(got, want) < (1e-4 if name in ("out", "last") else 1e-3), name
