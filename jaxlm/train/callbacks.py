"""Hooks into the training loop: subclass `Callback` and override what you need.

    class PrintLoss(Callback):
        def on_log(self, trainer, step, metrics):
            print(step, metrics["loss"])

    Trainer(cfg, callbacks=[PrintLoss(), EarlyStopping("eval_loss", patience=2)]).fit()

Hooks run on the host between compiled steps. `on_step_end` sees the step's metrics as device
arrays: reading one (`float(metrics["loss"])`) waits for the device, so do it sparingly; the
logged steps' metrics arrive as floats in `on_log`. `trainer.stop()` ends training after the
current step (with a final checkpoint).
"""

from __future__ import annotations

import math


class Callback:
    """No-op hooks, called in this order: start, (step end, log, eval end)*, end."""

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        pass

    def on_log(self, trainer, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_eval_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer, metrics: dict[str, float]) -> None:
        pass


class EarlyStopping(Callback):
    """Stops when `monitor` (an eval metric such as `eval_loss`) has not improved by more than
    `min_delta` for `patience` evaluations in a row. `mode` is `min` or `max`."""

    def __init__(
        self,
        monitor: str = "eval_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        mode: str = "min",
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = 1.0 if mode == "min" else -1.0
        self.best, self.bad_evaluations = math.inf, 0
        self.stopped_at: int | None = None

    def on_eval_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, not in {sorted(metrics)}")
        value = self.sign * metrics[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            self.stopped_at = step
            trainer.stop(f"{self.monitor} did not improve for {self.patience} evaluations")
