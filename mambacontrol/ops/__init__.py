"""Selective scan (the core of Mamba) with a CUDA, a chunked pure-PyTorch and a sequential
backend."""

from mambacontrol.ops.selective_scan import BACKENDS, resolve_backend, selective_scan

__all__ = ["BACKENDS", "resolve_backend", "selective_scan"]
