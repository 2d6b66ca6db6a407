"""Optimizers and learning-rate schedules for the trainer.

The schedule is a pure function of the step (as in nanoGPT): the trainer sets each group's lr
before the step, so resuming needs only the step count, nothing pickled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bnmodel.train_config import OPTIMIZERS, SCHEDULES

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "lr_at", "param_groups", "set_lr"]

# One-cycle: rise over the first 30% of steps from lr/25, then anneal to lr/1e4 (Smith's defaults,
# as torch.optim.lr_scheduler.OneCycleLR).
ONECYCLE_WARMUP = 0.3
ONECYCLE_START_DIV = 25.0
ONECYCLE_END_DIV = 1e4


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only weight matrices: BN's gamma/beta and biases (all 1-D) are left undecayed,
    since shrinking gamma or beta toward 0 fights the normalization instead of regularizing."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    name: str,
    groups: Iterable[dict[str, Any]],
    lr: float,
    *,
    momentum: float = 0.9,
    device: torch.device,
) -> torch.optim.Optimizer:
    """AdamW or SGD: fused kernels on CUDA (one launch for all parameters), foreach elsewhere."""
    fused = device.type == "cuda"
    groups = list(groups)
    if name == "adamw":
        if fused:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if name == "sgd":
        kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **kwargs)
    raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {name!r}")


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str, warmup: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    constant/cosine: linear warmup over the first ``warmup`` fraction of steps, then constant or
    half-cosine decay to 0. onecycle: cosine rise from base/25 to base over the first 30%, cosine
    fall to base/1e4.
    """
    total = max(1, total_steps)
    progress = min(step, total) / total
    if schedule == "onecycle":
        start, end = base_lr / ONECYCLE_START_DIV, base_lr / ONECYCLE_END_DIV
        if progress < ONECYCLE_WARMUP:
            return _cos_interp(start, base_lr, progress / ONECYCLE_WARMUP)
        return _cos_interp(base_lr, end, (progress - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP))
    if warmup > 0 and progress < warmup:
        return base_lr * (step + 1) / max(1.0, warmup * total)
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        decay = (progress - warmup) / max(1e-12, 1 - warmup)
        return 0.5 * base_lr * (1 + math.cos(math.pi * decay))
    raise ValueError(f"--schedule must be one of {SCHEDULES}, got {schedule!r}")


def _cos_interp(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
