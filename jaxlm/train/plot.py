"""The loss curve as a PNG: training loss per logged step and evaluation loss."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def loss_curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{split: (steps, losses)} of the train and eval records that have a loss: the negative
    log-likelihood (`nll`) where the loss trained on has label smoothing or a z-loss added."""
    curves = {}
    for split in ("train", "eval"):
        points = [
            (r["step"], r.get("nll", r["loss"]))
            for r in records
            if r["split"] == split and "loss" in r
        ]
        if points:
            steps, losses = zip(*points, strict=True)
            curves[split] = list(steps), list(losses)
    return curves


def plot_loss(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Draw the `loss_curves` of metrics records (see `MetricsLog`) into `path`.

    The figure is drawn off-screen without touching matplotlib's global backend, so inline
    plots in notebooks keep working."""
    path = Path(path)
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    curves = loss_curves(records)
    for split, (steps, losses) in curves.items():
        ax.plot(
            steps, losses, "-" if split == "train" else "o-", label=f"{split} loss", markersize=4
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
