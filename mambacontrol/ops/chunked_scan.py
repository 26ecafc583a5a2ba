"""Exact selective scan in plain PyTorch: a two-level chunked scan with its own backward.

The recurrence (per batch b, channel d, state n) is

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(delta_t * A),   b_t = delta_t * u_t * B_t,
    y_t = sum_n C_t * h_t,

the same maths as mamba-ssm's ``selective_scan_ref``. The sequence is cut into segments of
``segment`` steps that are processed one after the other (the state is carried across), so memory
stays bounded whatever the length; the segment's full-size tensors live in buffers allocated once.
Inside a segment, the steps are grouped into ``nc`` chunks of ``T`` steps laid out as
``(T, nc, batch, groups, N, H)`` (H channels per group innermost), and three short Python loops do
the work, each step of a loop acting on every chunk at once:

1. over the ``T`` positions: each chunk's end state from a zero start;
2. over the ``nc`` chunks: the state entering each chunk (``h_in[c+1] = P[c] h_in[c] + end[c]``,
   with the chunk's total decay ``P = exp(A * sum_t delta_t)``);
3. over the ``T`` positions again: the recurrence itself, from each chunk's incoming state.

Only products of the decays ``a_t`` appear, never their inverses, so the computation is as stable
as the step-by-step recurrence (no exponential of a positive log-decay), and inside a chunk it is
the very same recurrence.

The forward pass keeps the state entering every chunk (1/T of all states); the backward pass
recomputes one segment's states at a time from them (like mamba-ssm's kernel, which keeps states
at its chunk starts) and runs the adjoint recurrence
``g_t = dL/dh_t = C_t * dy_t + a_{t+1} * g_{t+1}`` with the same two-level scheme, in reverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
    """``x`` (..., L) as a tensor of the same shape and values whose last axis (the steps) is the
    outermost in memory after the batch, zero-padded to ``length`` steps: (Bt, ..., length).

    Cutting such a tensor into chunks keeps the channels contiguous, which makes the layout
    changes of the scan cheap; Mamba's projections produce this layout already (no copy then).
    """
    order = [0, x.dim() - 1, *range(1, x.dim() - 1)]  # (Bt, L, ...)
    if length == x.shape[-1] and x.permute(order).is_contiguous():
        return x
    out = x.new_empty(x.shape[0], length, *x.shape[1:-1]).movedim(1, -1)
    out[..., :x.shape[-1]] = x
    out[..., x.shape[-1]:] = 0
    return out


def new_steps_outer(like: Tensor) -> Tensor:
    """An uninitialised tensor shaped like ``like`` (Bt, ..., L) in the layout of :func:`steps_outer`."""
    return like.new_empty(like.shape[0], like.shape[-1], *like.shape[1:-1]).movedim(1, -1)


class _Workspace:
    """Full-size segment buffers, allocated once and reused by every segment (allocating them
    afresh each time costs more than the arithmetic, in page faults)."""

    def __init__(self, like: Tensor, count: int, numel: int):
        self.buffers = [like.new_empty(numel) for _ in range(count)]

    def views(self, shape: tuple[int, ...]) -> list[Tensor]:
        numel = math.prod(shape)
        return [b[:numel].view(shape) for b in self.buffers]


class _Segment:
    """One segment of the inputs in the chunked layout ``(T, nc, Bt, G, ...)``: position in the
    chunk, chunk, batch, group, then channels (H per group) or states (N)."""

    def __init__(self, u: Tensor, delta: Tensor, Bm: Tensor, Cm: Tensor, start: int, stop: int,
                 chunk: int):
        # u, delta: (Bt, G, H, Lp); Bm, Cm: (Bt, G, N, Lp).
        self.nc = (stop - start) // chunk
        self.u = self.split(u, start, stop, chunk)
        self.delta = self.split(delta, start, stop, chunk)
        self.B = self.split(Bm, start, stop, chunk)
        self.C = self.split(Cm, start, stop, chunk)
        self.shape = (*self.u.shape[:-1], Bm.shape[2], u.shape[2])  # (T, nc, Bt, G, N, H)

    @staticmethod
    def chunked(x: Tensor, start: int, stop: int, chunk: int) -> Tensor:
        """A view of steps ``start:stop`` of ``x`` (Bt, G, X, Lp) as (T, nc, Bt, G, X)."""
        part = x[..., start:stop].unflatten(-1, ((stop - start) // chunk, chunk))
        return part.permute(4, 3, 0, 1, 2)

    @classmethod
    def split(cls, x: Tensor, start: int, stop: int, chunk: int) -> Tensor:
        """Steps ``start:stop`` of ``x`` (Bt, G, X, Lp) as a contiguous (T, nc, Bt, G, X)."""
        return cls.chunked(x, start, stop, chunk).contiguous()

    def store(self, out: Tensor, start: int, values: Tensor) -> None:
        """Write ``values`` (T, nc, Bt, G, X) into steps ``start:`` of ``out`` (Bt, G, X, Lp)."""
        steps, nc = values.shape[:2]
        self.chunked(out, start, start + steps * nc, steps).copy_(values)

    def decays(self, A: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step decays ``a = exp(delta_t A)`` written into ``out`` (T, nc, Bt, G, N, H),
        and each chunk's total decay ``exp(A * sum_t delta_t)`` (nc, Bt, G, N, H); A: (G, N, H)."""
        a = torch.mul(self.delta.unsqueeze(-2), A, out=out).exp_()
        return a, torch.mul(self.delta.sum(0).unsqueeze(-2), A).exp_()

    def inputs(self, out: Tensor) -> Tensor:
        """``b_t = delta_t u_t B_t`` written into ``out`` (T, nc, Bt, G, N, H)."""
        return torch.mul((self.delta * self.u).unsqueeze(-2), self.B.unsqueeze(-1), out=out)

    @staticmethod
    def chunk_starts(a: Tensor, b: Tensor, decay: Tensor, h0: Tensor) -> Tensor:
        """The state entering each chunk, (nc + 1, Bt, G, N, H); the last is the state after
        the segment. ``h0`` (Bt, G, N, H) is the state before the segment."""
        end = b[0].clone()  # every chunk at once: its end state from a zero start
        for t in range(1, a.shape[0]):
            torch.addcmul(b[t], a[t], end, out=end)
        h_in = b.new_empty(a.shape[1] + 1, *h0.shape)
        h_in[0] = h0
        for c in range(a.shape[1]):  # one chunk after the other
            torch.addcmul(end[c], decay[c], h_in[c], out=h_in[c + 1])
        return h_in

    @staticmethod
    def scan_(a: Tensor, b: Tensor, h_in: Tensor) -> Tensor:
        """The recurrence itself, in every chunk from its incoming state ``h_in`` (nc, ...):
        turns ``b`` into the states ``h`` in place."""
        b[0].addcmul_(a[0], h_in)
        for t in range(1, a.shape[0]):
            b[t].addcmul_(a[t], b[t - 1])
        return b


