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
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]]
    best_metric: float
    best_epoch: int
    metric: str  # "val_accuracy" (higher is better) or "val_mse" (lower is better)
    out_dir: Path
    metrics_csv: Path
    plot: Path | None
    interrupted: bool = False  # Ctrl-C: last_checkpoint holds the mid-epoch state to resume
    stopped_early: bool = False
    bn_recompute: dict[str, float] | None = None  # val metric before/after Algorithm 2
    rank: int = 0  # under torchrun: this process's rank (only rank 0 wrote files)


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
    task: str
    generator: torch.Generator  # CPU; shared seed on all ranks, so shards partition each epoch
    steps_per_epoch: int
    checkpoint_base: dict[str, Any]  # feature names, labels, data_spec, ... for every checkpoint

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "mse"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class _Progress:
    """Counters saved in every checkpoint's training_state so --resume continues exactly."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_metric: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # Mid-epoch position (Ctrl-C): generator state before this epoch's randperm, batches done,
    # and the epoch's running sums; None at epoch boundaries.
    partial: dict[str, Any] | None = None


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


def _load_data(config: TrainConfig) -> tuple[data_mod.Dataset, data_mod.Dataset, dict[str, Any]]:
    dataset = data_mod.load_source(config.data, config.target, config.task)
    if config.task is not None and dataset.task != config.task:
        raise data_mod.DataError(
            f"data {dataset.source} is {dataset.task}, but --task {config.task} was given"
        )
    train_set, val_set = data_mod.split(dataset, config.val_fraction, config.seed)
    spec = data_mod.data_spec(dataset, config.target, config.val_fraction, config.seed)
    return train_set, val_set, spec


def _build_model(config: TrainConfig, train_set: data_mod.Dataset, ctx: DistContext) -> BNMLP:
    model_config = config.model_config(train_set.features.shape[1], train_set.num_outputs)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = BNMLP(model_config)
    if model.standardize is not None:
        x = train_set.features.astype(np.float64)
        model.standardize.set_statistics(
            torch.from_numpy(x.mean(axis=0)).float(), torch.from_numpy(x.std(axis=0)).float()
        )
    if config.sync_bn and ctx.device.type == "cuda" and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(ctx.device)


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


def _setup(config: TrainConfig, ctx: DistContext) -> _Run:
    train_set, val_set, spec = _load_data(config)
    rows_per_rank = len(train_set) // ctx.world_size
    steps = len(_batch_bounds(rows_per_rank, config.batch_size, config.drop_last))
    if steps == 0:
        raise data_mod.DataError(
            f"data {train_set.source}: {len(train_set)} training rows give {rows_per_rank} per "
            f"process, not enough for one batch of >= 2 rows (--batch-size {config.batch_size})"
        )
    model = _build_model(config, train_set, ctx)
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
        "target_name": config.target,
        "data_spec": spec,
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
        train_set.task,
        torch.Generator().manual_seed(config.seed),
        steps,
        base,
    )


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
    if run.task == "classification":
        return F.cross_entropy(out.float(), target)
    return F.mse_loss(out.float(), target)


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
    else:
        metric = loss.detach() * n
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
        set_lr(
            run.optimizer,
            lr_at(prog.global_step, run.total_steps, cfg.lr, cfg.schedule, cfg.warmup),
        )
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
    return {
        "epoch": prog.epoch + 1,
        "step": prog.global_step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": loss / total_rows,
        f"train_{run.metric}": metric / total_rows,
        "epoch_seconds": seconds,
        "train_samples_per_second": total_rows / seconds,
    }


@torch.no_grad()
def _evaluate(run: _Run, model: nn.Module) -> tuple[float, float]:
    """Validation (loss, metric) in eval mode, on the whole validation set, in chunks."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.ctx.device)
    metric_sum = torch.zeros_like(loss_sum)
    for lo in range(0, run.x_val.shape[0], EVAL_CHUNK):
        xb = run.x_val[lo : lo + EVAL_CHUNK].to(run.ctx.device, non_blocking=True)
        yb = run.y_val[lo : lo + EVAL_CHUNK].to(run.ctx.device, non_blocking=True)
        with run.autocast():
            out = model(xb)
        loss = _loss(run, out, yb)
        loss_sum += loss * xb.shape[0]
        if run.task == "classification":
            metric_sum += (out.argmax(dim=1) == yb).sum()
        else:
            metric_sum += loss * xb.shape[0]
    model.train()
    n = run.x_val.shape[0]
    return loss_sum.item() / n, metric_sum.item() / n


