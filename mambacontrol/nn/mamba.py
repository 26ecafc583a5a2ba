"""The Mamba-1 mixer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", 2023), with mamba-ssm's parameter names and shapes so that weights interchange.

No causal-conv1d is needed: the depthwise causal convolution is a grouped ``nn.Conv1d`` padded by
``d_conv - 1`` and cut back to the sequence length, as in mamba-ssm's own fallback.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambacontrol.ops import selective_scan
from mambacontrol.ops.selective_scan import check_backend


class Mamba(nn.Module):
    """Selective state-space mixer: ``(B, L, d_model) -> (B, L, d_model)``.

    Parameters (mamba-ssm's ``Mamba`` names and shapes, ``E = expand * d_model``,
    ``R = dt_rank``, ``N = d_state``): ``in_proj`` (2E, d_model), ``conv1d`` (E, 1, d_conv) with a
    bias, ``x_proj`` (R + 2N, E), ``dt_proj`` (E, R) with a bias, ``A_log`` (E, N), ``D`` (E,),
    ``out_proj`` (d_model, E).

    Args:
        d_model: token width.
        d_state: state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: inner width E = expand * d_model.
        dt_rank: rank of the step-size projection; ``"auto"`` is ceil(d_model / 16).
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        dt_init: ``"random"`` (uniform) or ``"constant"`` initial ``dt_proj.weight``.
        dt_scale: scale of the initial ``dt_proj.weight``.
        dt_init_floor: smallest initial step size.
        conv_bias: bias in the convolution.
        bias: biases in ``in_proj`` and ``out_proj``.
        backend: selective-scan backend (:data:`mambacontrol.ops.BACKENDS`).
        device, dtype: where and in what dtype to create the parameters (``A_log`` and ``D``
            are always float32, as in mamba-ssm).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if not expand > 0 or int(expand * d_model) < 1:
            raise ValueError(
                f"expand={expand!r} must be positive (inner width expand * d_model >= 1)")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"dt_rank={dt_rank!r} must be 'auto' or a positive integer")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min!r}, dt_max={dt_max!r}: need 0 < dt_min <= dt_max")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init={dt_init!r} must be 'random' or 'constant'")
        self.backend = check_backend(backend)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        factory = {"device": device, "dtype": dtype}

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

        # dt_proj keeps the variance of its input; its bias makes softplus(bias) a step size
        # drawn log-uniformly from [dt_min, dt_max].
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            log_dt = torch.empty(self.d_inner, device=device).uniform_(math.log(dt_min),
                                                                       math.log(dt_max))
            dt = log_dt.exp().clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        # S4D-real initialisation: A[:, n] = -(n + 1); kept in float32.
        arange = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(arange).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        xz = self.in_proj(hidden).transpose(1, 2)
        return self.out_proj(self.mix(xz).transpose(1, 2))

    def mix(self, xz: Tensor) -> Tensor:
        """The part between the two projections: convolution, selective scan and gate.

        Args:
            xz: (B, 2E, L) the output of ``in_proj``, channels first.

        Returns:
            (B, E, L), the input of ``out_proj``, channels first.
        """
        x, z = xz.chunk(2, dim=1)
        length = x.shape[-1]
        # (B, L, E) tokens, the layout of the projections (and the fastest for the scan)
        x = F.silu(self.conv1d(x)[..., :length].transpose(1, 2).contiguous())
        x_dbl = self.x_proj(x)  # (B, L, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # its bias goes in as delta_bias
        A = -torch.exp(self.A_log.float())
        return selective_scan(x.mT, dt.mT, A, B.mT, C.mT, D=self.D.float(), z=z,
                              delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                              backend=self.backend)
