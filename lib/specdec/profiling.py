"""Timers and memory per phase (chapter 5).

On a GPU, work is queued asynchronously: a wall-clock timer around a kernel launch
measures the launch, not the work. :class:`PhaseTimer` therefore brackets each phase
with CUDA events, which the device stamps when it reaches them; it reads them once, when
the seconds are asked for, so the loop it times is not slowed by waiting. On a CPU it uses
:func:`time.perf_counter`. Wall-clock readings taken where the loop itself waits for the
device (it must, once a round, to learn how many tokens were accepted) are honest too.

On request (``memory=True``), peak memory per phase is ``torch.cuda.max_memory_allocated``
on a GPU (reset at the start of each phase) and the process's resident set size at the end
of the phase on a CPU.

For repeated measurements, :func:`time_call` times one call the same way (CUDA events, or
:func:`time.perf_counter`), :func:`time_repeated` repeats it after warm-up calls that are
not recorded, :func:`time_interleaved` alternates several methods so that slow drift of
the machine (clock boost, thermal state, other processes) hits each of them alike, and
:func:`summarize` reduces a list of timings to a median with its spread.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from .checks import require_int

__all__ = [
    "PhaseTimer",
    "memory_bytes",
    "time_call",
    "time_repeated",
    "time_interleaved",
    "TimingSummary",
    "summarize",
    "paired_ratios",
    "torch_threads",
]


@contextmanager
def torch_threads(n: int | None):
    """torch's CPU thread count set to ``n`` inside the block (unchanged when ``n`` is None),
    restored after it. Tiny models run on one thread: their matrices are too small to gain from
    more, a busy machine makes extra threads wait on each other, and one thread makes the sums
    bit-reproducible."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def memory_bytes(device: torch.device | str = "cpu") -> int:
    """Current memory in use: allocated CUDA memory, or the process's resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


class PhaseTimer:
    """Accumulates seconds (and, on request, peak memory) per named phase.

    On a GPU each phase is bracketed by a pair of CUDA events; nothing waits for them
    until :attr:`seconds` is read, so timing adds no synchronisation to the loop it
    measures (read it once, at the end). ``memory=True`` also records the peak memory
    of each phase, which costs a probe per phase.

    >>> timer = PhaseTimer("cpu")
    >>> with timer.phase("draft"):
    ...     pass
    >>> sorted(timer.seconds)
    ['draft']
    """

    def __init__(self, device: torch.device | str = "cpu", memory: bool = False):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.memory = memory
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, Any, Any]] = []  # CUDA (phase, start, end), not yet read
        self.peak_bytes: dict[str, int] = defaultdict(int)

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase; on a GPU this waits for the last recorded event, once."""
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                self._seconds[name] += start.elapsed_time(end) / 1e3
            self._events.clear()
        return self._seconds

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            if self.memory:
                torch.cuda.reset_peak_memory_stats(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            peak = torch.cuda.max_memory_allocated(self.device) if self.memory else None
        else:
            t0 = time.perf_counter()
            yield
            self._seconds[name] += time.perf_counter() - t0
            peak = memory_bytes(self.device) if self.memory else None
        if peak is not None:
            self.peak_bytes[name] = max(self.peak_bytes[name], peak)


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, Any]:
    """Seconds one call of ``fn()`` takes, and what it returned.

    On a GPU the call is bracketed by CUDA events on the current stream and the host waits
    for the end event, so the time covers the work ``fn`` queued, not only its launch. On a
    CPU it is the :func:`time.perf_counter` interval around the call.
    """
    if not callable(fn):
        raise ValueError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    device = torch.device(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def time_repeated(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[float]:
    """Seconds per call of ``fn()`` over ``repeats`` calls, after ``warmup`` calls that are not kept."""
    require_int("repeats", repeats, 1)
    require_int("warmup", warmup, 0)
    out = []
    for i in tqdm(range(warmup + repeats), desc="timing", leave=False, disable=not progress):
        seconds, _ = time_call(fn, device)
        if i >= warmup:
            out.append(seconds)
    return out


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "rounds",
) -> dict[str, list[float]]:
    """Time several methods in rounds, one call of each per round; returns seconds per method.

    Round ``r`` runs the methods in the order rotated by ``r`` (A B C, B C A, C A B, ...): in
    any ``len(fns)`` consecutive rounds each method runs once in each slot, so drift over the
    run and the effect of following another method fall on all of them alike. ``warmup``
    rounds come first and are not kept. Entry ``i`` of every list comes from the same kept
    round, so per-round ratios (:func:`paired_ratios`) compare calls made moments apart.
    """
    if not isinstance(fns, Mapping) or not fns:
        raise ValueError("fns must be a non-empty mapping {name: callable taking no arguments}")
    for name, fn in fns.items():
        if not callable(fn):
            raise ValueError(f"fns[{name!r}] is not callable")
    require_int("repeats", repeats, 1)
    require_int("warmup", warmup, 0)
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(warmup + repeats), desc=desc, leave=False, disable=not progress):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, _ = time_call(fns[name], device)
            if r >= warmup:
                out[name].append(seconds)
    return out


@dataclass(frozen=True)
class TimingSummary:
    """Median and spread of repeated timings (seconds, or any positive quantity)."""

    n: int
    median: float
    q1: float  # 25th percentile
    q3: float  # 75th percentile
    min: float
    max: float

    @property
    def iqr(self) -> float:
        """Interquartile range, ``q3 - q1``."""
        return self.q3 - self.q1

    @property
    def relative_iqr(self) -> float:
        """``iqr / median``: the spread as a fraction of the typical value."""
        return self.iqr / self.median if self.median else math.inf

    def format(self, unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
        """For example ``"0.105 s (IQR 0.101-0.112, n=5)"``; ``scale=1e3, unit="ms"`` for milliseconds.

        Values get ``digits`` significant digits, except that whole digits are never dropped
        (``2610 ms``, not ``2.61e+03 ms``).
        """

        def f(v: float) -> str:
            v *= scale
            return f"{v:.0f}" if abs(v) >= 10 ** (digits - 1) else f"{v:.{digits}g}"

        return f"{f(self.median)} {unit} (IQR {f(self.q1)}-{f(self.q3)}, n={self.n})"

    def __str__(self) -> str:
        return self.format()


def summarize(values: Sequence[float]) -> TimingSummary:
    """Median, quartiles and range of repeated measurements."""
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("summarize needs a non-empty flat sequence of numbers")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("timings must be finite and non-negative")
    q1, median, q3 = np.percentile(arr, [25, 50, 75])
    return TimingSummary(n=int(arr.size), median=float(median), q1=float(q1), q3=float(q3),
                         min=float(arr.min()), max=float(arr.max()))


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """``numerator[i] / denominator[i]`` for paired measurements (one pair per interleaved round)."""
    a, b = list(numerator), list(denominator)
    if len(a) != len(b) or not a:
        raise ValueError(f"need two non-empty sequences of equal length, got {len(a)} and {len(b)}")
    if any(not (math.isfinite(y) and y > 0) for y in b):
        raise ValueError("every denominator must be finite and positive")
    return [x / y for x, y in zip(a, b)]
