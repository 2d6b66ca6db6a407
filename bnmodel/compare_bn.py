"""The seed's claim, reproduced: batch norm makes the same MLP train in far fewer steps.

Ioffe & Szegedy (2015), section 4.1: three hidden layers of 100 sigmoid units, mini-batches of
60, plain SGD, with and without BN. Here on the bundled digits (MNIST needs a download), inputs
standardized for both (BN extends that normalization to the hidden layers), validation accuracy
measured after every epoch (24 steps).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnmodel.config import ModelConfig
from bnmodel.train_config import TrainConfig

__all__ = ["VARIANTS", "CompareReport", "compare_bn", "format_table", "steps_to"]

VARIANTS = {"with BN": "pre", "without BN": "none"}
THRESHOLDS = (0.90, 0.95)


@dataclass
class CompareReport:
    rows: list[dict[str, Any]]  # one per (variant, seed), then one mean row per variant
    curves: dict[str, list[list[tuple[int, float]]]]  # variant -> per seed [(step, val_acc)]
    plot: Path
    table: Path


def paper_config(
    bn_placement: str,
    seed: int,
    epochs: int,
    lr: float,
    out_dir: Path,
    device: str,
    overwrite: bool = False,
) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(
            hidden_sizes=(100, 100, 100), activation="sigmoid", bn_placement=bn_placement
        ),
        batch_size=60,
        optimizer="sgd",
        momentum=0.0,
        lr=lr,
        weight_decay=0.0,
        schedule="constant",
        epochs=epochs,
        seed=seed,
        out_dir=out_dir,
        device=device,
        overwrite=overwrite,
    )


def steps_to(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """First step at which validation accuracy reached ``threshold``; None if never."""
    return next((step for step, acc in curve if acc >= threshold), None)


def compare_bn(
    out_dir: str | Path,
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    epochs: int = 60,
    lr: float = 0.5,
    device: str = "cpu",
    progress: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> CompareReport:
    """Train both variants for every seed; write compare_bn.png and compare_bn.csv to out_dir.

    Refuses an out_dir holding an earlier comparison unless ``overwrite``; ``log`` hears of
    each run as it starts and ends.
    """
    from bnmodel.errors import UsageError
    from bnmodel.train import train

    out = Path(out_dir)
    if (out / "compare_bn.csv").exists() and not overwrite:
        raise UsageError(
            f"--out {out} holds an earlier comparison (compare_bn.csv); pass --overwrite to "
            "replace it or choose another --out"
        )
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    total, done = len(VARIANTS) * len(seeds), 0
    for name, placement in VARIANTS.items():
        curves[name] = []
        for seed in seeds:
            run_dir = out / f"{placement}-seed{seed}"
            config = paper_config(placement, seed, epochs, lr, run_dir, device, overwrite)
            result = train(config, progress=progress)
            done += 1
            if log is not None:
                log(
                    f"[{done}/{total}] {name}, seed {seed}: final val accuracy "
                    f"{result.history[-1]['val_accuracy']:.4f}"
                )
            curves[name].append([(int(r["step"]), r["val_accuracy"]) for r in result.history])
    rows = _summarize(curves, seeds)
    return CompareReport(
        rows,
        curves,
        _plot(curves, out / "compare_bn.png"),
        _write_table(rows, out / "compare_bn.csv"),
    )


def _summarize(
    curves: dict[str, list[list[tuple[int, float]]]], seeds: tuple[int, ...]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, per_seed in curves.items():
        mine = []
        for seed, curve in zip(seeds, per_seed, strict=True):
            row = {"model": name, "seed": seed, "final_val_accuracy": curve[-1][1]}
            row.update({f"steps_to_{int(t * 100)}": steps_to(curve, t) for t in THRESHOLDS})
            mine.append(row)
        mean: dict[str, Any] = {"model": name, "seed": "mean"}
        for key in mine[0]:
            values = [r[key] for r in mine]
            if key.startswith("steps_to"):
                # A mean over seeds only when every seed got there; otherwise say how many did.
                reached = [v for v in values if v is not None]
                mean[key] = (
                    statistics.mean(reached)
                    if len(reached) == len(values)
                    else f"{len(reached)}/{len(values)} seeds"
                )
            elif key == "final_val_accuracy":
                mean[key] = statistics.mean(values)
        rows += [*mine, mean]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'model':<12} {'seed':>5} {'steps to 90%':>13} {'steps to 95%':>13} {'final acc':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = [_cell(r["steps_to_90"]), _cell(r["steps_to_95"])]
        lines.append(
            f"{r['model']:<12} {r['seed']!s:>5} {cells[0]:>13} {cells[1]:>13} "
            f"{r['final_val_accuracy']:>10.4f}"
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "not reached"
    return f"{value:.0f}" if isinstance(value, (int, float)) else str(value)


def _write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _plot(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> Path:
    """Validation accuracy against steps: one thin line per seed, both variants on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, per_seed), color in zip(curves.items(), ("tab:blue", "tab:red"), strict=True):
        for i, curve in enumerate(per_seed):
            steps, accs = zip(*curve, strict=True)
            ax.plot(steps, accs, color=color, alpha=0.8, lw=1.2, label=name if i == 0 else None)
    for t in THRESHOLDS:
        ax.axhline(t, color="gray", lw=0.6, ls="--")
    ax.set(
        xlabel="training steps (batch 60)",
        ylabel="validation accuracy",
        ylim=(0, 1),
        title="Digits, 3x100 sigmoid MLP, SGD: with vs without batch norm",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
