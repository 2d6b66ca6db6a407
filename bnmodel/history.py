"""Per-epoch metrics: a CSV rewritten every epoch and a PNG of training and validation curves."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from bnmodel.files import atomic_open

__all__ = ["plot_history", "write_csv"]


def write_csv(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Atomic rewrite, so a reader (or a Ctrl-C) never sees half a table."""
    if not history:
        return path
    fields = list(history[0])
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    return path


def plot_history(history: Sequence[dict[str, float]], path: Path, metric: str) -> Path:
    """Two panels against epoch: loss (train, val) and ``metric`` (train, val)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, [row[key] for row in history], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for key, label in ((f"train_{metric}", "train"), (f"val_{metric}", "validation")):
        ax_metric.plot(epochs, [row[key] for row in history], marker=".", label=label)
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric.capitalize())
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
