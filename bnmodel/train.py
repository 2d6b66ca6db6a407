"""The trainer: a resident-data step loop with checkpoints, resume, early stopping and DDP.

Speed comes from doing little per step: the whole training set sits on the device as two
tensors, each epoch draws one randperm and slices batches by index (no DataLoader, no collation),
and the loss and metric accumulate on the device so the host syncs once per epoch (``.item()``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bnmodel import data as data_mod
from bnmodel.bn_stats import recompute_bn_stats
from bnmodel.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from bnmodel.distributed import (
    DistContext,
    all_reduce_sum,
    cleanup,
    init_distributed,
    shard,
    sync_buffers,
)
from bnmodel.errors import UsageError
from bnmodel.history import plot_history, write_csv
from bnmodel.model import BNMLP
from bnmodel.optim import build_optimizer, lr_at, param_groups, set_lr
from bnmodel.train_config import PRECISIONS, TrainConfig

__all__ = [
    "PRECISIONS",
    "ResumeError",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "train",
]

EVAL_CHUNK = 8192  # rows per evaluation forward pass


class ResumeError(ValueError):
    """--resume names a checkpoint that cannot continue this run."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or inf."""


@dataclass
class TrainResult:
    # The run's files; all None for a run in memory (out_dir None).
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict[str, float]]
    best_metric: float  # the monitored value at best_epoch
    best_epoch: int
    metric: str  # the monitored metric (--monitor), e.g. "val_loss"
    out_dir: Path | None
    metrics_csv: Path | None
    plot: Path | None
    interrupted: bool = False  # Ctrl-C: last_checkpoint holds the mid-epoch state to resume
    stopped_early: bool = False
    bn_recompute: dict[str, float] | None = None  # val metric before/after Algorithm 2
    rank: int = 0  # under torchrun: this process's rank (only rank 0 wrote files)
    best_metrics: dict[str, float] = field(default_factory=dict)  # every val metric at best
    test_metrics: dict[str, float] | None = None  # best.pt on the held-out test rows
    task: str = "classification"
    epochs_run: int = 0
    best: Checkpoint | None = None  # best.pt's content, in memory (rank 0)


# ---------------------------------------------------------------------------------------------
# Run state


@dataclass
class _Run:
    """Everything the step loop touches; built once per train() call."""

    config: TrainConfig
    ctx: DistContext
    model: BNMLP  # the plain module: evaluated, saved
    step_model: nn.Module  # what the step calls: model, or DDP/compiled wrappers of it
    optimizer: torch.optim.Optimizer
    x_train: torch.Tensor  # (N, F) on the device
    y_train: torch.Tensor  # (N,) int64 or (N, T) float32
    x_val: torch.Tensor
    y_val: torch.Tensor
    test_set: data_mod.Dataset | None  # evaluated once, with best.pt, at the end
    task: str
    generator: torch.Generator  # CPU; shared seed on all ranks, so shards partition each epoch
    steps_per_epoch: int
    checkpoint_base: dict[str, Any]  # feature names, labels, data_spec, ... for every checkpoint
    monitor_from: int = 1  # epochs before this one are never best.pt nor count for patience
    best: Checkpoint | None = None  # the best epoch so far, also in memory (best.pt on disk)

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "rmse"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class _Progress:
    """Counters saved in every checkpoint's training_state so --resume continues exactly."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_metric: float = math.nan  # the monitored value
    best_loss: float = math.nan  # val loss at best_epoch: breaks ties of the monitored value
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # Mid-epoch position (Ctrl-C): generator state before this epoch's randperm, batches done,
    # and the epoch's running sums; None at epoch boundaries.
    partial: dict[str, Any] | None = None
    # (first step, steps) of each schedule cycle added by extending --epochs on resume.
    segments: list[tuple[int, int]] = field(default_factory=list)


class _StopFlag:
    """First Ctrl-C asks the loop to stop at the next step boundary (never mid-update); a second
    one raises KeyboardInterrupt at once. Installed only in a single process's main thread."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if self._enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


# ---------------------------------------------------------------------------------------------
# Setup


