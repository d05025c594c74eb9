"""Where a traced program's time goes: the XLA operations of a JAX profiler trace, by total time.

    rows = top_operations("runs/x/profile", steps=3)   # [{"op", "ms_per_step", "share", "count"}]

On GPUs and TPUs every device plane has a line of XLA operations ("XLA Ops"), one event per
operation run. A CPU-only trace has them on the XLA runtime's threads, among its bookkeeping
(thunk executors, thread-pool waits), which is left out: only events named like an HLO
instruction (`fusion.12`, `dot`, `custom-call.3`) off the Python thread count. On the CPU
several threads run operations at once, so their times can add up to more than the step.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from pathlib import Path

from jaxlm.errors import JaxlmError

DEVICE_OPS_LINE = "XLA Ops"
HLO_NAME = re.compile(r"^[a-z][a-z0-9_\-]*(\.\d+)?$")
PYTHON_LINE = "python"  # the host's Python thread: annotations and dispatch, not operations


def trace_file(folder: str | Path) -> Path:
    """The newest trace that `jax.profiler.trace(folder)` wrote on this host
    (`plugins/profile/<time>/<host>.xplane.pb`; the newest of any host when none is this
    one's: hosts of a multi-host run write into one folder)."""
    traces = sorted(Path(folder).glob("plugins/profile/*/*.xplane.pb"))
    if not traces:
        raise JaxlmError(f"{folder} holds no JAX profiler trace (plugins/profile/*/*.xplane.pb)")
    mine = [path for path in traces if path.name == f"{socket.gethostname()}.xplane.pb"]
    return (mine or traces)[-1]


def operation_seconds(path: str | Path) -> tuple[Counter, Counter]:
    """(seconds, runs) of every XLA operation in a trace file, summed over devices (or the CPU
    runtime's threads when no device plane has operations)."""
    from jax.profiler import ProfileData

    planes = list(ProfileData.from_file(str(path)).planes)
    device_lines = [
        line
        for plane in planes
        if plane.name.startswith("/device:")
        for line in plane.lines
        if line.name == DEVICE_OPS_LINE
    ]
    seconds, runs = Counter(), Counter()
    for line in device_lines:
        for event in line.events:
            seconds[event.name] += event.duration_ns / 1e9
            runs[event.name] += 1
    if device_lines:
        return seconds, runs
    for plane in planes:
        for line in plane.lines:
            if line.name == PYTHON_LINE:
                continue
            for event in line.events:
                if HLO_NAME.match(event.name):
                    seconds[event.name] += event.duration_ns / 1e9
                    runs[event.name] += 1
    return seconds, runs


def top_operations(folder: str | Path, steps: int, count: int = 15) -> list[dict]:
    """The `count` operations of the newest trace in `folder` that took the most time: their
    milliseconds per step (of the `steps` traced), share of all operations' time, and runs."""
    seconds, runs = operation_seconds(trace_file(folder))
    total = sum(seconds.values())
    return [
        {
            "op": name,
            "ms_per_step": 1e3 * spent / steps,
            "share": spent / total,
            "count": runs[name] // steps,
        }
        for name, spent in seconds.most_common(count)
    ]


def operation_line(op: dict) -> str:
    """One row of `top_operations` as a line of text."""
    return f"{op['ms_per_step']:>9.2f} ms/step {100 * op['share']:>5.1f}%  {op['op']}"
