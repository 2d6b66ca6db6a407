"""Training options: a frozen dataclass validated on construction, with no torch import.

Kept apart from ``bnmodel.train`` so the CLI can read defaults and choices without loading torch.
Every validation message names the command-line flag.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bnmodel.config import ModelConfig

__all__ = ["MONITORS", "OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TrainConfig"]

OPTIMIZERS = ("adamw", "sgd")
# What best.pt and early stopping can follow: name -> (task or None for any, higher is better).
MONITORS = {
    "val_loss": (None, False),
    "val_accuracy": ("classification", True),
    "val_rmse": ("regression", False),
    "val_mae": ("regression", False),
    "val_r2": ("regression", True),
}
SCHEDULES = ("constant", "cosine", "onecycle")
# ModelConfig fields set from the data, never flags.
FROM_DATA = (
    "in_features",
    "out_features",
    "standardize_target",
    "impute_missing",
    "indicator_columns",
    "category_sizes",
)
PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    # Data: "digits", "synthetic:ROWS,FEATURES,CLASSES[,SEED]", a CSV/Parquet/NPZ path, an
    # in-memory table (pandas DataFrame, pyarrow Table) holding the target column, or a
    # data.Dataset already read.
    data: Any = "digits"
    target: str | None = None
    task: str | None = None  # None: inferred from the target column
    val_fraction: float = 0.2
    # Held-out test rows, evaluated once with best.pt at the end: a file, or a fraction of --data.
    test: str | None = None
    test_fraction: float = 0.0
    # Raw tables (bnmodel/encoding.py): string, bool and category columns are categorical, and
    # so are the integer columns named here; missing numerics take the training mean or median,
    # plus a 0/1 indicator feature per column that had missing training cells.
    categorical: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()  # columns left out of the features (ids, leaks)
    impute: str = "mean"
    missing_indicators: bool = True
    # A categorical value needs this many training rows for its own slot (rarer ones share the
    # "other" slot with blanks and unseen values); at most this many slots per column.
    min_category_count: int = 5
    max_categories: int = 1000
    # The model's fields and defaults live in ModelConfig; in/out features come from the data.
    model: ModelConfig = ModelConfig()
    # Regression: fit the standardized target (the model maps back to target units).
    standardize_target: bool = True
    # Optimization.
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-2  # weight matrices only; never BN parameters or biases
    schedule: str = "cosine"
    warmup: float = 0.0  # fraction of steps with linear warmup (constant/cosine)
    grad_clip: float | None = None  # max global L2 norm of the gradients
    monitor: str = "val_loss"  # what best.pt and early stopping follow (ties: lower val loss)
    patience: int | None = None  # early stopping: epochs without improvement of the monitor
    drop_last: bool = False  # a 1-row tail batch is always dropped (BN needs >= 2 rows)
    # Execution.
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    sync_bn: bool = False
    # None: train in memory and write nothing (TrainResult.best holds the model).
    out_dir: Path | None = Path("runs/train")
    resume: Path | None = None
    overwrite: bool = False  # replace an earlier run in out_dir
    recompute_bn_stats: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # from to_dict(), e.g. a checkpoint's train_config
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))
        if isinstance(self.categorical, str):  # "a,b" from the command line
            names = [c.strip() for c in self.categorical.split(",") if c.strip()]
            object.__setattr__(self, "categorical", tuple(names))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        if isinstance(self.drop, str):
            object.__setattr__(self, "drop", tuple(c.strip() for c in self.drop.split(",") if c))
        object.__setattr__(self, "drop", tuple(self.drop))
        if self.resume is not None:
            object.__setattr__(self, "resume", Path(self.resume))
        for problem in _config_problems(self):
            raise ValueError(problem)

    def model_config(
        self,
        in_features: int,
        out_features: int,
        task: str = "classification",
        preprocessing: Any = None,
    ) -> ModelConfig:
        """The model to build for data with these widths and this task (and, for raw tables,
        this ``encoding.Preprocessing``)."""
        encoded: dict[str, Any] = {}
        if preprocessing is not None:
            encoded = {
                "impute_missing": True,
                "indicator_columns": preprocessing.indicator_index,
                "category_sizes": preprocessing.category_sizes,
            }
        return replace(
            self.model,
            in_features=in_features,
            out_features=out_features,
            standardize_target=self.standardize_target and task == "regression",
            **encoded,
        )

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not asdict(): that would deep-copy an in-memory table.
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(
            data=self.data if isinstance(self.data, str) else _table_name(self.data),
            model=self.model.to_dict(),
            out_dir=None if self.out_dir is None else str(self.out_dir),
            resume=None if self.resume is None else str(self.resume),
        )
        return d

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> TrainConfig:
        """From one flat mapping of flag names (the CLI's): model fields go to ModelConfig."""
        model_fields = {f.name for f in fields(ModelConfig)} - set(FROM_DATA)
        model = {k: v for k, v in flags.items() if k in model_fields}
        rest = {k: v for k, v in flags.items() if k not in model_fields}
        base = rest.pop("model", ModelConfig())
        base = ModelConfig.from_dict(base) if isinstance(base, dict) else base
        return cls(model=replace(base, **model), **rest)

    def to_flags(self) -> dict[str, Any]:
        """The inverse of from_flags: one flat mapping, model fields included."""
        flat = self.to_dict()
        model = flat.pop("model")
        for name in FROM_DATA:
            model.pop(name)
        return {**flat, **model}


def _table_name(table: Any) -> str:
    """What a checkpoint records for data given in memory (it cannot hold the table)."""
    if isinstance(getattr(table, "source", None), str):  # a data.Dataset
        return table.source
    rows, columns = getattr(table, "shape", ("?", "?"))[:2]
    return f"<{type(table).__name__} of {rows} rows, {columns} columns>"


def _config_problems(c: TrainConfig) -> Iterator[str]:
    """Each message names the command-line flag, what it must be and what it got."""
    checks: list[tuple[bool, str, str, Any]] = [
        (0 < c.val_fraction < 1, "--val-fraction", "in (0, 1)", c.val_fraction),
        (
            0 <= c.test_fraction < 1 and c.val_fraction + c.test_fraction < 1,
            "--test-fraction",
            "in [0, 1) with --val-fraction + --test-fraction < 1",
            c.test_fraction,
        ),
        (
            c.test is None or c.test_fraction == 0,
            "--test",
            "not combined with --test-fraction",
            c.test,
        ),
        (c.monitor in MONITORS, "--monitor", f"one of {tuple(MONITORS)}", c.monitor),
        (
            c.task in (None, "classification", "regression"),
            "--task",
            "classification or regression",
            c.task,
        ),
        (c.impute in ("mean", "median"), "--impute", "mean or median", c.impute),
        (c.min_category_count >= 1, "--min-category-count", ">= 1", c.min_category_count),
        (c.max_categories >= 1, "--max-categories", ">= 1", c.max_categories),
        (c.epochs >= 1, "--epochs", ">= 1", c.epochs),
        (c.batch_size >= 2, "--batch-size", ">= 2 (batch norm needs two rows)", c.batch_size),
        (c.optimizer in OPTIMIZERS, "--optimizer", f"one of {OPTIMIZERS}", c.optimizer),
        (c.lr > 0 and math.isfinite(c.lr), "--lr", "a finite number > 0", c.lr),
        (0 <= c.momentum < 1, "--momentum", "in [0, 1)", c.momentum),
        (c.weight_decay >= 0, "--weight-decay", ">= 0", c.weight_decay),
        (c.schedule in SCHEDULES, "--schedule", f"one of {SCHEDULES}", c.schedule),
        (0 <= c.warmup < 1, "--warmup", "a fraction in [0, 1)", c.warmup),
        (c.grad_clip is None or c.grad_clip > 0, "--grad-clip", "> 0", c.grad_clip),
        (c.patience is None or c.patience >= 1, "--patience", ">= 1", c.patience),
        (c.device in ("auto", "cpu", "cuda"), "--device", "auto, cpu or cuda", c.device),
        (c.precision in PRECISIONS, "--precision", f"one of {PRECISIONS}", c.precision),
    ]
    for ok, flag, expected, got in checks:
        if not ok:
            yield f"{flag} must be {expected}, got {got!r}"
