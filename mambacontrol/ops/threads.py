"""Temporarily change torch's intra-op thread count, restoring it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the enclosed torch ops on ``threads`` intra-op threads (``None``: leave as is).

    Small-op workloads (the selective scan, the graph network) gain nothing from more threads,
    and on a busy machine each op waits for its threads to be scheduled; elementwise maths is
    also rounded differently per thread split, so one thread makes results reproducible.
    """
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
