"""Metrics to TensorBoard and to `metrics.jsonl`, written by process 0 only."""

from __future__ import annotations

import json
from pathlib import Path

import jax


class MetricsLog:
    """Appends `{"step", "split", ...metrics}` records; also keeps them in memory."""

    def __init__(self, workdir: Path):
        self.path = workdir / "metrics.jsonl"
        self.writer = None
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(f"{split}/{name}", value, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a `metrics.jsonl` file, oldest first."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
