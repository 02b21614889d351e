"""Timers: interleaved rounds on the CPU (load from other processes hits every provider alike),
CUDA events on the GPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["CLOCKS", "time_round_robin", "time_cuda"]


#: the clocks a CPU table can be timed by: wall time, or this thread's CPU time (with one thread,
#: the work of the call itself; other processes' load on a shared machine does not count)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_round_robin(
    calls: dict[str, Callable[[], object]], min_time: float = 1.0, max_reps: int = 30, clock: str = "wall"
) -> dict:
    """Seconds per call for each entry: two warm-up calls each (compilation happens there), then
    repetitions taken in turn (one sample of each per round), so that load from other processes on
    a shared machine hits every provider alike.  A sample of a fast call (a decode step: ~0.1 ms)
    times a batch of calls (about 1 ms in all), so that the timer's resolution and one scheduler
    tick do not decide it.  ``clock``: a key of ``CLOCKS``.  Returns name -> (min, median) seconds
    per call."""
    now = CLOCKS[clock]
    inner = {}
    for name, fn in calls.items():
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, min(1000, int(1e-3 / max(time.perf_counter() - t0, 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    while min(map(len, times.values())) < 3 or (
        time.perf_counter() - start < min_time and len(times["clone"]) < max_reps
    ):
        for name, fn in calls.items():
            n = inner[name]
            t0 = now()
            for _ in range(n):
                fn()
            times[name].append((now() - t0) / n)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def time_cuda(fn: Callable[[], object], reps: int = 50) -> float:
    """Median seconds per call, by CUDA events, after warm-up (Triton compiles there)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)
