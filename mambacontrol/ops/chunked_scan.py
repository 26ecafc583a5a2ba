"""Exact selective scan in plain PyTorch: a two-level chunked scan with its own backward.

The recurrence (per batch b, channel d, state n) is

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(delta_t * A),   b_t = delta_t * u_t * B_t,
    y_t = sum_n C_t * h_t,

the same maths as mamba-ssm's ``selective_scan_ref``. The sequence is cut into segments of
``segment`` steps that are processed one after the other (the state is carried across), so the
working memory is bounded whatever the length; the segment's full-size tensors (``N`` times the
size of an input) live in buffers allocated once. Inside a segment, the steps are grouped into
``nc`` chunks of ``T`` steps laid out as ``(T, batch, nc, groups, N, H)`` (H channels per group
innermost), and three short Python loops do the work, each step of a loop acting on every chunk
at once:

1. over the ``T`` positions: each chunk's end state from a zero start;
2. over the ``nc`` chunks: the state entering each chunk (``h_in[c+1] = P[c] h_in[c] + end[c]``,
   with the chunk's total decay ``P = exp(A * sum_t delta_t)``);
3. over the ``T`` positions again: the recurrence itself, from each chunk's incoming state.

Only products of the decays ``a_t`` appear, never their inverses, so the computation is as stable
as the step-by-step recurrence (no exponential of a positive log-decay), and inside a chunk it is
the very same recurrence.

The inputs are kept "steps-outer" in memory, (batch, L, channels): Mamba's projections produce
them so, and their chunked layout is then a view in which the channels stay contiguous.

The forward pass keeps the state entering every chunk (``N / T`` times the size of an input);
the backward pass recomputes one segment's states at a time from them (as mamba-ssm's kernel
does from the states it keeps at its chunk starts) and runs the adjoint recurrence
``g_t = dL/dh_t = C_t * dy_t + a_{t+1} * g_{t+1}`` with the same two-level scheme, in reverse.
The step-size bias and softplus, the skip ``D`` and the gate ``silu(z)`` are part of the same
function, so that only the inputs and the step sizes are kept for the backward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mambacontrol.ops.threads import torch_threads

#: Elements (batch * channels * states * steps) per segment: bounds the working memory (a few
#: full-size temporaries of this many elements) and keeps them close to the CPU caches.
DEFAULT_SEGMENT_ELEMENTS = 1 << 20
#: Smallest and largest chunk length.
MIN_CHUNK, MAX_CHUNK = 16, 256


def plan(batch: int, dim: int, dstate: int, length: int,
         segment_elements: int = DEFAULT_SEGMENT_ELEMENTS) -> tuple[int, int]:
    """Chunk and segment lengths (in steps) for a scan of the given size.

    A segment holds about ``segment_elements`` elements; its chunk length is near the square
    root of its step count, which balances the two Python loops (over the positions in a chunk
    and over the chunks).

    Returns:
        ``(chunk, segment)``: ``segment`` is a multiple of ``chunk``; the sequence is padded to a
        multiple of ``chunk``.
    """
    steps = max(1, min(length, segment_elements // max(1, batch * dim * dstate)))
    chunk = 2 ** round(math.log2(math.sqrt(steps)))
    chunk = min(length, max(MIN_CHUNK, min(MAX_CHUNK, chunk)))
    chunks_total = math.ceil(length / chunk)
    return chunk, chunk * min(chunks_total, max(1, steps // chunk))


def steps_outer(x: Tensor, length: int) -> Tensor:
    """``x`` (Bt, G, X, L) zero-padded to ``length`` steps, with the channels X contiguous and
    the steps outside them in memory, (Bt, L, G, X); ``x`` itself when it needs no padding and
    its channels are contiguous already (as Mamba's projections leave them)."""
    if length == x.shape[-1] and x.stride(-2) == 1 and x.stride(-1) >= x.shape[-2]:
        return x
    out = new_steps_outer(x, length)
    out[..., :x.shape[-1]] = x
    out[..., x.shape[-1]:] = 0
    return out


def new_steps_outer(like: Tensor, length: int | None = None) -> Tensor:
    """An uninitialised (Bt, ..., length) tensor in the layout of :func:`steps_outer`."""
    length = like.shape[-1] if length is None else length
    return like.new_empty(like.shape[0], length, *like.shape[1:-1]).movedim(1, -1)


def chunked(x: Tensor, start: int, stop: int, chunk: int) -> Tensor:
    """Steps ``start:stop`` of a steps-outer ``x`` (Bt, G, X, Lp) as a (T, Bt, nc, G, X) view."""
    part = x[..., start:stop].unflatten(-1, ((stop - start) // chunk, chunk))
    return part.permute(4, 0, 3, 1, 2)


class _Workspace:
    """Full-size segment buffers, allocated once and reused by every segment (allocating them
    afresh each time costs more than the arithmetic, in page faults)."""

    def __init__(self, like: Tensor, count: int, numel: int):
        self.buffers = [like.new_empty(numel) for _ in range(count)]

    def views(self, shape: tuple[int, ...]) -> list[Tensor]:
        numel = math.prod(shape)
        return [b[:numel].view(shape) for b in self.buffers]


class _Segment:
    """Views of one segment's inputs in the chunked layout ``(T, Bt, nc, G, ...)``: position in
    the chunk, batch, chunk, group, then channels (H per group) or states (N)."""

    def __init__(self, u: Tensor, step: Tensor, Bm: Tensor, Cm: Tensor, start: int, stop: int,
                 chunk: int):
        # u, step: (Bt, G, H, Lp); Bm, Cm: (Bt, G, N, Lp); all steps-outer.
        self.start, self.stop, self.chunk = start, stop, chunk
        self.u, self.delta = self.split(u), self.split(step)
        self.B, self.C = self.split(Bm), self.split(Cm)
        self.nc = self.u.shape[2]
        self.shape = (*self.u.shape[:-1], Bm.shape[2], u.shape[2])  # (T, Bt, nc, G, N, H)

    def view(self, x: Tensor) -> Tensor:
        """This segment of ``x`` (Bt, G, X, Lp) as a (T, Bt, nc, G, X) view."""
        return chunked(x, self.start, self.stop, self.chunk)

    def split(self, x: Tensor) -> Tensor:
        """This segment of ``x`` (Bt, G, X, Lp) as a contiguous (T, Bt, nc, G, X) copy (one
        fast copy: its channels are contiguous; the copy is read many times)."""
        return self.view(x).contiguous()

    def decays(self, A: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step decays ``a = exp(delta_t A)`` written into ``out`` (T, Bt, nc, G, N, H), and
        each chunk's total decay ``exp(A * sum_t delta_t)`` (Bt, nc, G, N, H); A: (G, N, H)."""
        a = torch.mul(self.delta.unsqueeze(-2), A, out=out).exp_()
        return a, torch.mul(self.delta.sum(0).unsqueeze(-2), A).exp_()

    def inputs(self, out: Tensor) -> Tensor:
        """``b_t = delta_t u_t B_t`` written into ``out`` (T, Bt, nc, G, N, H)."""
        return torch.mul((self.delta * self.u).unsqueeze(-2), self.B.unsqueeze(-1), out=out)

    @staticmethod
    def chunk_starts_(a: Tensor, b: Tensor, decay: Tensor, h_in: Tensor) -> None:
        """Fill ``h_in[:, 1:]`` (Bt, nc + 1, G, N, H) with the state entering each following
        chunk (the last: the state after the segment), given ``h_in[:, 0]``."""
        end = b[0].clone()  # every chunk at once: its end state from a zero start
        for t in range(1, a.shape[0]):
            torch.addcmul(b[t], a[t], end, out=end)
        for c in range(a.shape[2]):  # one chunk after the other
            torch.addcmul(end[:, c], decay[:, c], h_in[:, c], out=h_in[:, c + 1])

    @staticmethod
    def scan_(a: Tensor, b: Tensor, h_in: Tensor) -> Tensor:
        """The recurrence itself, in every chunk from its incoming state ``h_in`` (Bt, nc, ...):
        turns ``b`` into the states ``h`` in place."""
        b[0].addcmul_(a[0], h_in)
        for t in range(1, a.shape[0]):
            b[t].addcmul_(a[t], b[t - 1])
        return b


def _step_sizes(delta4: Tensor, bias: Tensor | None, softplus: bool, length: int) -> Tensor:
    """softplus(delta + bias) (each part optional) on (Bt, G, H, Lp), the pads kept at zero."""
    if bias is None and not softplus:
        return delta4
    step = delta4 if bias is None else delta4 + bias.view(*delta4.shape[1:3], 1)
    if softplus:
        step = F.softplus(step)
    step[..., length:] = 0
    return step


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread when on a CPU, then restore the count.

    The scan is thousands of small ops (a segment is about 1M elements); splitting each across
    threads gains little, and on a machine where another process is busy every op waits for its
    threads to be scheduled: measured on 2 cores beside another 2-thread job, a (24, 128, 16, 2016)
    scan took 35–44 s with 2 threads and 0.2 s with one.
    """
    with torch_threads(1 if device.type == "cpu" else None):
        yield


def _silu_grad(x: Tensor) -> Tensor:
    sig = torch.sigmoid(x)
    return sig * (1 + x * (1 - sig))


class ChunkedScan(torch.autograd.Function):
    """``out, last = ChunkedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
    chunk, segment)``: all of :func:`mambacontrol.ops.selective_scan` in one function.

    Shapes: u, delta, z (Bt, D, L), A (D, N), B, C (Bt, G, N, L) with G dividing D, D and
    delta_bias (D,) (D, z, delta_bias may be None); out (Bt, D, L), last (Bt, D, N). All tensors
    share one floating dtype (float32 or float64).
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus, chunk, segment):
        with one_cpu_thread(u.device):
            return ChunkedScan._forward(ctx, u, delta, A, Bm, Cm, D, z, delta_bias,
                                        delta_softplus, chunk, segment)

    @staticmethod
    def backward(ctx, dout, dlast):
        with one_cpu_thread(dout.device):
            return ChunkedScan._backward(ctx, dout, dlast)

    @staticmethod
    def _forward(ctx, u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus, chunk, segment):
        bt, dim, length = u.shape
        groups, dstate = Bm.shape[1], Bm.shape[2]
        heads = dim // groups
        padded = math.ceil(length / chunk) * chunk
        # The pads are identity steps (step size 0: a = 1, b = 0).
        u4 = steps_outer(u.reshape(bt, groups, heads, length), padded)
        delta4 = steps_outer(delta.reshape(bt, groups, heads, length), padded)
        z4 = None if z is None else steps_outer(z.reshape(bt, groups, heads, length), padded)
        Bm, Cm = steps_outer(Bm, padded), steps_outer(Cm, padded)
        step = _step_sizes(delta4, delta_bias, delta_softplus, length)
        At = A.reshape(groups, heads, dstate).transpose(1, 2).contiguous()  # (G, N, H)
        D2 = None if D is None else D.view(groups, heads)
        out = new_steps_outer(u4)
        # the state entering each chunk
        starts = u.new_empty(bt, padded // chunk + 1, groups, dstate, heads)
        starts[:, 0] = 0
        work = _Workspace(u, 2, bt * dim * dstate * segment)
        for start in range(0, padded, segment):
            seg = _Segment(u4, step, Bm, Cm, start, min(start + segment, padded), chunk)
            first = start // chunk
            a_buf, b_buf = work.views(seg.shape)
            a, decay = seg.decays(At, a_buf)
            b = seg.inputs(b_buf)
            seg.chunk_starts_(a, b, decay, starts[:, first:first + seg.nc + 1])
            h = seg.scan_(a, b, starts[:, first:first + seg.nc])
            y = torch.matmul(seg.C.unsqueeze(-2), h).squeeze(-2)  # (T, Bt, nc, G, H)
            if D2 is not None:
                y.addcmul_(seg.u, D2)
            if z4 is not None:
                y.mul_(F.silu(seg.view(z4)))
            seg.view(out).copy_(y)
        ctx.save_for_backward(u4, delta4, step, At, Bm, Cm, D, z4, delta_bias, starts)
        ctx.options = (length, delta_softplus, chunk, segment)
        last = starts[:, -1].transpose(-1, -2).reshape(bt, dim, dstate)
        return out.flatten(1, 2)[..., :length], last

    @staticmethod
    def _backward(ctx, dout, dlast):
        u4, delta4, step, At, Bm, Cm, D, z4, delta_bias, starts = ctx.saved_tensors
        length, delta_softplus, chunk, segment = ctx.options
        bt, groups, heads, padded = u4.shape
        dstate = Bm.shape[2]
        dout4 = steps_outer(dout.reshape(bt, groups, heads, length), padded)
        # dL/dh after the segment being processed, (Bt, G, N, H)
        carry = dlast.reshape(bt, groups, heads, dstate).transpose(-1, -2).to(u4.dtype)
        du, ddelta = new_steps_outer(u4), new_steps_outer(delta4)
        dz = None if z4 is None else new_steps_outer(z4)
        dB, dC = new_steps_outer(Bm), new_steps_outer(Cm)
        dA = torch.zeros_like(At)
        D2 = None if D is None else D.view(groups, heads)
        dD = None if D is None else torch.zeros_like(D2)
        work = _Workspace(u4, 4, u4.numel() // padded * dstate * segment)
        for start in reversed(range(0, padded, segment)):
            seg = _Segment(u4, step, Bm, Cm, start, min(start + segment, padded), chunk)
            first = start // chunk
            a_buf, h_buf, g_buf, tmp = work.views(seg.shape)
            h_in = starts[:, first:first + seg.nc]
            a, decay = seg.decays(At, a_buf)
            h = seg.scan_(a, seg.inputs(h_buf), h_in)
            dy = seg.split(dout4)  # (T, Bt, nc, G, H)
            if z4 is not None:  # out = (y + D u) * silu(z)
                z_seg = seg.split(z4)
                pre_gate = torch.matmul(seg.C.unsqueeze(-2), h).squeeze(-2)
                if D2 is not None:
                    pre_gate.addcmul_(seg.u, D2)
                seg.view(dz).copy_(pre_gate.mul_(dy).mul_(_silu_grad(z_seg)))
                dy = dy * F.silu(z_seg)
            if D2 is not None:
                dD += (dy * seg.u).flatten(0, 2).sum(0)
            # g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}, in reverse with the same two levels.
            g = torch.mul(seg.C.unsqueeze(-1), dy.unsqueeze(-2), out=g_buf)
            begin = g[-1].clone()  # each chunk's g at its first step, from a zero end
            for t in range(a.shape[0] - 2, -1, -1):
                torch.addcmul(g[t], a[t + 1], begin, out=begin)
            g_in = torch.empty_like(starts[:, :seg.nc + 1])  # dL/dh at each chunk's last step
            g_in[:, -1] = carry
            begin.mul_(a[0])
            for c in range(seg.nc - 1, -1, -1):
                torch.addcmul(begin[:, c], decay[:, c], g_in[:, c + 1], out=g_in[:, c])
            carry = g_in[:, 0]
            g[-1].add_(g_in[:, 1:])
            for t in range(a.shape[0] - 2, -1, -1):
                g[t].addcmul_(a[t + 1], g[t + 1])
            seg.view(dC).copy_(torch.mul(h, dy.unsqueeze(-2), out=tmp).sum(-1))
            # q_t = g_t * a_t * h_{t-1} = dL/d(delta_t A), written over a (used last here)
            h_prev_0 = a[0] * h_in
            a[1:].mul_(h[:-1])
            a[0] = h_prev_0
            q = a.mul_(g)
            g_dot_B = torch.matmul(seg.B.unsqueeze(-2), g).squeeze(-2)  # (T, Bt, nc, G, H)
            delta_u = (seg.delta * seg.u).unsqueeze(-2)
            seg.view(dB).copy_(torch.mul(g, delta_u, out=tmp).sum(-1))
            du_seg = g_dot_B * seg.delta
            if D2 is not None:
                du_seg.addcmul_(dy, D2)
            seg.view(du).copy_(du_seg)
            q_dot_A = torch.mul(q, At, out=h).sum(-2)
            dstep_seg = q_dot_A.addcmul_(g_dot_B, seg.u)
            if delta_softplus:  # softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)); 1 above 20
                dstep_seg.mul_(torch.where(seg.delta > 20, 1.0, -torch.expm1(-seg.delta)))
            seg.view(ddelta).copy_(dstep_seg)
            dA += q.mul_(seg.delta.unsqueeze(-2)).flatten(0, 2).sum(0)
        dbias = None if delta_bias is None else ddelta[..., :length].sum((0, 3)).flatten()
        dim = groups * heads

        def trim(x):
            return None if x is None else x.flatten(1, 2)[..., :length]

        return (trim(du), trim(ddelta), dA.transpose(1, 2).reshape(dim, dstate), dB[..., :length],
                dC[..., :length], None if dD is None else dD.flatten(), trim(dz), dbias,
                None, None, None)


def chunked_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                 D: Tensor | None = None, z: Tensor | None = None,
                 delta_bias: Tensor | None = None, delta_softplus: bool = False,
                 chunk: int | None = None, segment: int | None = None) -> tuple[Tensor, Tensor]:
    """Run :class:`ChunkedScan` (see there for shapes); sizes default to :func:`plan`."""
    auto_chunk, auto_segment = plan(*u.shape[:2], Bm.shape[2], u.shape[2])
    chunk = auto_chunk if chunk is None else chunk
    segment = auto_segment if segment is None else max(chunk, segment // chunk * chunk)
    return ChunkedScan.apply(u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus, chunk, segment)
