"""Measure what a step costs: wall time and peak memory (GPU if present, else process RSS)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Cost:
    """Wall time and memory of a measured block: ``peak_gpu_gb`` (``None`` on a CPU), and the
    process's high-water resident memory so far, Python and the libraries included."""

    seconds: float = 0.0
    peak_gpu_gb: float | None = None
    peak_rss_gb: float = 0.0

    def __str__(self) -> str:
        if self.peak_gpu_gb is None:
            return f"{self.seconds:.1f} s, peak RSS {self.peak_rss_gb:.2f} GB (CPU)"
        return f"{self.seconds:.1f} s, peak GPU {self.peak_gpu_gb:.2f} GB"


@contextmanager
def track_cost() -> Iterator[Cost]:
    """``with track_cost() as cost: ...`` fills ``cost`` when the block ends."""
    import torch

    cost = Cost()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize()
            cost.peak_gpu_gb = torch.cuda.max_memory_allocated() / 2**30
        cost.seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
        cost.peak_rss_gb = rss / (2**30 if sys.platform == "darwin" else 2**20)
