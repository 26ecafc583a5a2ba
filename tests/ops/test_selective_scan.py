"""The torch backend against the step-by-step reference: outputs and gradients, every option."""

import random

import pytest
import torch

import mambacontrol.ops.chunked_scan as cs
from mambacontrol.errors import MambaControlError
from mambacontrol.ops import BACKENDS, resolve_backend, selective_scan
from mambacontrol.ops.chunked_scan import chunked_scan, plan
from mambacontrol.ops.selective_scan import _sequential_with_options

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_inputs(batch, dim, dstate, length, groups, dtype, seed, options):
    """Random scan inputs as a dict of leaf tensors that require grad."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale + offset).requires_grad_()

    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    inputs = {
        "u": rand(batch, dim, length),
        # raw step sizes: around -3 before a softplus, small positive values without one
        "delta": rand(batch, dim, length, scale=0.5, offset=-3.0) if options["delta_softplus"]
        else (torch.rand(batch, dim, length, generator=g, dtype=dtype) * 0.3).requires_grad_(),
        "A": (-torch.rand(dim, dstate, generator=g, dtype=dtype) * 4 - 0.05).requires_grad_(),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
    }
    if options["D"]:
        inputs["D"] = rand(dim)
    if options["z"]:
        inputs["z"] = rand(batch, dim, length)
    if options["delta_bias"]:  # keeps the step sizes positive when there is no softplus
        inputs["delta_bias"] = (rand(dim, scale=0.5) if options["delta_softplus"] else
                                (torch.rand(dim, generator=g, dtype=dtype) * 0.2).requires_grad_())
    return inputs


def run_with_grads(inputs, backend, delta_softplus, return_last_state, seed):
    out = selective_scan(**inputs, delta_softplus=delta_softplus,
                         return_last_state=return_last_state, backend=backend)
    outputs = out if return_last_state else (out,)
    g = torch.Generator().manual_seed(seed + 1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return outputs, dict(zip(inputs, grads))


def random_cases(count=24, seed=0):
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        dim = rng.choice([4, 6, 8, 12])
        groups = rng.choice([None, None, 1, 2]) if dim % 2 == 0 else None
        options = {k: rng.random() < 0.5 for k in ("D", "z", "delta_bias", "delta_softplus")}
        cases.append(dict(batch=rng.randint(1, 3), dim=dim, dstate=rng.choice([1, 3, 4, 16]),
                          length=rng.choice([1, 2, 15, 17, 33, 100, 257]), groups=groups,
                          dtype=(torch.float32, torch.float64)[i % 2], seed=i, options=options,
                          return_last_state=rng.random() < 0.5))
    return cases


@pytest.mark.parametrize("case", random_cases(), ids=lambda c: f"seed{c['seed']}")
def test_torch_matches_sequential(case):
    inputs = make_inputs(case["batch"], case["dim"], case["dstate"], case["length"], case["groups"],
                         case["dtype"], case["seed"], case["options"])
    softplus, last = case["options"]["delta_softplus"], case["return_last_state"]
    ref_out, ref_grads = run_with_grads(inputs, "sequential", softplus, last, case["seed"])
    out, grads = run_with_grads(inputs, "torch", softplus, last, case["seed"])
    tol = TOLERANCE[case["dtype"]]
    for o, r in zip(out, ref_out):
        assert o.dtype == r.dtype and o.shape == r.shape
        assert relative_error(o, r) < tol
    for name in inputs:
        assert grads[name].shape == inputs[name].shape
        assert relative_error(grads[name], ref_grads[name]) < tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk,segment", [(1, 1), (4, 4), (4, 12), (5, 25), (16, 48)])
def test_chunk_and_segment_sizes(dtype, chunk, segment):
    """Every layout of the two-level scan: one or many chunks per segment, padded last chunk,
    many segments, and a gradient flowing into the last state; with every option on."""
    g = torch.Generator().manual_seed(chunk * 100 + segment)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    leaves = [rand(2, 6, 71), rand(2, 6, 71), (-torch.rand(6, 5, generator=g, dtype=dtype) * 3),
              rand(2, 3, 5, 71), rand(2, 3, 5, 71), rand(6), rand(2, 6, 71), rand(6)]
    leaves[2].requires_grad_()
    weights = [torch.randn(2, 6, 71, generator=g, dtype=dtype),
               torch.randn(2, 6, 5, generator=g, dtype=dtype)]
    results = []
    for core in (_sequential_with_options,
                 lambda *a: chunked_scan(*a, chunk=chunk, segment=segment)):
        y, last = core(*leaves, True)
        loss = (y * weights[0]).sum() + (last * weights[1]).sum()
        results.append((y, last, *torch.autograd.grad(loss, leaves)))
    for got, want in zip(results[1], results[0]):
        assert relative_error(got, want) < TOLERANCE[dtype]


def test_strong_decay_is_stable():
    """Log-decays summing to -1e4 within a chunk: a factorised exp(-cumsum) scan overflows here;
    products of decays do not."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 4, 64, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.full((1, 4, 64), 50.0, dtype=torch.float64, requires_grad=True)
    A = torch.tensor([[-1.0, -5.0, -20.0]] * 4, dtype=torch.float64, requires_grad=True)
    B, C = (torch.randn(1, 3, 64, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in "BC")
    outs = {}
    for backend in ("sequential", "torch"):
        y = selective_scan(u, delta, A, B, C, backend=backend)
        outs[backend] = (y, *torch.autograd.grad(y.square().sum(), [u, delta, A, B, C]))
    for got, want in zip(outs["torch"], outs["sequential"]):
        assert torch.isfinite(got).all()
        assert relative_error(got, want) < 1e-10


def test_growing_state_matches_reference():
    """A positive A (exp(delta A) > 1) is allowed by the maths; the result still matches."""
    g = torch.Generator().manual_seed(1)
    u, delta = torch.randn(1, 2, 40, generator=g), torch.rand(1, 2, 40, generator=g) * 0.1
    A = torch.rand(2, 4, generator=g)
    B, C = torch.randn(1, 4, 40, generator=g), torch.randn(1, 4, 40, generator=g)
    ref = selective_scan(u, delta, A, B, C, backend="sequential")
    assert relative_error(selective_scan(u, delta, A, B, C, backend="torch"), ref) < 1e-5


def test_low_precision_inputs_compute_in_float32():
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(2, 4, 30, generator=g), torch.rand(2, 4, 30, generator=g),
            -torch.rand(4, 8, generator=g), torch.randn(2, 8, 30, generator=g),
            torch.randn(2, 8, 30, generator=g)]
    low = [a.bfloat16() for a in args]
    out, last = selective_scan(*low, z=low[0], return_last_state=True, backend="torch")
    ref, ref_last = selective_scan(*[a.float() for a in low], z=low[0].float(),
                                   return_last_state=True, backend="torch")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert torch.equal(out, ref.bfloat16()) and torch.equal(last, ref_last)


