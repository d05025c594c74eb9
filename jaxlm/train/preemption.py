"""Stopping cleanly on SIGTERM / SIGINT: checkpoint the current step, then exit with code 75.

Preemptible VMs get SIGTERM shortly before they die. The trainer polls `Preemption.requested`
after every step; on every host it answers the same, so all hosts save the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
import numpy as np

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; `jaxlm train` resumes the run


class Preempted(Exception):
    """Training stopped on a signal after checkpointing `step`; rerun to resume."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after checkpointing step {step}")
        self.step, self.signal_name = step, signal_name


class Preemption:
    """Turns SIGTERM and SIGINT into a flag while active (a second signal acts as usual).

    with Preemption() as preemption:
        for step in ...:
            ...
            if preemption.requested(step): save, then raise Preempted
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # second one: as usual

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, step: int) -> bool:
        """Whether to stop after `step`; on several hosts, true on all if any got a signal.

        Every host must call this after every step (it is a collective when multi-host).
        """
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(local, dtype=np.int32))
        if np.any(flags) and self.signal_name is None:
            self.signal_name = "a signal on another host"
        return bool(np.any(flags))
