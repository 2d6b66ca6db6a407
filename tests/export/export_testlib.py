"""Builders for the export tests: BNMLPs with randomized BN statistics, checkpoint files.

A plain module (not conftest) with a name unique across tests/, so test files import it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bnmodel.checkpoint import Checkpoint, save_checkpoint
from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running stats and affine params (a fresh BN is the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 2)
                module.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.05)
                if module.affine:
                    module.weight.copy_(torch.randn(n, generator=gen))
                    module.bias.copy_(torch.randn(n, generator=gen))
        standardize = getattr(model, "standardize", None)
        if standardize is not None:
            f = standardize.mean.numel()
            standardize.set_statistics(
                torch.randn(f, generator=gen) * 10, torch.rand(f, generator=gen) * 5 + 0.1
            )
    return model.eval()


def make_model(seed: int = 0, **overrides: object) -> BNMLP:
    config = {
        "in_features": 6,
        "hidden_sizes": (16, 8),
        "out_features": 3,
        "standardize_input": True,
        **overrides,
    }
    torch.manual_seed(seed)
    return randomize_statistics(BNMLP(ModelConfig(**config)), seed)


def make_checkpoint(
    path: Path, task: str = "classification", seed: int = 0, **overrides: object
) -> Path:
    model = make_model(seed, **overrides)
    config = model.config
    labels = [f"class{i}" for i in range(config.out_features)] if task == "classification" else None
    ckpt = Checkpoint(
        model_config=config,
        model_state=model.state_dict(),
        task=task,
        feature_names=[f"x{i}" for i in range(config.in_features)],
        target_name="y",
        class_labels=labels,
    )
    return save_checkpoint(ckpt, path)
