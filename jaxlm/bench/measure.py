"""Per-step measurements of a training loop in this process: wall and CPU time, minor page
faults, peak resident set."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path


def threads() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def reset_peak_rss() -> None:
    """Start a new peak-resident-set measurement (Linux; elsewhere the lifetime peak stays)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    """The process's peak resident set in bytes since the last reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of the process so far, all threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def measure_steps(step: Callable[[], float], count: int) -> dict:
    """Run `step` (which returns the loss once the step is complete) `count` times. Returns
    per step the loss ("losses"), wall and CPU seconds ("times", "cpu") and minor page faults
    ("faults"); and the process's peak resident set over them in bytes ("rss")."""
    reset_peak_rss()
    out = {"losses": [], "times": [], "cpu": [], "faults": []}
    for _ in range(count):
        (cpu, faults), begin = process_usage(), time.perf_counter()
        out["losses"].append(float(step()))
        out["times"].append(time.perf_counter() - begin)
        end_cpu, end_faults = process_usage()
        out["cpu"].append(end_cpu - cpu)
        out["faults"].append(end_faults - faults)
    out["rss"] = peak_rss()
    return out
