"""Timing and peak memory on the CPU or a CUDA GPU, for the benchmark scripts.

On a GPU, kernels run asynchronously: a wall-clock interval means something only between two
synchronisations, and the peak that matters is the GPU's allocator peak, not the process's RSS.
"""

from __future__ import annotations

import argparse
import resource

import torch


def device_arg(text: str) -> str:
    """``--device`` values: ``cpu``, ``cuda`` or ``cuda:N``; a GPU only where one is present."""
    if text != "cpu" and not text.startswith("cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu or cuda[:N]")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"--device {text}: no CUDA GPU is visible here; "
                                         "use --device cpu")
    return text


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: str | torch.device) -> None:
    """Start a new GPU memory peak (the CPU's RSS peak cannot be reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: str | torch.device) -> float:
    """Peak GPU memory allocated since :func:`reset_peak`, or this process's peak RSS on the
    CPU, in GB."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def describe(device: str | torch.device) -> str:
    """``"NVIDIA H200"`` for a GPU, ``"cpu"`` otherwise."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
