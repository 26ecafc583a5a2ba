"""Exact selective scan in plain PyTorch: a two-level chunked scan with its own backward.

The recurrence (per batch b, channel d, state n) is

    h_t = a_t * h_{t-1} + b_t,   a_t = exp(delta_t * A),   b_t = delta_t * u_t * B_t,
    y_t = sum_n C_t * h_t,

the same maths as mamba-ssm's ``selective_scan_ref``. The sequence is cut into segments of
``segment`` steps that are processed one after the other (the state is carried across), so memory
stays bounded whatever the length. Inside a segment, the steps are grouped into ``nc`` chunks of
``T`` steps laid out as ``(T, nc, batch, groups, H, N)``, and three short Python loops do the work,
each step of a loop acting on every chunk at once:

1. over the ``T`` positions: each chunk's end state from a zero start, and its total decay;
2. over the ``nc`` chunks: the state entering each chunk (``h_in[c+1] = decay[c] h_in[c] + end[c]``);
3. over the ``T`` positions again: the recurrence itself, from each chunk's incoming state.

Only products of the decays ``a_t`` appear, never their inverses, so the computation is as stable
as the step-by-step recurrence (no exponential of a positive log-decay), and inside a chunk it is
the very same recurrence.

The backward pass recomputes one segment's states at a time from the states saved at segment
starts (like mamba-ssm's kernel) and runs the adjoint recurrence
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

    @staticmethod
    def split(x: Tensor, start: int, stop: int, chunk: int) -> Tensor:
        """(Bt, G, X, Lp) -> (T, nc, Bt, G, X) for steps ``start:stop``, contiguous."""
        part = x[..., start:stop].unflatten(-1, ((stop - start) // chunk, chunk))
        return part.permute(4, 3, 0, 1, 2).contiguous()

    @staticmethod
    def merge(x: Tensor) -> Tensor:
        """(T, nc, Bt, G, X) -> (Bt, G, X, nc * T)."""
        steps, nc = x.shape[:2]
        return x.permute(2, 3, 4, 1, 0).reshape(*x.shape[2:], nc * steps)

    def states(self, A: Tensor, h0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decays and states of the segment.

        Args:
            A: (G, H, N).
            h0: (Bt, G, H, N) state before the segment's first step.

        Returns:
            ``(a, h, h_in, decay)``: decays ``a`` and states ``h``, both (T, nc, Bt, G, H, N);
            each chunk's incoming state ``h_in`` (nc + 1, Bt, G, H, N) (the last entry is the
            state after the segment); each chunk's total decay ``decay`` (nc, Bt, G, H, N).
        """
        shape = (*self.u.shape, A.shape[-1])
        a = torch.mul(self.delta.unsqueeze(-1), A, out=self.u.new_empty(shape)).exp_()
        h = torch.mul((self.delta * self.u).unsqueeze(-1), self.B.unsqueeze(-2),
                      out=self.u.new_empty(shape))
        # Every chunk at once: its end state from a zero start, and its total decay.
        end, decay = h[0].clone(), a[0].clone()
        for t in range(1, a.shape[0]):
            torch.addcmul(h[t], a[t], end, out=end)
            decay.mul_(a[t])
        # Carry the state across chunks, one chunk after the other.
        h_in = h.new_empty(self.nc + 1, *h0.shape)
        h_in[0] = h0
        for c in range(self.nc):
            torch.addcmul(end[c], decay[c], h_in[c], out=h_in[c + 1])
        # The recurrence itself, in every chunk from its incoming state.
        h[0].addcmul_(a[0], h_in[:-1])
        for t in range(1, a.shape[0]):
            h[t].addcmul_(a[t], h[t - 1])
        return a, h, h_in, decay


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
        if padded != length:  # delta = 0 pads are identity steps: a = 1, b = 0
            pad = (0, padded - length)
            u, delta = torch.nn.functional.pad(u, pad), torch.nn.functional.pad(delta, pad)
            Bm, Cm = torch.nn.functional.pad(Bm, pad), torch.nn.functional.pad(Cm, pad)
        u4 = u.reshape(bt, groups, heads, padded)
        delta4 = delta.reshape(bt, groups, heads, padded)
        A3 = A.reshape(groups, heads, dstate)
        y = u.new_empty(bt, groups, heads, padded)
        h0 = u.new_zeros(bt, groups, heads, dstate)
        starts = []
        for start in range(0, padded, segment):
            stop = min(start + segment, padded)
            seg = _Segment(u4, delta4, Bm, Cm, start, stop, chunk)
            starts.append(h0)
            _, h, h_in, _ = seg.states(A3, h0)
            y[..., start:stop] = seg.merge(torch.matmul(h, seg.C.unsqueeze(-1)).squeeze(-1))
            h0 = h_in[-1]
        ctx.save_for_backward(u4, delta4, A3, Bm, Cm, torch.stack(starts))
        ctx.sizes = (length, chunk, segment)
        return y.view(bt, dim, padded)[..., :length], h0.reshape(bt, dim, dstate)

    @staticmethod
    def backward(ctx, dy, dlast):
        u4, delta4, A3, Bm, Cm, starts = ctx.saved_tensors
        length, chunk, segment = ctx.sizes
        bt, groups, heads, padded = u4.shape
        dstate = Bm.shape[2]
        dy4 = torch.zeros_like(u4)
        dy4[..., :length] = dy.reshape(bt, groups, heads, length)
        carry = dlast.reshape(bt, groups, heads, dstate).to(u4.dtype)  # dL/dh at the segment end
        du, ddelta = torch.empty_like(u4), torch.empty_like(delta4)
        dB, dC = torch.empty_like(Bm), torch.empty_like(Cm)
        dA = torch.zeros_like(A3)
        seg_starts = list(range(0, padded, segment))
        for index in reversed(range(len(seg_starts))):
            start = seg_starts[index]
            stop = min(start + segment, padded)
            seg = _Segment(u4, delta4, Bm, Cm, start, stop, chunk)
            a, h, h_in, decay = seg.states(A3, starts[index])
            dy_seg = seg.split(dy4, start, stop, chunk)
            # g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}, in reverse with the same two levels.
            g = torch.mul(dy_seg.unsqueeze(-1), seg.C.unsqueeze(-2), out=torch.empty_like(h))
            begin = g[-1].clone()  # each chunk's g at its first step, from a zero end
            for t in range(a.shape[0] - 2, -1, -1):
                torch.addcmul(g[t], a[t + 1], begin, out=begin)
            g_in = torch.empty_like(h_in)  # dL/dh at each chunk's last step, from later chunks
            g_in[-1] = carry
            begin.mul_(a[0])
            for c in range(seg.nc - 1, -1, -1):
                torch.addcmul(begin[c], decay[c], g_in[c + 1], out=g_in[c])
            carry = g_in[0]
            g[-1].add_(g_in[1:])
            for t in range(a.shape[0] - 2, -1, -1):
                g[t].addcmul_(a[t + 1], g[t + 1])
            # q_t = g_t * a_t * h_{t-1} = dL/d(delta_t A)
            q = torch.empty_like(h)
            torch.mul(a[1:], h[:-1], out=q[1:])
            torch.mul(a[0], h_in[:-1], out=q[0])
            q.mul_(g)
            g_dot_B = torch.matmul(g, seg.B.unsqueeze(-1)).squeeze(-1)  # (T, nc, Bt, G, H)
            ddelta[..., start:stop] = seg.merge((q * A3).sum(-1) + g_dot_B * seg.u)
            du[..., start:stop] = seg.merge(g_dot_B * seg.delta)
            dA += q.mul_(seg.delta.unsqueeze(-1)).flatten(0, 2).sum(0)
            delta_u = (seg.delta * seg.u).unsqueeze(-2)  # (T, nc, Bt, G, 1, H)
            dB[..., start:stop] = seg.merge(torch.matmul(delta_u, g).squeeze(-2))
            dC[..., start:stop] = seg.merge(torch.matmul(dy_seg.unsqueeze(-2), h).squeeze(-2))
        dim = groups * heads
        return (du.view(bt, dim, padded)[..., :length], ddelta.view(bt, dim, padded)[..., :length],
                dA.view(dim, dstate), dB[..., :length], dC[..., :length], None, None)


def chunked_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                 chunk: int | None = None, segment: int | None = None) -> tuple[Tensor, Tensor]:
    """Run the chunked scan (see :class:`ChunkedScan` for shapes); sizes default to :func:`plan`."""
    auto_chunk, auto_segment = plan(*u.shape[:2], Bm.shape[2], u.shape[2])
    chunk = auto_chunk if chunk is None else chunk
    segment = auto_segment if segment is None else max(chunk, segment // chunk * chunk)
    return ChunkedScan.apply(u, delta, A, Bm, Cm, chunk, segment)
