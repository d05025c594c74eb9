"""Keep freed host memory for reuse when training on the CPU (Linux with glibc).

XLA's CPU runtime allocates each step's temporary buffer (every activation the backward pass
needs: over 300 MB for the demo GPT) from a worker thread. glibc serves allocations that large
with a fresh memory mapping and unmaps it when the step ends, so the kernel faults in and zeroes
every page again at every step: about 15% of the demo step's CPU time. `keep_freed_memory()`
puts every thread on glibc's main heap, serves large allocations from it instead of mappings,
and never gives freed memory back to the system, so that the next step reuses the same pages.
The process then holds on to its peak memory until it exits. (A trim threshold, an int, keeps
at most 2 GiB: less than GPT-2 small's step allocates, whose pages were then faulted in again
at every step, about 1 GB of them.)
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt parameters (malloc.h)
NEVER = -1  # as M_TRIM_THRESHOLD: never trim the heap
HEAP_SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER))


def keep_freed_memory(one_arena: bool = True) -> bool:
    """Apply the settings; whether it could (only glibc has `mallopt`). Threads that have
    already allocated keep their own heaps: call this before JAX starts its thread pools.

    `one_arena=False` leaves glibc's per-thread arenas as they are, and keeps only the freed
    memory: the setting the PyTorch reference runs with (its threads slow down on one arena)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_ARENA_MAX, 1), *HEAP_SETTINGS) if one_arena else HEAP_SETTINGS
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def jax_will_use_cpu() -> bool:
    """JAX_PLATFORMS names the CPU first, or no TPU or GPU plugin for JAX is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if any(importlib.util.find_spec(name) for name in ("libtpu", "jax_plugins")):
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def keep_freed_memory_on_cpu() -> bool:
    """`keep_freed_memory()` for a process about to train on the CPU that has not started JAX
    yet (elsewhere it changes nothing); whether it applied the settings."""
    return "jax" not in sys.modules and jax_will_use_cpu() and keep_freed_memory()
