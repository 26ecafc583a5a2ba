"""The selective scan of Mamba (Gu & Dao, 2023) with interchangeable backends.

``selective_scan`` has the signature, shapes and semantics of mamba-ssm's ``selective_scan_fn``:

    delta' = softplus(delta + delta_bias)            (each part optional)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t,    h_{-1} = 0
    y_t    = C_t . h_t + D * u_t,    out = y * silu(z)

Backends:

- ``"cuda"``: mamba-ssm's kernel (imported lazily; GPU tensors only).
- ``"torch"``: :mod:`mambacontrol.ops.chunked_scan`, exact, bounded memory, CPU or GPU.
- ``"sequential"``: one step at a time; a plain reference for tests.
- ``"auto"``: ``"cuda"`` when it can run, else ``"torch"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mambacontrol.errors import MambaControlError
from mambacontrol.ops.chunked_scan import chunked_scan
from mambacontrol.ops.cuda_scan import KERNEL_DTYPES, kernel_usable, load_kernel

BACKENDS = ("auto", "cuda", "torch", "sequential")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a backend, else raise ``ValueError`` listing them."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not a selective-scan backend; use one of "
                         f"{BACKENDS}")
    return backend


def resolve_backend(backend: str, u: Tensor) -> str:
    """The backend that will run for ``u``: ``"auto"`` becomes ``"cuda"`` or ``"torch"``.

    Raises:
        MambaControlError: ``"cuda"`` was asked for but cannot run on ``u``.
    """
    check_backend(backend)
    if backend == "auto":
        return "cuda" if kernel_usable(u) else "torch"
    if backend == "cuda" and not kernel_usable(u):
        if not u.is_cuda:
            why = f"the tensors are on {u.device}, not a CUDA GPU"
        elif u.dtype not in KERNEL_DTYPES:
            why = f"the kernel does not take {u.dtype}"
        else:
            why = "mamba-ssm is not importable (pip install -e .[cuda])"
        raise MambaControlError(f"backend='cuda' cannot run: {why}; use backend='auto' or 'torch'")
    return backend


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False,
                   backend: str = "auto") -> Tensor | tuple[Tensor, Tensor]:
    """Selective state-space scan, as mamba-ssm's ``selective_scan_fn``.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes (before ``delta_bias`` and softplus).
        A: (D, N) real state matrix (diagonal per channel; negative for a stable scan).
        B: (B, N, L) or (B, G, N, L) input matrix; with G groups, channel d uses group
            d // (D / G).
        C: (B, N, L) or (B, G', N, L) output matrix, grouped like ``B`` (G' may differ from G
            for the ``torch`` and ``sequential`` backends).
        D: (D,) skip connection, optional.
        z: (B, D, L) gate, optional: the output is multiplied by ``silu(z)``.
        delta_bias: (D,) added to ``delta`` before the softplus, optional.
        delta_softplus: apply softplus to the step sizes.
        return_last_state: also return the state after the last step.
        backend: ``"auto"``, ``"cuda"``, ``"torch"`` or ``"sequential"``.

    Returns:
        (B, D, L) output in ``u``'s dtype, and with ``return_last_state`` the (B, D, N) last
        state. The ``torch`` and ``sequential`` backends compute in float32 (float64 for float64
        inputs) and propagate gradients through the last state too; mamba-ssm's kernel ignores
        them.

    Raises:
        MambaControlError: shapes that do not fit together, a complex ``A``, or ``backend="cuda"``
            where the kernel cannot run.
        ValueError: an unknown backend.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    requested, backend = backend, resolve_backend(backend, u)
    if backend == "cuda" and _groups(B) != _groups(C):  # the kernel needs one group count
        if requested == "cuda":
            raise MambaControlError(f"backend='cuda' needs B and C with the same number of groups "
                                    f"(got {_groups(B)} and {_groups(C)}); use backend='torch'")
        backend = "torch"
    if backend == "cuda":
        return load_kernel()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def cast(x):
        return None if x is None else x.to(dtype)

    B4, C4 = _common_groups(B.to(dtype), C.to(dtype))
    if backend == "torch":
        y, last = chunked_scan(cast(u), cast(delta), cast(A), B4, C4, D=cast(D), z=cast(z),
                               delta_bias=cast(delta_bias), delta_softplus=delta_softplus)
    else:
        y, last = _sequential_with_options(cast(u), cast(delta), cast(A), B4, C4, cast(D), cast(z),
                                           cast(delta_bias), delta_softplus)
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out


def _sequential_with_options(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """:func:`sequential_scan` with the step-size bias and softplus, the skip and the gate."""
    if delta_bias is not None:
        delta = delta + delta_bias.unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    y, last = sequential_scan(u, delta, A, B, C)
    if D is not None:
        y = y + u * D.unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z)
    return y, last


def sequential_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor,
                    Cm: Tensor) -> tuple[Tensor, Tensor]:
    """Step-by-step scan (the reference): u, delta (Bt, D, L), A (D, N), B, C (Bt, G, N, L).

    Returns:
        y (Bt, D, L) and the last state (Bt, D, N).
    """
    heads = u.shape[1] // Bm.shape[1]
    B_steps = Bm.repeat_interleave(heads, dim=1).unbind(-1)  # L x (Bt, D, N)
    C_steps = Cm.repeat_interleave(heads, dim=1).unbind(-1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for u_t, dt_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B_steps, C_steps):
        dt_t = dt_t.unsqueeze(-1)
        h = torch.exp(dt_t * A) * h + dt_t * u_t.unsqueeze(-1) * B_t
        ys.append((h * C_t).sum(-1))
    return torch.stack(ys, dim=-1), h


def _groups(m: Tensor) -> int:
    return m.shape[1] if m.dim() == 4 else 1


def _common_groups(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B and C as (Bt, G, N, L) with the same number of groups (the least common multiple)."""
    B = B if B.dim() == 4 else B.unsqueeze(1)
    C = C if C.dim() == 4 else C.unsqueeze(1)
    groups = math.lcm(_groups(B), _groups(C))
    return (B.repeat_interleave(groups // B.shape[1], dim=1),
            C.repeat_interleave(groups // C.shape[1], dim=1))


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise MambaControlError(f"u has shape {tuple(u.shape)}; selective_scan needs (B, D, L)")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise MambaControlError(f"delta has shape {tuple(delta.shape)}, u has {tuple(u.shape)}; "
                                "they must match")
    if A.is_complex() or A.dim() != 2 or A.shape[0] != dim:
        raise MambaControlError(f"A is {A.dtype} of shape {tuple(A.shape)}; needs a real (D, N) = "
                                f"({dim}, N) tensor")
    dstate = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        groups = m.shape[1] if m.dim() == 4 else 1
        expected = {3: (batch, dstate, length), 4: (batch, groups, dstate, length)}.get(m.dim())
        if expected is None or tuple(m.shape) != expected or dim % groups:
            raise MambaControlError(
                f"{name} has shape {tuple(m.shape)}; needs (B, N, L) = "
                f"({batch}, {dstate}, {length}) or (B, G, N, L) with G dividing D = {dim}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise MambaControlError(f"{name} has shape {tuple(v.shape)}; needs (D,) = ({dim},)")
    if z is not None and z.shape != u.shape:
        raise MambaControlError(f"z has shape {tuple(z.shape)}, u has {tuple(u.shape)}; "
                                "they must match")
