"""Measuring helpers shared by the benchmarks' child processes; no torch, so that a child running an
exported policy (bench_exported) holds only what that runtime needs."""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
from pathlib import Path


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
