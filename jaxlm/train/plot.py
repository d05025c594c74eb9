"""The loss curve as a PNG: training loss per logged step and evaluation loss."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def plot_loss(records: list[dict], path: Path, title: str = "") -> Path:
    """Draw train and eval loss from metrics records (see `MetricsLog`) into `path`: the
    negative log-likelihood, where the loss trained on has label smoothing or a z-loss added.

    The figure is drawn off-screen without touching matplotlib's global backend, so inline
    plots in notebooks keep working."""
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    plotted = False
    for split, style in (("train", "-"), ("eval", "o-")):
        points = [
            (r["step"], r.get("nll", r["loss"]))
            for r in records
            if r["split"] == split and "loss" in r
        ]
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, losses, style, label=f"{split} loss", markersize=4)
            plotted = True
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
