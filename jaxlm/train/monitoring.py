"""Watching a run from the host: process-0 console output, throughput, non-finite steps."""

from __future__ import annotations

import time

import jax
from tqdm.auto import tqdm

from jaxlm.errors import JaxlmError


def log(message: str) -> None:
    """Prints above the progress bar, on process 0 only."""
    if jax.process_index() == 0:
        tqdm.write(message)


class Throughput:
    """Tokens per second of training since the last restart (host-side wall clock)."""

    def __init__(self, tokens_per_step: int, step: int):
        self.tokens_per_step = tokens_per_step
        self.step, self.time = step, time.perf_counter()

    def restart(self, step: int) -> float:
        """Start measuring after `step`; returns the seconds since the previous restart."""
        now = time.perf_counter()
        elapsed, self.step, self.time = now - self.time, step, now
        return elapsed

    def rate(self, step: int) -> float:
        steps = step - self.step
        return steps * self.tokens_per_step / self.restart(step)


class TrainingDiverged(JaxlmError):
    """The loss or gradient norm became NaN or infinite (with `train.nan_policy=stop`)."""


class NonFiniteGuard:
    """Checks each step's `finite` flag one step late, so the host never waits on the device.

    `flush()` checks the pending step now: call it before anything is saved.
    """

    def __init__(self, policy: str):
        self.policy = policy
        self.pending: tuple[int, jax.Array] | None = None

    def push(self, step: int, finite: jax.Array) -> None:
        self.flush()
        self.pending = (step, finite)

    def flush(self) -> None:
        if self.pending is None:
            return
        (step, finite), self.pending = self.pending, None
        if bool(finite):
            return
        if self.policy == "stop":
            raise TrainingDiverged(
                f"non-finite loss or gradient norm at step {step}; stopped without "
                f"checkpointing it (train.nan_policy=skip would skip such steps)"
            )
        log(f"step {step:>6} | non-finite loss or gradient norm: update skipped")
