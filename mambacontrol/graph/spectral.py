"""Spectral operations on node signals: multi-scale graph filters and graph-Fourier refinement.

Both act in the eigenbasis ``U`` of the anatomy graph's normalised Laplacian (eigenvalues ``λ`` in
[0, 2]). The graph Fourier transform of node features ``x`` (R, F) is ``x̂ = Uᵀ x``; a filter
with frequency response ``h(λ)`` gives ``U diag(h(λ)) Uᵀ x``.

Neither module owns the eigenbasis: the caller (the graph encoder) keeps it as one buffer and
passes it in, so it is stored once per saved model.
"""

from __future__ import annotations

import torch
from torch import nn

FILTER_KINDS = ("wavelet", "heat")


def heat_responses(eigenvalues: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Low-pass heat-kernel responses ``exp(−s λ)``.

    Args:
        eigenvalues: (K,) graph frequencies.
        scales: S diffusion times (larger: smoother).

    Returns:
        (S, K).
    """
    s = torch.as_tensor(scales, dtype=eigenvalues.dtype, device=eigenvalues.device)
    return torch.exp(-s[:, None] * eigenvalues[None, :])


def wavelet_responses(eigenvalues: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """A low-pass scaling function and band-pass wavelets (spectral graph wavelets).

    The band-pass kernel ``g(sλ) = sλ · exp(1 − sλ)`` peaks at 1 where ``λ = 1/s``, so each scale
    selects one frequency band; the scaling function ``exp(−(s_max λ)²)`` keeps what lies below
    the lowest band (the DC component included).

    Args:
        eigenvalues: (K,) graph frequencies.
        scales: S wavelet scales.

    Returns:
        (S + 1, K): the scaling function, then one row per scale.
    """
    s = torch.as_tensor(scales, dtype=eigenvalues.dtype, device=eigenvalues.device)
    sl = s[:, None] * eigenvalues[None, :]
    low = torch.exp(-(s.max() * eigenvalues) ** 2)
    return torch.cat([low[None], sl * torch.exp(1.0 - sl)], dim=0)


class SpectralFilterBank(nn.Module):
    """Multi-scale node features: each feature filtered by a bank of graph filters.

    Args:
        scales: filter scales (positive).
        kind: ``wavelet`` (a low-pass plus S band-pass filters) or ``heat`` (S low-pass filters).

    Shapes:
        ``forward(x (B, R, F), eigenvalues (K,), eigenvectors (R, K)) -> (B, R, F · n_filters)``,
        filter-major: the first F columns are the first filter's output.
    """

    def __init__(self, scales: list[float], kind: str = "wavelet"):
        super().__init__()
        if not scales or any(float(s) <= 0 for s in scales):
            raise ValueError(f"scales {scales} must be a non-empty list of positive numbers")
        if kind not in FILTER_KINDS:
            raise ValueError(f"kind '{kind}' is not one of {', '.join(FILTER_KINDS)}")
        self.scales = [float(s) for s in scales]
        self.kind = kind

    @property
    def num_filters(self) -> int:
        return len(self.scales) + (1 if self.kind == "wavelet" else 0)

    def responses(self, eigenvalues: torch.Tensor) -> torch.Tensor:
        """(n_filters, K) frequency responses."""
        fn = wavelet_responses if self.kind == "wavelet" else heat_responses
        return fn(eigenvalues, self.scales)

    def forward(self, x: torch.Tensor, eigenvalues: torch.Tensor,
                eigenvectors: torch.Tensor) -> torch.Tensor:
        coeffs = eigenvectors.T @ x  # (B, K, F)
        h = self.responses(eigenvalues).to(x.dtype)  # (S, K)
        filtered = eigenvectors @ (h[None, :, :, None] * coeffs[:, None])  # (B, S, R, F)
        b, s, r, f = filtered.shape
        return filtered.permute(0, 2, 1, 3).reshape(b, r, s * f)


class GraphFourierRefine(nn.Module):
    """Learned filter in the graph-frequency domain: GFT → per-frequency, per-channel gain → inverse
    GFT.

    ``y = x + U_K (g ⊙ U_Kᵀ x)`` with ``U_K`` the lowest ``modes`` eigenvectors and ``g`` (K, C)
    initialised to zero, so the block is the identity at initialisation. This is the graph
    counterpart of an FFT/IFFT refinement block.

    Args:
        channels: C, the feature width.
        modes: K, how many of the lowest graph frequencies get a learned gain.

    Shapes:
        ``forward(x (B, R, C), eigenvectors (R, ≥K)) -> (B, R, C)``.
    """

    def __init__(self, channels: int, modes: int):
        super().__init__()
        if channels < 1 or modes < 1:
            raise ValueError(f"channels {channels} and modes {modes} must be positive")
        self.modes = modes
        self.gain = nn.Parameter(torch.zeros(modes, channels))

    def forward(self, x: torch.Tensor, eigenvectors: torch.Tensor) -> torch.Tensor:
        u = eigenvectors[:, : self.modes].to(x.dtype)
        return x + u @ (self.gain * (u.T @ x))
