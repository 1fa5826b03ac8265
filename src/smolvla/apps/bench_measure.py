"""Measuring helpers shared by the benchmarks' child processes; no torch, so that a child running an
exported policy (bench_exported) holds only what that runtime needs."""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    """Restarts the kernel's peak-RSS counter (VmHWM), so that later peaks belong to what follows."""
    gc.collect()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peaks() -> dict[str, float]:
    return {
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_rss_runs_gb": round(status_kb("VmHWM") / 2**20, 3),
    }


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def timed_runs(run: Callable[[], Any], runs: int) -> tuple[list[Any], list[float], dict[str, float]]:
    """One warm-up call of `run`, then `runs` timed ones: their results, the CPU seconds of each, and
    the peak RSS figures with the counter restarted after the warm-up."""
    run()
    reset_peak_rss()
    results, cpu = [], []
    for _ in range(runs):
        c0 = time.process_time()
        results.append(run())
        cpu.append(time.process_time() - c0)
    return results, cpu, peaks()
