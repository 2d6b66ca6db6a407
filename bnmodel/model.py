"""BNMLP: a multilayer perceptron with BatchNorm1d in a chosen placement.

Layout (one flat ``nn.Sequential`` so folding can walk it), with an ``Encode`` layer first
for raw table rows (imputation, missing indicators, one-hot or embedded categoricals):

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

__all__ = ["BNMLP", "Encode", "Standardize", "TargetScale", "make_activation"]


class Encode(nn.Module):
    """Raw rows -> first-layer inputs (bnmodel/encoding.py states the rules).

    (B, F + C) -> (B, F + K + sum(slots)) one-hot, or (B, F + K + C * E) with embeddings:
    F numerics (NaN = missing, replaced by ``impute``), K 0/1 missing indicators, and C
    categorical slot indices (floats holding integers).
    """

    def __init__(
        self,
        num_numeric: int,
        indicator_columns: tuple[int, ...],
        category_sizes: tuple[int, ...],
        embedding_dim: int,
    ) -> None:
        super().__init__()
        self.num_numeric = num_numeric
        self.category_sizes = tuple(category_sizes)
        self.register_buffer("impute", torch.zeros(num_numeric))
        self.register_buffer("indicators", torch.tensor(indicator_columns, dtype=torch.long))
        self.embeddings = (
            nn.ModuleList(nn.Embedding(size, embedding_dim) for size in category_sizes)
            if embedding_dim > 0
            else None
        )

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F + C) raw rows -> (B, F + K): imputed numerics, then missing indicators."""
        numeric = x[:, : self.num_numeric]
        missing = torch.isnan(numeric)
        parts = [torch.where(missing, self.impute.to(x.dtype), numeric)]
        if self.indicators.numel():
            parts.append(missing[:, self.indicators].to(x.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def slots(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F + C) raw rows -> (B, C) int64 indices into the concatenated one-hot blocks."""
        sizes = torch.tensor(self.category_sizes, device=x.device)
        offsets = sizes.cumsum(0) - sizes  # where each column's block starts
        return x[:, self.num_numeric :].long() + offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.dense(x)]
        codes = x[:, self.num_numeric :].long()  # (B, C)
        for i, size in enumerate(self.category_sizes):
            if self.embeddings is not None:
                parts.append(self.embeddings[i](codes[:, i]).to(x.dtype))
            else:
                parts.append(nn.functional.one_hot(codes[:, i], size).to(x.dtype))
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_numeric={self.num_numeric}, indicators={self.indicators.numel()}, "
            f"category_sizes={list(self.category_sizes)}"
        )


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
        if config.first_width < 1 or config.out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1 to build a model, got "
                f"{config.first_width} and {config.out_features}"
            )
        self.config = config
        layers: list[nn.Module] = []
        if config.encodes_inputs:
            layers.append(
                Encode(
                    config.in_features,
                    config.indicator_columns,
                    config.category_sizes,
                    config.embedding_dim,
                )
            )
        if config.standardize_input:
            layers.append(Standardize(config.first_width))
        width = config.first_width
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_features + C) -> (B, out)
        encode = self.encode
        first = self.net[2 if self.standardize is not None else 1] if encode is not None else None
        if (
            encode is None
            or encode.embeddings is not None
            or not encode.category_sizes
            or not isinstance(first, nn.Linear)  # a rewritten net (export) runs as built
        ):
            return self.net(x)
        return self._one_hot_lookup(x, encode)

    def _one_hot_lookup(self, x: torch.Tensor, encode: Encode) -> torch.Tensor:
        """The same function as ``self.net(x)`` without building the one-hot blocks.

        With h = [d, e] (d the dense part, e the one-hot blocks), Standardize s(h) = (h - m) / s
        and the first Linear W = [W_d, W_e]:
            W s(h) = W_d s(d) + W_e (e / s_e) - W_e (m_e / s_e)
        and W_e (e / s_e) is, per row, the sum over categorical columns of the column of
        W_e / s_e at that row's slot: a gather (embedding bag), (B, C) indices not (B, sum slots).
        """
        dense = encode.dense(x)  # (B, F + K)
        index = 1
        standardize = self.standardize
        width = dense.shape[1]
        if standardize is not None:
            index = 2
            mean, std = standardize.mean.to(x.dtype), standardize.std.to(x.dtype)
            dense = (dense - mean[:width]) / std[:width]
        linear = self.net[index]
        weight_d, weight_e = linear.weight[:, :width], linear.weight[:, width:]  # (H, *)
        out = dense @ weight_d.T
        table = weight_e.T  # (sum slots, H)
        if standardize is not None:
            mean_e, std_e = mean[width:], std[width:]
            table = table / std_e[:, None]
            out = out - weight_e @ (mean_e / std_e)
        out = out + nn.functional.embedding_bag(encode.slots(x), table, mode="sum")
        if linear.bias is not None:
            out = out + linear.bias
        return self.net[index + 1 :](out)

    @property
    def encode(self) -> Encode | None:
        first = self.net[0]
        return first if isinstance(first, Encode) else None

    @property
    def standardize(self) -> Standardize | None:
        first = self.net[1 if self.encode is not None else 0]
        return first if isinstance(first, Standardize) else None

    @property
    def target_scale(self) -> TargetScale | None:
        last = self.net[-1]
        return last if isinstance(last, TargetScale) else None
