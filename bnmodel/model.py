"""BNMLP: a multilayer perceptron with BatchNorm1d in a chosen placement.

Layout (one flat ``nn.Sequential`` so folding can walk it):

    [Standardize] -> { Linear -> BN -> act -> [Dropout] }*  -> Linear      placement "pre"
    [Standardize] -> { Linear -> act -> BN -> [Dropout] }*  -> Linear      placement "post"
    [Standardize] -> { Linear -> act -> [Dropout] }*        -> Linear      placement "none"

followed by a TargetScale (standardized target -> target units) when ``standardize_target``.

A Linear has a bias exactly when no BN follows it directly: BN's beta takes the bias's role,
and a bias before BN is subtracted away again by the batch mean.
"""

from __future__ import annotations

import torch
from torch import nn

from bnmodel.config import ModelConfig

__all__ = ["BNMLP", "Standardize", "TargetScale", "make_activation"]


class Standardize(nn.Module):
    """``(x - mean) / std`` with the training set's per-feature statistics held as buffers."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        # Constant features have std 0: divide by 1 instead so they map to 0, not inf.
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, F)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"num_features={self.mean.numel()}"


class TargetScale(nn.Module):
    """``z * std + mean``: standardized regression outputs back in target units (per target).

    Training fits z to the standardized target (``normalize``), so the loss is scale-free and
    the last Linear starts near the target mean; the model's output is in target units.
    """

    def __init__(self, num_targets: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_targets))
        self.register_buffer("std", torch.ones(num_targets))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def normalize(self, y: torch.Tensor) -> torch.Tensor:  # (B, T) target units -> standardized
        return (y - self.mean) / self.std

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T)
        return z * self.std + self.mean

    def extra_repr(self) -> str:
        return f"num_targets={self.mean.numel()}"


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name]()


class BNMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.in_features < 1 or config.out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1 to build a model, got "
                f"{config.in_features} and {config.out_features}"
            )
        self.config = config
        layers: list[nn.Module] = []
        if config.standardize_input:
            layers.append(Standardize(config.in_features))
        width = config.in_features
        for hidden in config.hidden_sizes:
            layers.append(nn.Linear(width, hidden, bias=config.bn_placement != "pre"))
            bn = nn.BatchNorm1d(hidden, eps=config.bn_eps, momentum=config.bn_momentum)
            if config.bn_placement == "pre":
                layers += [bn, make_activation(config.activation)]
            elif config.bn_placement == "post":
                layers += [make_activation(config.activation), bn]
            else:
                layers.append(make_activation(config.activation))
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.out_features))
        if config.standardize_target:
            layers.append(TargetScale(config.out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_features) -> (B, out_features)
        return self.net(x)

    @property
    def standardize(self) -> Standardize | None:
        first = self.net[0]
        return first if isinstance(first, Standardize) else None

    @property
    def target_scale(self) -> TargetScale | None:
        last = self.net[-1]
        return last if isinstance(last, TargetScale) else None