def _improved(run: _Run, prog: _Progress, value: float) -> bool:
    if math.isnan(prog.best_metric):
        return True
    if run.metric == "accuracy":
        return value > prog.best_metric
    return value < prog.best_metric


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _training_state(run: _Run, prog: _Progress) -> dict[str, Any]:
    cuda_rng = torch.cuda.get_rng_state_all() if run.ctx.device.type == "cuda" else []
    return {
        "train_config": run.config.to_dict(),
        "epoch": prog.epoch,
        "global_step": prog.global_step,
        "best_metric": prog.best_metric,
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


def _restore(run: _Run, prog: _Progress, path: Path) -> None:
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
    prog.bad_epochs, prog.history, prog.partial = (
        state["bad_epochs"],
        list(state["history"]),
        state["partial"],
    )


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    config: TrainConfig, *, progress: bool = True, on_step: Callable[[int], None] | None = None
) -> TrainResult:
    """Train a BNMLP as ``config`` says; write checkpoints, metrics CSV and plot to out_dir.

    ``on_step(global_step)`` is called after every optimizer step (tests use it to deliver a
    Ctrl-C at a chosen step). Under torchrun every rank calls this; only rank 0 writes files.
    """
    ctx = init_distributed(config.device)
    finished = False
    try:
        if config.sync_bn and ctx.device.type != "cuda":
            raise ValueError(
                f"--sync-bn needs CUDA devices (SyncBatchNorm has no {ctx.device.type}"
                " implementation); drop --sync-bn or run with --device cuda"
            )
        with _numerics(config, ctx.device):
            run = _setup(config, ctx)
            result = _fit(run, progress, on_step)
        finished = True
        return result
    finally:
        cleanup(ctx, wait_for_peers=finished)


def _fit(run: _Run, progress: bool, on_step: Callable[[int], None] | None) -> TrainResult:
    from tqdm.auto import tqdm

    config, prog = run.config, _Progress()
    out = config.out_dir
    last, best, csv_path = out / "last.pt", out / "best.pt", out / "metrics.csv"
    if config.resume is not None:
        _restore(run, prog, config.resume)
    if run.ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
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
            if run.ctx.is_main:
                write_csv(prog.history, csv_path)
    if interrupted and run.ctx.is_main:
        save_checkpoint(_checkpoint(run, prog, {}, full=True), last)
    return _finish(run, prog, interrupted, stopped_early)


def _end_epoch(run: _Run, prog: _Progress, bar: Any, last: Path, best: Path) -> bool:
    """Validate, record, checkpoint; returns True when early stopping says stop."""
    row = prog.history[-1]
    if not math.isfinite(row["train_loss"]):
        raise TrainingDivergedError(
            f"epoch {row['epoch']}: the training loss is {row['train_loss']} (NaN or inf); "
            f"training stopped. Lower --lr, set --grad-clip, or check the data. The last good "
            f"state is in {last}"
        )
    sync_buffers(run.model, run.ctx)
    val_loss, val_metric = _evaluate(run, run.model)
    row.update({"val_loss": val_loss, f"val_{run.metric}": val_metric})
    prog.epoch += 1
    metrics = {k: float(v) for k, v in row.items() if k.startswith(("train_", "val_"))}
    if _improved(run, prog, val_metric):
        prog.best_metric, prog.best_epoch, prog.bad_epochs = val_metric, prog.epoch, 0
        if run.ctx.is_main:
            save_checkpoint(_checkpoint(run, prog, metrics, full=False), best)
    else:
        prog.bad_epochs += 1
    if run.ctx.is_main:
        save_checkpoint(_checkpoint(run, prog, metrics, full=True), last)
    bar.set_postfix(
        epoch=prog.epoch,
        loss=f"{row['train_loss']:.4f}",
        **{f"val_{run.metric}": f"{val_metric:.4f}"},
    )
    return run.config.patience is not None and prog.bad_epochs >= run.config.patience


def _finish(run: _Run, prog: _Progress, interrupted: bool, stopped_early: bool) -> TrainResult:
    out = run.config.out_dir
    plot = None
    bn_recompute = None
    if run.ctx.is_main and prog.history and all("val_loss" in r for r in prog.history):
        plot = plot_history(prog.history, out / "metrics.png", run.metric)
    if run.ctx.is_main and run.config.recompute_bn_stats and not interrupted:
        bn_recompute = _recompute_best(run, out / "best.pt")
    best_metric = prog.best_metric if bn_recompute is None else bn_recompute["after"]
    return TrainResult(
        best_checkpoint=out / "best.pt",
        last_checkpoint=out / "last.pt",
        history=prog.history,
        best_metric=best_metric,
        best_epoch=prog.best_epoch,
        metric=f"val_{run.metric}",
        out_dir=out,
        metrics_csv=out / "metrics.csv",
        plot=plot,
        interrupted=interrupted,
        stopped_early=stopped_early,
        bn_recompute=bn_recompute,
        rank=run.ctx.rank,
    )


def _recompute_best(run: _Run, best: Path) -> dict[str, float]:
    """Algorithm 2 on the best model (a fresh plain-BN copy, so no SyncBN collective runs)."""
    ckpt = load_checkpoint(best)
    model = ckpt.build_model().to(run.ctx.device)
    before = ckpt.metrics.get(f"val_{run.metric}", math.nan)
    with run.autocast():
        recompute_bn_stats(model, run.x_train, run.config.batch_size, seed=run.config.seed)
    val_loss, after = _evaluate(run, model)
    ckpt.model_state = model.state_dict()
    ckpt.metrics.update(
        {
            "val_loss": val_loss,
            f"val_{run.metric}": after,
            f"val_{run.metric}_before_bn_recompute": before,
        }
    )
    save_checkpoint(ckpt, best)
    return {"before": before, "after": after}