def test_different_group_counts_for_B_and_C():
    inputs = make_inputs(1, 8, 3, 20, 2, torch.float64, 4,
                         {"D": False, "z": False, "delta_bias": False, "delta_softplus": False})
    inputs["C"] = torch.randn(1, 4, 3, 20, dtype=torch.float64, requires_grad=True)
    ref, ref_grads = run_with_grads(inputs, "sequential", False, True, 4)
    out, grads = run_with_grads(inputs, "torch", False, True, 4)
    for o, r in zip(out, ref):
        assert relative_error(o, r) < 1e-10
    for name in inputs:
        assert relative_error(grads[name], ref_grads[name]) < 1e-10


def test_inputs_are_not_modified():
    inputs = make_inputs(2, 4, 3, 37, 2, torch.float32, 3,
                         {"D": True, "z": True, "delta_bias": True, "delta_softplus": True})
    before = {k: v.detach().clone() for k, v in inputs.items()}
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                               backend="torch")
    (out.sum() + last.sum()).backward()
    for name, value in inputs.items():
        assert torch.equal(value.detach(), before[name]), name


def test_plan_bounds_segment_memory():
    for batch, dim, dstate, length in [(2, 128, 16, 16384), (6, 128, 16, 16128), (1, 8, 4, 999),
                                       (1, 1, 1, 1), (64, 512, 16, 10)]:
        chunk, segment = plan(batch, dim, dstate, length, segment_elements=1 << 20)
        assert 1 <= chunk <= max(length, 1) and segment % chunk == 0
        assert segment <= -(-length // chunk) * chunk
        assert batch * dim * dstate * segment <= max(1 << 20, batch * dim * dstate * chunk)


def test_backend_checks():
    u = torch.zeros(1, 2, 5)
    args = (u, u, torch.zeros(2, 3), torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="'fast' is not a selective-scan backend"):
        selective_scan(*args, backend="fast")
    with pytest.raises(MambaControlError, match="backend='cuda' cannot run"):
        selective_scan(*args, backend="cuda")
    assert resolve_backend("auto", u) == "torch"
    assert set(BACKENDS) == {"auto", "cuda", "torch", "sequential"}


@pytest.mark.parametrize("name,bad,match", [
    ("u", torch.zeros(2, 5), "u has shape"),
    ("delta", torch.zeros(1, 2, 4), "delta has shape"),
    ("A", torch.zeros(3, 3), "A is"),
    ("A", torch.zeros(2, 3, dtype=torch.complex64), "A is"),
    ("B", torch.zeros(1, 3, 4), "B has shape"),
    ("C", torch.zeros(1, 3, 3, 5), "C has shape"),  # 3 groups do not divide D = 2
])
def test_shape_errors(name, bad, match):
    args = {"u": torch.zeros(1, 2, 5), "delta": torch.zeros(1, 2, 5), "A": torch.zeros(2, 3),
            "B": torch.zeros(1, 3, 5), "C": torch.zeros(1, 3, 5)}
    args[name] = bad
    with pytest.raises(MambaControlError, match=match):
        selective_scan(**args)


def test_optional_shape_errors():
    args = (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), torch.zeros(2, 3), torch.zeros(1, 3, 5),
            torch.zeros(1, 3, 5))
    with pytest.raises(MambaControlError, match="D has shape"):
        selective_scan(*args, D=torch.zeros(3))
    with pytest.raises(MambaControlError, match="delta_bias has shape"):
        selective_scan(*args, delta_bias=torch.zeros(1, 2))
    with pytest.raises(MambaControlError, match="z has shape"):
        selective_scan(*args, z=torch.zeros(1, 2, 4))


def test_cpu_scan_runs_on_one_thread_and_restores_the_count():
    seen = []
    original = cs.ChunkedScan._forward

    def spy(*args):
        seen.append(torch.get_num_threads())
        return original(*args)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cs.ChunkedScan._forward = staticmethod(spy)
        u = torch.randn(2, 4, 40, requires_grad=True)
        out = selective_scan(u, torch.rand(2, 4, 40), -torch.rand(4, 3), torch.randn(2, 3, 40),
                             torch.randn(2, 3, 40), backend="torch")
        out.sum().backward()
        assert seen == [1] and torch.get_num_threads() == 2 and u.grad is not None
    finally:
        cs.ChunkedScan._forward = staticmethod(original)
        torch.set_num_threads(threads)