def _load_data(
    config: TrainConfig,
) -> tuple[data_mod.Dataset, data_mod.Dataset, data_mod.Dataset | None, dict[str, Any]]:
    """(train, validation, test or None, data summary); the summary also goes in data.json.

    Raw tables (categorical columns or missing cells): the encoders are fitted on the training
    rows, each part's ``features`` become the model's raw input (``Preprocessing.model_input``)
    and the summary carries the fitted ``preprocessing``.
    """
    dataset = data_mod.load_source(
        config.data, config.target, config.task, config.categorical, drop=config.drop
    )
    if config.task is not None and dataset.task != config.task:
        raise data_mod.DataError(
            f"data {dataset.source} is {dataset.task}, but --task {config.task} was given"
        )
    train_set, val_set, test_set = data_mod.split_three(
        dataset, config.val_fraction, config.test_fraction, config.seed
    )
    if config.test is not None:
        test_set = data_mod.load_file(
            config.test,
            config.target,
            dataset.task,
            dataset.class_labels,
            categorical=tuple(dataset.categorical_names),
            drop=config.drop,
        )
        kinds = ("feature_names", "categorical_names", "date_names")
        if any(getattr(test_set, k) != getattr(dataset, k) for k in kinds):
            raise data_mod.DataError(
                f"--test {config.test}: feature columns {test_set.feature_names[:8]} "
                f"(categorical {test_set.categorical_names[:8]}, dates "
                f"{test_set.date_names[:8]}) differ from the training data's "
                f"{dataset.feature_names[:8]} (categorical {dataset.categorical_names[:8]}, "
                f"dates {dataset.date_names[:8]})"
            )
    parts = {"train": train_set, "validation": val_set, "test": test_set}
    summary = data_mod.summarize(dataset, parts, config.target, config.test)
    summary["data_spec"] = data_mod.data_spec(
        dataset,
        config.target,
        config.val_fraction,
        config.seed,
        config.test_fraction,
        config.categorical,
        config.drop,
    )
    if config.drop:
        summary["dropped_columns"] = list(config.drop)
    if dataset.needs_encoding:
        prep = _fit_encoders(config, train_set)
        summary["preprocessing"] = prep
        summary["vocabulary_sizes"] = {
            c: len(v) for c, v in zip(prep.categorical, prep.vocabularies, strict=True)
        }
        train_set, val_set = _encoded(train_set, prep), _encoded(val_set, prep)
        test_set = None if test_set is None else _encoded(test_set, prep)
    elif test_set is not None and test_set.has_missing:
        row, col = (int(i) for i in np.argwhere(np.isnan(test_set.features))[0])
        raise data_mod.DataError(
            f"--test {config.test}: column {test_set.feature_names[col]!r}, row {row + 1}: "
            "value is missing, but the training data has no missing cells, so the model "
            "does not impute"
        )
    return train_set, val_set, test_set, summary


def _fit_encoders(config: TrainConfig, train_set: data_mod.Dataset) -> Any:
    from bnmodel.encoding import EncodingError, fit_preprocessing

    try:
        return fit_preprocessing(
            train_set.features,
            train_set.feature_names,
            train_set.categories,
            train_set.categorical_names,
            impute=config.impute,
            indicators=config.missing_indicators,
            min_count=config.min_category_count,
            max_size=config.max_categories,
            dates=train_set.dates,
            date_names=train_set.date_names,
        )
    except EncodingError as exc:
        raise data_mod.DataError(f"data {train_set.source} (training rows): {exc}") from None


def _encoded(ds: data_mod.Dataset, prep: Any) -> data_mod.Dataset:
    """The part with ``features`` = the model's raw input (N, F + 5 D + C) float32."""
    from dataclasses import replace

    features = prep.model_input(ds.features, ds.categories, ds.dates)
    return replace(ds, features=features, categories=None, dates=None)


def _build_model(
    config: TrainConfig, train_set: data_mod.Dataset, ctx: DistContext, prep: Any = None
) -> BNMLP:
    numeric = len(train_set.feature_names) if prep is None else len(prep.model_numeric)
    model_config = config.model_config(numeric, train_set.num_outputs, train_set.task, prep)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = BNMLP(model_config)
    impute = None
    if model.encode is not None:
        model.encode.impute.copy_(torch.tensor(prep.impute_values, dtype=torch.float32))
        impute = np.asarray(prep.impute_values, dtype=np.float32)
    # The training rows' statistics, in float64, for the input and (regression) the target.
    # Only the numeric columns are scaled (indicators, one-hot and embeddings pass unscaled),
    # so they are computed column by column from the raw rows: no encoded (one-hot) copy of
    # the data and no float64 copy of more than one column.
    if model.standardize is not None:
        mean, std = _input_statistics(train_set.features, model_config.in_features, impute)
        width = model_config.first_width
        full_mean, full_std = np.zeros(width), np.ones(width)
        full_mean[: len(mean)], full_std[: len(std)] = mean, std
        model.standardize.set_statistics(
            torch.from_numpy(full_mean).float(), torch.from_numpy(full_std).float()
        )
    if model.target_scale is not None:
        y = train_set.targets.astype(np.float64)
        model.target_scale.set_statistics(
            torch.from_numpy(y.mean(axis=0)).float(), torch.from_numpy(y.std(axis=0)).float()
        )
    if config.sync_bn and ctx.device.type == "cuda" and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(ctx.device)


