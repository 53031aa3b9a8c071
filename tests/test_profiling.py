"""Timers and memory per phase (specdec.profiling).

CPU tests never compare a measured time with a threshold: a fake clock checks the
arithmetic exactly, and the real clock is only required to give positive, finite times
that add up. The one CUDA test checks that event timing measures a kernel's work rather
than its launch.
"""

import math
import time
import types

import pytest
import torch

from specdec import profiling
from specdec.profiling import (
    PhaseTimer,
    TimingSummary,
    memory_bytes,
    paired_ratios,
    summarize,
    time_call,
    time_interleaved,
    time_repeated,
)


class FakeClock:
    """A perf_counter that only moves when told to."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(profiling, "time", types.SimpleNamespace(perf_counter=fake))
    return fake


def test_repeated_phases_accumulate(clock):
    timer = PhaseTimer("cpu")
    for seconds in (1.5, 0.25, 2.0):
        with timer.phase("verify"):
            clock.advance(seconds)
    with timer.phase("draft"):
        clock.advance(0.5)
    assert timer.seconds["verify"] == pytest.approx(3.75)
    assert timer.seconds["draft"] == pytest.approx(0.5)
    assert sorted(timer.seconds) == ["draft", "verify"]


def test_nested_phases_each_count_their_own_interval(clock):
    timer = PhaseTimer("cpu")
    with timer.phase("outer"):
        clock.advance(1.0)
        with timer.phase("inner"):
            clock.advance(2.0)
        clock.advance(1.0)
    assert timer.seconds["inner"] == pytest.approx(2.0)
    assert timer.seconds["outer"] == pytest.approx(4.0)


def test_real_clock_times_are_positive_finite_and_add_up():
    timer = PhaseTimer("cpu")
    x = torch.randn(128, 128)
    t0 = time.perf_counter()
    with timer.phase("outer"):
        for _ in range(3):
            with timer.phase("matmul"):
                x = torch.tanh(x @ x)
    wall = time.perf_counter() - t0
    for name in ("outer", "matmul"):
        assert math.isfinite(timer.seconds[name]) and timer.seconds[name] > 0
    assert timer.seconds["matmul"] <= timer.seconds["outer"] <= wall


def test_memory_is_probed_only_on_request(monkeypatch):
    calls = []
    monkeypatch.setattr(profiling, "memory_bytes", lambda device: calls.append(device) or 7)
    quiet, probed = PhaseTimer("cpu"), PhaseTimer("cpu", memory=True)
    for timer in (quiet, probed):
        with timer.phase("verify"):
            pass
    assert dict(quiet.peak_bytes) == {} and probed.peak_bytes["verify"] == 7
    assert len(calls) == 1


def test_peak_bytes_keep_the_largest_reading(monkeypatch):
    readings = iter([300, 100, 200])
    monkeypatch.setattr(profiling, "memory_bytes", lambda device: next(readings))
    timer = PhaseTimer("cpu", memory=True)
    for _ in range(3):
        with timer.phase("verify"):
            pass
    assert timer.peak_bytes["verify"] == 300


def test_time_call_returns_seconds_and_output(clock):
    def work():
        clock.advance(0.125)
        return "done"

    seconds, out = time_call(work)
    assert seconds == pytest.approx(0.125)
    assert out == "done"


def test_time_repeated_drops_warmup_calls(clock):
    durations = iter([5.0, 4.0, 1.0, 2.0, 3.0])  # the first two are warm-up calls
    calls = []

    def work():
        calls.append(1)
        clock.advance(next(durations))

    assert time_repeated(work, repeats=3, warmup=2) == pytest.approx([1.0, 2.0, 3.0])
    assert len(calls) == 5


def test_time_repeated_real_clock_positive_and_finite():
    times = time_repeated(lambda: torch.randn(64, 64) @ torch.randn(64, 64), repeats=4, warmup=1)
    assert len(times) == 4
    assert all(math.isfinite(t) and t > 0 for t in times)


def test_time_interleaved_rotates_the_order_and_keeps_each_method_apart(clock):
    order = []

    def method(name, seconds):
        def fn():
            order.append(name)
            clock.advance(seconds)
        return fn

    fns = {"a": method("a", 1.0), "b": method("b", 2.0), "c": method("c", 4.0)}
    out = time_interleaved(fns, repeats=3, warmup=1)
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    kept = rounds[1:]  # after the warm-up round every method sits in every slot once
    for slot in range(3):
        assert sorted(r[slot] for r in kept) == ["a", "b", "c"]


def test_progress_bars_do_not_change_the_results(clock):
    def work():
        clock.advance(0.5)

    assert time_repeated(work, repeats=2, warmup=1, progress=True) == [0.5, 0.5]
    assert time_interleaved({"a": work}, repeats=2, warmup=0, progress=True) == {"a": [0.5, 0.5]}


def test_summarize_median_quartiles_and_range():
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.n, s.median, s.q1, s.q3, s.min, s.max) == (5, 3.0, 2.0, 4.0, 1.0, 5.0)
    assert s.iqr == 2.0
    assert s.relative_iqr == pytest.approx(2 / 3)
    assert s.format() == "3 s (IQR 2-4, n=5)"
    assert s.format(unit="ms", scale=1e3) == "3000 ms (IQR 2000-4000, n=5)"
    assert summarize([0.0123456]).format(unit="ms", scale=1e3, digits=2) == "12 ms (IQR 12-12, n=1)"
    assert isinstance(s, TimingSummary)


def test_paired_ratios():
    assert paired_ratios([2.0, 3.0], [1.0, 4.0]) == [2.0, 0.75]


@pytest.mark.parametrize(
    "call",
    [
        lambda: summarize([]),
        lambda: summarize([1.0, float("nan")]),
        lambda: summarize([1.0, -0.5]),
        lambda: paired_ratios([1.0], [1.0, 2.0]),
        lambda: paired_ratios([1.0], [0.0]),
        lambda: time_repeated(lambda: None, repeats=0),
        lambda: time_repeated(lambda: None, repeats=2, warmup=-1),
        lambda: time_repeated(lambda: None, repeats=True),
        lambda: time_call("not a function"),
        lambda: time_interleaved({}, repeats=2),
        lambda: time_interleaved({"a": 3}, repeats=2),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_events_measure_the_kernel_not_its_launch():
    device = torch.device("cuda")
    torch.cuda._sleep(1_000)  # context creation and module loading happen here, not below
    torch.cuda.synchronize()
    # Calibrate: how many spin cycles make a millisecond on this GPU.
    per_ms, _ = time_call(lambda: torch.cuda._sleep(10_000_000), device)
    cycles = int(10_000_000 * 0.05 / per_ms)  # a kernel of about 50 ms

    t0 = time.perf_counter()
    torch.cuda._sleep(cycles)
    launch = time.perf_counter() - t0  # the host returns as soon as the kernel is queued
    torch.cuda.synchronize()

    timer = PhaseTimer(device, memory=True)
    t0 = time.perf_counter()
    with timer.phase("sleep"):
        torch.cuda._sleep(cycles)
    with timer.phase("sleep_twice"):
        torch.cuda._sleep(2 * cycles)
    queued = time.perf_counter() - t0  # the phases wait for nothing: only launches so far

    measured = timer.seconds["sleep"]  # reading the seconds waits for the events, once
    assert launch < 0.2 * measured, "the wall clock around a launch should see only the launch"
    assert queued < 0.5 * measured, "timing a phase must not wait for the device"
    assert 1.5 < timer.seconds["sleep_twice"] / measured < 2.5, "twice the cycles, about twice the time"
    seconds, _ = time_call(lambda: torch.cuda._sleep(cycles), device)
    assert 0.5 < seconds / measured < 2.0

    with timer.phase("alloc"):
        block = torch.empty(64 << 20, dtype=torch.uint8, device=device)
    assert timer.peak_bytes["alloc"] >= block.numel()
