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


def plot_history(
    history: Sequence[dict[str, float]],
    path: Path,
    metric: str,
    *,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Path:
    """Two panels against epoch: loss (train, val) and ``metric`` (train, val).

    Whole-number epoch ticks, the best epoch marked by a dashed line, the loss on a log axis
    when it spans more than a decade. ``metric`` is "accuracy" or "rmse" (target units).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2))
    losses = [row[k] for row in history for k in ("train_loss", "val_loss")]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, [row[key] for row in history], marker=".", label=label)
    positive = [v for v in losses if v > 0]
    if positive and max(positive) / min(positive) > 10:
        ax_loss.set_yscale("log")
    loss_name = "MSE of the standardized target" if metric == "rmse" else "cross-entropy"
    ax_loss.set(xlabel="epoch", ylabel=loss_name, title="Loss")
    for key, label in ((f"train_{metric}", "train"), (f"val_{metric}", "validation")):
        ax_metric.plot(epochs, [row[key] for row in history], marker=".", label=label)
    name = "RMSE (target units)" if metric == "rmse" else metric.capitalize()
    ax_metric.set(xlabel="epoch", ylabel=name, title=name)
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="best.pt")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