class ChunkedScan(torch.autograd.Function):
    """``y, last = ChunkedScan.apply(u, delta, A, B, C, chunk, segment)``.

    Shapes: u, delta (Bt, D, L), A (D, N), B, C (Bt, G, N, L) with G dividing D;
    y (Bt, D, L), last (Bt, D, N). ``delta`` is the final step size (bias and softplus applied).
    All tensors share one floating dtype (float32 or float64).
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, chunk, segment):
        bt, dim, length = u.shape
        groups, dstate = Bm.shape[1], Bm.shape[2]
        heads = dim // groups
        padded = math.ceil(length / chunk) * chunk
        # delta = 0 pads are identity steps: a = 1, b = 0
        u4 = steps_outer(u.reshape(bt, groups, heads, length), padded)
        delta4 = steps_outer(delta.reshape(bt, groups, heads, length), padded)
        Bm, Cm = steps_outer(Bm, padded), steps_outer(Cm, padded)
        At = A.reshape(groups, heads, dstate).transpose(1, 2).contiguous()  # (G, N, H)
        y = new_steps_outer(u4)
        state = u.new_zeros(bt, groups, dstate, heads)
        work = _Workspace(u, 2, bt * dim * dstate * segment)
        starts = []  # the state entering every chunk, kept for the backward pass
        for start in range(0, padded, segment):
            seg = _Segment(u4, delta4, Bm, Cm, start, min(start + segment, padded), chunk)
            a_buf, b_buf = work.views(seg.shape)
            a, decay = seg.decays(At, a_buf)
            b = seg.inputs(b_buf)
            h_in = seg.chunk_starts(a, b, decay, state)
            h = seg.scan_(a, b, h_in[:-1])
            seg.store(y, start, torch.matmul(seg.C.unsqueeze(-2), h).squeeze(-2))
            starts.append(h_in[:-1])
            state = h_in[-1]
        ctx.save_for_backward(u4, delta4, At, Bm, Cm, torch.cat(starts))
        ctx.sizes = (length, chunk, segment)
        last = state.transpose(-1, -2).reshape(bt, dim, dstate)
        return y.flatten(1, 2)[..., :length], last

    @staticmethod
    def backward(ctx, dy, dlast):
        u4, delta4, At, Bm, Cm, starts = ctx.saved_tensors
        length, chunk, segment = ctx.sizes
        bt, groups, heads, padded = u4.shape
        dstate = Bm.shape[2]
        dy4 = steps_outer(dy.reshape(bt, groups, heads, length), padded)
        # dL/dh after the segment being processed, (Bt, G, N, H)
        carry = dlast.reshape(bt, groups, heads, dstate).transpose(-1, -2).to(u4.dtype)
        du, ddelta = new_steps_outer(u4), new_steps_outer(delta4)
        dB, dC = new_steps_outer(Bm), new_steps_outer(Cm)
        dA = torch.zeros_like(At)
        work = _Workspace(u4, 4, u4.numel() // padded * dstate * segment)
        for start in reversed(range(0, padded, segment)):
            stop = min(start + segment, padded)
            seg = _Segment(u4, delta4, Bm, Cm, start, stop, chunk)
            a_buf, h_buf, g_buf, tmp = work.views(seg.shape)
            h_in = starts[start // chunk:stop // chunk]
            a, decay = seg.decays(At, a_buf)
            h = seg.scan_(a, seg.inputs(h_buf), h_in)
            dy_seg = seg.split(dy4, start, stop, chunk)
            # g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}, in reverse with the same two levels.
            g = torch.mul(seg.C.unsqueeze(-1), dy_seg.unsqueeze(-2), out=g_buf)
            begin = g[-1].clone()  # each chunk's g at its first step, from a zero end
            for t in range(a.shape[0] - 2, -1, -1):
                torch.addcmul(g[t], a[t + 1], begin, out=begin)
            g_in = starts.new_empty(seg.nc + 1, *starts.shape[1:])  # dL/dh at chunk ends
            g_in[-1] = carry
            begin.mul_(a[0])
            for c in range(seg.nc - 1, -1, -1):
                torch.addcmul(begin[c], decay[c], g_in[c + 1], out=g_in[c])
            carry = g_in[0]
            g[-1].add_(g_in[1:])
            for t in range(a.shape[0] - 2, -1, -1):
                g[t].addcmul_(a[t + 1], g[t + 1])
            seg.store(dC, start, torch.mul(h, dy_seg.unsqueeze(-2), out=tmp).sum(-1))
            # q_t = g_t * a_t * h_{t-1} = dL/d(delta_t A), written over a (used last here)
            h_prev_0 = a[0] * h_in
            a[1:].mul_(h[:-1])
            a[0] = h_prev_0
            q = a.mul_(g)
            g_dot_B = torch.matmul(seg.B.unsqueeze(-2), g).squeeze(-2)  # (T, nc, Bt, G, H)
            delta_u = (seg.delta * seg.u).unsqueeze(-2)
            seg.store(dB, start, torch.mul(g, delta_u, out=tmp).sum(-1))
            seg.store(du, start, g_dot_B * seg.delta)
            q_dot_A = torch.mul(q, At, out=h).sum(-2)
            seg.store(ddelta, start, q_dot_A.addcmul_(g_dot_B, seg.u))
            dA += q.mul_(seg.delta.unsqueeze(-2)).flatten(0, 2).sum(0)
        dim = groups * heads
        return (du.flatten(1, 2)[..., :length], ddelta.flatten(1, 2)[..., :length],
                dA.transpose(1, 2).reshape(dim, dstate), dB[..., :length], dC[..., :length],
                None, None)


def chunked_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                 chunk: int | None = None, segment: int | None = None) -> tuple[Tensor, Tensor]:
    """Run the chunked scan (see :class:`ChunkedScan` for shapes); sizes default to :func:`plan`."""
    auto_chunk, auto_segment = plan(*u.shape[:2], Bm.shape[2], u.shape[2])
    chunk = auto_chunk if chunk is None else chunk
    segment = auto_segment if segment is None else max(chunk, segment // chunk * chunk)
    return ChunkedScan.apply(u, delta, A, Bm, Cm, chunk, segment)
