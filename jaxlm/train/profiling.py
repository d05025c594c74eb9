"""Tracing training steps with the JAX profiler (`train.profile_steps`).

The trace covers `train.profile_steps` consecutive steps, starting `train.profile_start` steps
into the run (past the compiling first step), and goes to `<workdir>/profile/`: open it with
TensorBoard's profile plugin (`tensorboard --logdir <workdir>/profile`) or Perfetto. Every step
is marked with a `StepTraceAnnotation`, so the profile's step-time view splits the trace by step.
Each process of a multi-process run writes its own host's trace into the same folder; the log
lists the costliest XLA operations of the traced steps (`jaxlm.bench.trace_summary`).
"""

from __future__ import annotations

from pathlib import Path

import jax

from jaxlm.bench.trace_summary import operation_line, top_operations
from jaxlm.train.monitoring import log

PROFILE_DIR = "profile"
SHOWN_OPERATIONS = 5  # the costliest operations of the traced steps, logged


class StepProfiler:
    """Starts the trace before step `first` and stops it once step `first + steps - 1` has run
    on the devices (or when closed early); does nothing when `steps` is 0."""

    def __init__(self, directory: Path, first: int, steps: int):
        self.directory, self.first, self.last = directory, first, first + steps - 1
        self.tracing = False

    def before(self, step: int) -> None:
        if step == self.first and self.last >= self.first:
            jax.profiler.start_trace(str(self.directory))
            self.tracing = True

    def after(self, step: int, outputs) -> None:
        """`outputs`: the step's results, waited for so that the trace holds all its work.
        Process 0 then logs the costliest operations of the traced steps."""
        if self.tracing and step == self.last:
            jax.block_until_ready(outputs)
            self.close()
            log(f"step {step:>6} | profiled steps {self.first}-{step} into {self.directory}")
            if jax.process_index() == 0:
                steps = step - self.first + 1
                for op in top_operations(self.directory, steps, count=SHOWN_OPERATIONS):
                    log(f"  {operation_line(op)}")

    def close(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
