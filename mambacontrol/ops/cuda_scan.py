"""mamba-ssm's CUDA selective-scan kernel, imported lazily.

Nothing here imports mamba-ssm (or triton, which it pulls in) until a scan actually runs on a GPU,
so ``import mambacontrol`` works on machines without them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

#: Input dtypes the kernel accepts (weights stay float32).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def load_kernel() -> Callable | None:
    """mamba-ssm's ``selective_scan_fn``, or None when mamba-ssm or its CUDA extension is
    missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    # a missing package, or an extension built for another torch
    except (ImportError, OSError) as exc:
        logger.debug("mamba-ssm's selective scan is unavailable: %s", exc)
        return None
    return selective_scan_fn


def kernel_usable(u: torch.Tensor) -> bool:
    """True when the kernel can run on ``u``: on a CUDA device, a supported dtype, mamba-ssm
    importable."""
    return u.is_cuda and u.dtype in KERNEL_DTYPES and load_kernel() is not None