def _input_statistics(
    features: np.ndarray, num_numeric: int, impute: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(F,) float64 mean and std of the numeric columns as the first layer sees them: missing
    cells replaced by ``impute`` (float32, as the Encode layer does) when given."""
    mean, std = np.empty(num_numeric), np.empty(num_numeric)
    for j in range(num_numeric):
        column = features[:, j]
        if impute is not None:
            column = np.where(np.isnan(column), impute[j], column)
        column = column.astype(np.float64)
        mean[j], std[j] = column.mean(), column.std()
    return mean, std


def _wrap_for_steps(model: BNMLP, config: TrainConfig, ctx: DistContext) -> nn.Module:
    step_model: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        step_model = DDP(model, device_ids=ids)
    if config.compile:
        step_model = torch.compile(step_model)
    return step_model


def _tensors(ds: data_mod.Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Resident on the device when it fits (in half the free memory); otherwise kept in pinned
    host memory and each batch is copied over as it is drawn."""
    x = torch.from_numpy(np.ascontiguousarray(ds.features))
    y = torch.from_numpy(np.ascontiguousarray(ds.targets))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if x.nbytes + y.nbytes > free // 2:
            return x.pin_memory(), y.pin_memory()
    return x.to(device), y.to(device)


def _batch_bounds(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """[lo, hi) of each batch; a tail of one row (or any tail with drop_last) is dropped so BN
    never sees a batch of one. The order is reshuffled each epoch, so no row is lost for good."""
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    if bounds and (
        bounds[-1][1] - bounds[-1][0] < 2
        or (drop_last and bounds[-1][1] - bounds[-1][0] < batch_size)
    ):
        bounds.pop()
    return bounds


def _check_monitor(config: TrainConfig, task: str) -> None:
    from bnmodel.train_config import MONITORS

    needs = MONITORS[config.monitor][0]
    if needs is not None and needs != task:
        allowed = [m for m, (t, _) in MONITORS.items() if t in (None, task)]
        raise UsageError(f"--monitor {config.monitor} needs a {needs} task; for {task}: {allowed}")


def _setup(config: TrainConfig, ctx: DistContext, summary: dict[str, Any]) -> _Run:
    train_set, val_set, test_set, loaded = _load_data(config)
    summary.update(loaded)
    spec = summary.pop("data_spec")
    prep = summary.pop("preprocessing", None)
    if prep is not None:  # data.json shows the vocabularies and imputation values
        summary["preprocessing"] = prep.to_dict()
    _check_monitor(config, train_set.task)
    rows_per_rank = len(train_set) // ctx.world_size
    steps = len(_batch_bounds(rows_per_rank, config.batch_size, config.drop_last))
    if steps == 0:
        raise data_mod.DataError(
            f"data {train_set.source}: {len(train_set)} training rows give {rows_per_rank} per "
            f"process, not enough for one batch of >= 2 rows (--batch-size {config.batch_size})"
        )
    config, monitor_from = _small_table_defaults(config, len(train_set), summary)
    model = _build_model(config, train_set, ctx, prep)
    torch.manual_seed(config.seed + 7919 * ctx.rank)  # dropout masks differ between ranks
    groups = param_groups(model, config.weight_decay)
    optimizer = build_optimizer(
        config.optimizer, groups, config.lr, momentum=config.momentum, device=ctx.device
    )
    x_train, y_train = _tensors(train_set, ctx.device)
    x_val, y_val = _tensors(val_set, ctx.device)
    base = {
        "feature_names": train_set.feature_names,
        "class_labels": train_set.class_labels,
        "task": train_set.task,
        "target_name": train_set.target or config.target,
        "data_spec": spec,
        "preprocessing": None if prep is None else prep.to_dict(),
    }
    return _Run(
        config,
        ctx,
        model,
        _wrap_for_steps(model, config, ctx),
        optimizer,
        x_train,
        y_train,
        x_val,
        y_val,
        test_set,
        train_set.task,
        torch.Generator().manual_seed(config.seed),
        steps,
        base,
        monitor_from,
    )


# Small tables: a few optimizer steps per epoch make the validation loss noisy and early epochs
# can look best by chance. Up to this many training rows, early stopping is on unless
# --patience is given, and best.pt is chosen from the last three quarters of the epochs.
SMALL_TABLE_ROWS = 10_000
SMALL_TABLE_PATIENCE = 5


def _small_table_defaults(
    config: TrainConfig, train_rows: int, summary: dict[str, Any]
) -> tuple[TrainConfig, int]:
    """(config, first epoch best.pt may come from): the small-table defaults when they apply."""
    if config.patience is not None or train_rows > SMALL_TABLE_ROWS or config.resume is not None:
        return config, 1
    from dataclasses import replace

    monitor_from = min(config.epochs, max(1, config.epochs // 4 + 1))
    summary["early_stopping"] = (
        f"{train_rows} training rows (<= {SMALL_TABLE_ROWS}): --patience "
        f"{SMALL_TABLE_PATIENCE}, best.pt chosen from epoch {monitor_from} on"
    )
    return replace(config, patience=SMALL_TABLE_PATIENCE), monitor_from


@contextlib.contextmanager
def _numerics(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Process-wide precision and determinism switches, restored on exit."""
    previous_precision = torch.get_float32_matmul_precision()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_float32_matmul_precision("high" if config.precision == "tf32" else "highest")
    if config.deterministic:
        if device.type == "cuda":
            # cuBLAS needs a fixed workspace for reproducible reductions.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous_precision)
        torch.use_deterministic_algorithms(previous_deterministic)


# ---------------------------------------------------------------------------------------------
# Steps and epochs


def _loss(run: _Run, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, or the MSE of standardized targets (scale-free; target units without)."""
    if run.task == "classification":
        return F.cross_entropy(out.float(), target)
    scale = run.model.target_scale
    if scale is None:
        return F.mse_loss(out.float(), target)
    return F.mse_loss(scale.normalize(out.float()), scale.normalize(target))


def _train_step(run: _Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update; returns the batch's summed loss and summed metric as device scalars."""
    with run.autocast():
        out = run.step_model(xb)  # (B, C) or (B, T)
    loss = _loss(run, out, yb)
    loss.backward()
    if run.config.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip, foreach=True)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    n = xb.shape[0]
    if run.task == "classification":
        metric = (out.detach().argmax(dim=1) == yb).sum()
    else:  # squared error in target units, summed over rows and targets
        metric = (out.detach().float() - yb).square().sum()
    return loss.detach() * n, metric


def _run_epoch(run: _Run, prog: _Progress, stop: _StopFlag, tick: Callable[[], None]) -> bool:
    """Train one epoch (or its remainder after a mid-epoch resume). Returns False when Ctrl-C
    stopped it; prog.partial then holds the position to resume from."""
    cfg, device = run.config, run.ctx.device
    partial = prog.partial or {
        "generator": run.generator.get_state(),
        "batch": 0,
        "loss_sum": 0.0,
        "metric_sum": 0.0,
        "rows": 0,
        "seconds": 0.0,
    }
    # Same generator state -> same permutation, so a resumed epoch sees the same batches.
    run.generator.set_state(partial["generator"])
    order = shard(torch.randperm(run.x_train.shape[0], generator=run.generator), run.ctx)
    order = order.to(run.x_train.device, non_blocking=True)
    bounds = _batch_bounds(order.shape[0], cfg.batch_size, cfg.drop_last)
    loss_sum = torch.tensor(partial["loss_sum"], dtype=torch.float64, device=device)
    metric_sum = torch.tensor(partial["metric_sum"], dtype=torch.float64, device=device)
    rows, start = partial["rows"], time.perf_counter() - partial["seconds"]
    run.model.train()
    for b in range(partial["batch"], len(bounds)):
        if stop.requested:
            prog.partial = {
                **partial,
                "batch": b,
                "loss_sum": loss_sum.item(),
                "metric_sum": metric_sum.item(),
                "rows": rows,
                "seconds": time.perf_counter() - start,
            }
            return False
        set_lr(run.optimizer, _lr(run, prog))
        idx = order[bounds[b][0] : bounds[b][1]]
        xb = run.x_train[idx].to(device, non_blocking=True)  # no-op when resident
        yb = run.y_train[idx].to(device, non_blocking=True)
        batch_loss, batch_metric = _train_step(run, xb, yb)
        loss_sum += batch_loss
        metric_sum += batch_metric
        rows += idx.shape[0]
        prog.global_step += 1
        tick()
    prog.partial = None
    prog.history.append(_epoch_row(run, prog, torch.stack([loss_sum, metric_sum]), rows, start))
    return True


def _epoch_row(
    run: _Run, prog: _Progress, sums: torch.Tensor, rows: int, start: float
) -> dict[str, float]:
    """The epoch's one host sync (``tolist``); under DDP the sums cover every rank's shard."""
    sums = torch.cat([sums, sums.new_tensor([rows])])
    loss, metric, total_rows = all_reduce_sum(sums, run.ctx).tolist()
    seconds = time.perf_counter() - start
    if run.task == "classification":
        train_metric = metric / total_rows
    else:
        train_metric = math.sqrt(metric / (total_rows * run.y_train.shape[1]))
    return {
        "epoch": prog.epoch + 1,
        "step": prog.global_step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": loss / total_rows,
        f"train_{run.metric}": train_metric,
        "epoch_seconds": seconds,
        "train_samples_per_second": total_rows / seconds,
    }


@torch.no_grad()
def _evaluate(
    run: _Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor, prefix: str = "val_"
) -> dict[str, float]:
    """Loss and metrics of ``model`` in eval mode on rows x (N, F), y, in chunks: accuracy for a
    classifier; RMSE, MAE and R^2 in target units (pooled over targets) for a regressor."""
    model.eval()
    zero = torch.zeros((), dtype=torch.float64, device=run.ctx.device)
    # loss, correct | loss, squared error, absolute error; target sums (T,) for R^2
    sums = [zero.clone() for _ in range(3)]
    y_sum = y_sq = zero
    for lo in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[lo : lo + EVAL_CHUNK].to(run.ctx.device, non_blocking=True)
        yb = y[lo : lo + EVAL_CHUNK].to(run.ctx.device, non_blocking=True)
        with run.autocast():
            out = model(xb)
        sums[0] += _loss(run, out, yb) * xb.shape[0]
        if run.task == "classification":
            sums[1] += (out.argmax(dim=1) == yb).sum()
            continue
        error = out.float().double() - yb.double()
        sums[1] += error.square().sum()
        sums[2] += error.abs().sum()
        y_sum = y_sum + yb.double().sum(dim=0)
        y_sq = y_sq + yb.double().square().sum(dim=0)
    model.train()
    n = x.shape[0]
    if run.task == "classification":
        return {f"{prefix}loss": sums[0].item() / n, f"{prefix}accuracy": sums[1].item() / n}
    values = n * y.shape[1]
    total = (y_sq - y_sum.square() / n).sum().item()  # sum of squares about each target's mean
    sse = sums[1].item()
    return {
        f"{prefix}loss": sums[0].item() / n,
        f"{prefix}rmse": math.sqrt(sse / values),
        f"{prefix}mae": sums[2].item() / values,
        f"{prefix}r2": 1.0 - sse / total if total > 0 else math.nan,
    }


def _improved(run: _Run, prog: _Progress, value: float, loss: float) -> bool:
    """Better monitored value, or the same one with a lower validation loss."""
    from bnmodel.train_config import MONITORS

    if math.isnan(prog.best_metric):
        return True
    higher_is_better = MONITORS[run.config.monitor][1]
    if value == prog.best_metric:
        return loss < prog.best_loss
    return value > prog.best_metric if higher_is_better else value < prog.best_metric


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _training_state(run: _Run, prog: _Progress) -> dict[str, Any]:
    cuda_rng = torch.cuda.get_rng_state_all() if run.ctx.device.type == "cuda" else []
    return {
        "train_config": run.config.to_dict(),
        "epoch": prog.epoch,
        "global_step": prog.global_step,
        "best_metric": prog.best_metric,
        "best_loss": prog.best_loss,
        "segments": [list(seg) for seg in prog.segments],
        "best_epoch": prog.best_epoch,
        "bad_epochs": prog.bad_epochs,
        "history": prog.history,
        "partial": prog.partial,
        "optimizer": run.optimizer.state_dict(),
        "generator": run.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": cuda_rng,
    }


def _checkpoint(run: _Run, prog: _Progress, metrics: dict[str, float], full: bool) -> Checkpoint:
    return Checkpoint(
        model_config=run.model.config,
        model_state=run.model.state_dict(),
        epoch=prog.epoch,
        metrics=metrics,
        training_state=_training_state(run, prog) if full else None,
        **run.checkpoint_base,
    )


def _restore(
    run: _Run, prog: _Progress, path: Path, log: Callable[[str], None] | None = None
) -> None:
    """Continue from a last.pt: weights, BN buffers, optimizer, RNGs, counters, position."""
    ckpt = load_checkpoint(path)
    state = ckpt.training_state
    if state is None:
        raise ResumeError(
            f"--resume {path}: this checkpoint has no training state (best.pt is "
            "for export); resume from last.pt in the same output directory"
        )
    if ckpt.model_config != run.model.config:
        raise ResumeError(
            f"--resume {path}: checkpoint model {ckpt.model_config} differs from "
            f"this run's {run.model.config}; pass the same model flags"
        )
    if ckpt.data_spec != run.checkpoint_base["data_spec"]:
        raise ResumeError(
            f"--resume {path}: checkpoint was trained on {ckpt.data_spec}, this "
            f"run uses {run.checkpoint_base['data_spec']}"
        )
    run.model.load_state_dict(ckpt.model_state)
    run.optimizer.load_state_dict(state["optimizer"])
    run.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and run.ctx.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    prog.epoch, prog.global_step = state["epoch"], state["global_step"]
    prog.best_metric, prog.best_epoch = state["best_metric"], state["best_epoch"]
    prog.best_loss = state.get("best_loss", math.nan)
    prog.bad_epochs, prog.history, prog.partial = (
        state["bad_epochs"],
        list(state["history"]),
        state["partial"],
    )
    planned_epochs = int(state["train_config"]["epochs"])
    spe = run.steps_per_epoch
    prog.segments = [tuple(seg) for seg in state.get("segments") or [(0, planned_epochs * spe)]]
    planned = sum(length for _, length in prog.segments) // spe
    note = f"resuming {path} at epoch {prog.epoch} (step {prog.global_step})"
    if run.config.epochs > planned:
        prog.segments.append((planned * spe, (run.config.epochs - planned) * spe))
        note += (
            f"; --epochs {run.config.epochs} extends the {planned}-epoch plan: epochs "
            f"{planned + 1}-{run.config.epochs} run a new {run.config.schedule} cycle from "
            f"--lr {run.config.lr:g} (a warm restart; the first {planned} keep their schedule)"
        )
    elif run.config.epochs < planned:
        note += (
            f"; stopping at epoch {run.config.epochs} of a schedule planned for {planned} "
            "epochs (the learning rate will not have decayed fully)"
        )
    if log is not None:
        log(note)


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a BNMLP as ``config`` says; write checkpoints, metrics CSV and plot to out_dir.

    ``on_step(global_step)`` is called after every optimizer step (tests use it to deliver a
    Ctrl-C at a chosen step); ``log`` gets the data summary and resume notes before training.
    Under torchrun every rank calls this; only rank 0 writes files and logs.
    """
    ctx = init_distributed(config.device)
    finished = False
    try:
        if config.sync_bn and ctx.device.type != "cuda":
            raise UsageError(
                f"--sync-bn needs CUDA devices (SyncBatchNorm has no {ctx.device.type}"
                " implementation); drop --sync-bn or run with --device cuda"
            )
        if ctx.is_main and config.out_dir is not None:
            check_out_dir(config)
        with _numerics(config, ctx.device):
            summary: dict[str, Any] = {}
            run = _setup(config, ctx, summary)
            if ctx.is_main:
                if config.out_dir is not None:
                    _write_json(summary, config.out_dir / "data.json")
                if log is not None:
                    log(data_mod.format_summary(summary))
            result = _fit(run, progress, on_step, log if ctx.is_main else None)
        finished = True
        return result
    finally:
        cleanup(ctx, wait_for_peers=finished)


RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "data.json")
# Written only by some runs: removed with --overwrite so nothing stale sits beside a new run.
OPTIONAL_RUN_FILES = ("metrics.png", "test_metrics.json")


def check_out_dir(config: TrainConfig) -> None:
    """--out must be a writable folder holding no earlier run (unless --overwrite/--resume)."""
    out = config.out_dir
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not (config.overwrite or config.resume is not None):
        raise UsageError(
            f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite to "
            f"replace it, --resume {out / 'last.pt'} to continue it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        if earlier and config.resume is None:  # --overwrite: a new run, nothing of the old one
            for name in (*RUN_FILES, *OPTIONAL_RUN_FILES):
                (out / name).unlink(missing_ok=True)
        probe = out / ".bnmodel-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out} is not writable: {exc.strerror or exc}") from None


def _write_json(payload: dict[str, Any], path: Path) -> Path:
    import json

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _lr(run: _Run, prog: _Progress) -> float:
    """The schedule for this step: the run's own, then, for epochs added on resume, a new cycle
    of the same schedule over the added steps (a warm restart), never the old one stretched."""
    cfg, step = run.config, prog.global_step
    start, length = 0, run.total_steps
    for seg_start, seg_length in prog.segments:
        if step >= seg_start:
            start, length = seg_start, seg_length
    return lr_at(step - start, length, cfg.lr, cfg.schedule, cfg.warmup)


def _fit(
    run: _Run,
    progress: bool,
    on_step: Callable[[int], None] | None,
    log: Callable[[str], None] | None,
) -> TrainResult:
    from tqdm.auto import tqdm

    config, prog = run.config, _Progress()
    out = config.out_dir  # None: in memory, no files
    last, best, csv_path = (None,) * 3 if out is None else _run_files(out)
    prog.segments = [(0, run.total_steps)]
    if config.resume is not None:
        _restore(run, prog, config.resume, log)
    bar = tqdm(
        total=run.total_steps,
        initial=prog.global_step,
        unit="step",
        dynamic_ncols=True,
        disable=not (progress and run.ctx.is_main),
        desc="train",
    )

    def tick() -> None:
        bar.update(1)
        if on_step is not None:
            on_step(prog.global_step)

    stopped_early = interrupted = False
    with bar, _StopFlag(enabled=not run.ctx.enabled) as stop:
        while prog.epoch < config.epochs and not stopped_early:
            if not _run_epoch(run, prog, stop, tick):
                interrupted = True
                break
            stopped_early = _end_epoch(run, prog, bar, last, best)
            if run.ctx.is_main and csv_path is not None:
                write_csv(prog.history, csv_path)
    if interrupted and run.ctx.is_main and last is not None:
        save_checkpoint(_checkpoint(run, prog, {}, full=True), last)
    return _finish(run, prog, interrupted, stopped_early)


def _run_files(out: Path) -> tuple[Path, Path, Path]:
    return out / "last.pt", out / "best.pt", out / "metrics.csv"


def _keep_best(run: _Run, ckpt: Checkpoint, path: Path | None) -> None:
    """The best epoch's model in memory (a copy: the live weights keep training), and as
    best.pt when the run has a folder."""
    ckpt.model_state = {k: v.detach().to("cpu", copy=True) for k, v in ckpt.model_state.items()}
    run.best = ckpt
    if path is not None:
        save_checkpoint(ckpt, path)


def _end_epoch(run: _Run, prog: _Progress, bar: Any, last: Path | None, best: Path | None) -> bool:
    """Validate, record, checkpoint; returns True when early stopping says stop."""
    row = prog.history[-1]
    if not math.isfinite(row["train_loss"]):
        raise TrainingDivergedError(
            f"epoch {row['epoch']}: the training loss is {row['train_loss']} (NaN or inf); "
            f"training stopped. Lower --lr, set --grad-clip, or check the data. The last good "
            f"state is in {last}"
        )
    sync_buffers(run.model, run.ctx)
    row.update(_evaluate(run, run.model, run.x_val, run.y_val))
    prog.epoch += 1
    metrics = {k: float(v) for k, v in row.items() if k.startswith(("train_", "val_"))}
    monitored = row[run.config.monitor]
    if prog.epoch < run.monitor_from:
        pass  # too early to judge: the noise of the first epochs is not an improvement
    elif prog.best_epoch < run.monitor_from or _improved(run, prog, monitored, row["val_loss"]):
        prog.best_metric, prog.best_loss = monitored, row["val_loss"]
        prog.best_epoch, prog.bad_epochs = prog.epoch, 0
        if run.ctx.is_main:
            _keep_best(run, _checkpoint(run, prog, metrics, full=False), best)
    else:
        prog.bad_epochs += 1
    if run.ctx.is_main and last is not None:
        save_checkpoint(_checkpoint(run, prog, metrics, full=True), last)
    bar.set_postfix(
        epoch=prog.epoch,
        loss=f"{row['train_loss']:.4f}",
        **{f"val_{run.metric}": f"{row[f'val_{run.metric}']:.4f}"},
    )
    return run.config.patience is not None and prog.bad_epochs >= run.config.patience


def _finish(run: _Run, prog: _Progress, interrupted: bool, stopped_early: bool) -> TrainResult:
    out = run.config.out_dir
    plot = None
    bn_recompute = None
    files = out is not None
    if files and run.ctx.is_main and prog.history and all("val_loss" in r for r in prog.history):
        plot = plot_history(
            prog.history,
            out / "metrics.png",
            run.metric,
            best_epoch=prog.best_epoch,
            title=_plot_title(run),
        )
    if run.ctx.is_main and run.config.recompute_bn_stats and not interrupted:
        bn_recompute = _recompute_best(run, out / "best.pt" if files else None)
    best_metrics: dict[str, float] = {}
    test_metrics = None
    if run.ctx.is_main and prog.best_epoch > 0 and not interrupted:
        if run.best is None:  # resumed, and no epoch since beat the earlier best.pt
            run.best = load_checkpoint(out / "best.pt")
        ckpt = run.best
        best_metrics = {k: v for k, v in ckpt.metrics.items() if k.startswith("val_")}
        if run.test_set is not None:
            test_metrics = _evaluate_test(run, ckpt, out / "test_metrics.json" if files else None)
    best_metric = prog.best_metric
    if bn_recompute is not None:
        best_metric = best_metrics.get(run.config.monitor, best_metric)
    last, best, csv_path = _run_files(out) if files else (None,) * 3
    return TrainResult(
        best_checkpoint=best,
        last_checkpoint=last,
        history=prog.history,
        best_metric=best_metric,
        best_epoch=prog.best_epoch,
        metric=run.config.monitor,
        out_dir=out,
        metrics_csv=csv_path,
        plot=plot,
        interrupted=interrupted,
        stopped_early=stopped_early,
        bn_recompute=bn_recompute,
        rank=run.ctx.rank,
        best_metrics=best_metrics,
        test_metrics=test_metrics,
        task=run.task,
        epochs_run=prog.epoch,
        best=run.best,
    )


def _plot_title(run: _Run) -> str:
    c = run.model.config
    hidden = "x".join(str(h) for h in c.hidden_sizes)
    source = Path(run.checkpoint_base["data_spec"]["source"]).name
    return (
        f"{source}: {run.task}, MLP {c.in_features}-{hidden}-"
        f"{c.out_features} {c.activation}, BN {c.bn_placement}"
    )


def _evaluate_test(run: _Run, ckpt: Checkpoint, path: Path | None) -> dict[str, float]:
    """best.pt on the held-out test rows, once; written to test_metrics.json."""
    test = run.test_set
    model = ckpt.build_model().to(run.ctx.device)
    x, y = _tensors(test, run.ctx.device)
    metrics = _evaluate(run, model, x, y, prefix="test_")
    if path is not None:
        _write_json({"rows": len(test), "epoch": ckpt.epoch, **metrics}, path)
    return metrics


def _recompute_best(run: _Run, best: Path | None) -> dict[str, float]:
    """Algorithm 2 on the best model (a fresh plain-BN copy, so no SyncBN collective runs)."""
    ckpt = run.best if run.best is not None else load_checkpoint(best)
    model = ckpt.build_model().to(run.ctx.device)
    key = run.config.monitor
    before = ckpt.metrics.get(key, math.nan)
    with run.autocast():
        recompute_bn_stats(model, run.x_train, run.config.batch_size, seed=run.config.seed)
    after = _evaluate(run, model, run.x_val, run.y_val)
    ckpt.model_state = model.state_dict()
    ckpt.metrics.update({**after, f"{key}_before_bn_recompute": before})
    _keep_best(run, ckpt, best)
    return {"before": before, "after": after[key]}
