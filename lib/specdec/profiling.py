"""Timers and memory per phase (chapter 5).

On a GPU, work is queued asynchronously: a wall-clock timer around a kernel launch
measures the launch, not the work. :class:`PhaseTimer` therefore brackets each phase
with CUDA events and waits for the *end event only* (``event.synchronize()``), not for
the whole device. On a CPU it uses :func:`time.perf_counter`. Once a phase's end event
has completed, the host clock is in step with the device, so wall-clock readings taken
between phases (time to first token, per-round latency) are honest too.

Peak memory per phase is ``torch.cuda.max_memory_allocated`` on a GPU (reset at the
start of each phase) and the process's resident set size at the end of the phase on a CPU.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import psutil
import torch

__all__ = ["PhaseTimer", "memory_bytes"]


def memory_bytes(device: torch.device | str = "cpu") -> int:
    """Current memory in use: allocated CUDA memory, or the process's resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


class PhaseTimer:
    """Accumulates seconds and peak memory per named phase.

    >>> timer = PhaseTimer("cpu")
    >>> with timer.phase("draft"):
    ...     pass
    >>> sorted(timer.seconds)
    ['draft']
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_bytes: dict[str, int] = defaultdict(int)

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()  # wait for this phase's work, not for the whole device
            self.seconds[name] += start.elapsed_time(end) / 1e3
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            t0 = time.perf_counter()
            yield
            self.seconds[name] += time.perf_counter() - t0
            peak = memory_bytes(self.device)
        self.peak_bytes[name] = max(self.peak_bytes[name], peak)
