"""Raw-row encoders folded into the first layer: the pure math, split from graph building.

After folding (input standardization and BN into the first Linear, ``fold.py``), the first
Linear sees ``[numerics (F), indicators (K), one block per categorical column]`` and computes
``h = W x + b``. Split W's columns by block:

    h = W_dense [x_imputed - center; indicators] + b + sum_c T_c[index_c]

    one-hot block c (width S_c):        T_c = W_c^T                     (S_c, H)
    embedding block c (E wide, E_c):    T_c = E_c W_c^T                  (S_c, H)

since a one-hot vector times W_c is a column of W_c, and an embedding row times W_c is that
row of E_c W_c^T: each categorical column becomes one Gather of a precomputed table, exactly
(float64 products, cast back). ``center`` is the centering ``fold.py`` keeps as a Sub where
folding its shift would cancel: it stays a Sub on the numerics; beyond them (zero after
training, which passes indicators, one-hot and embeddings unscaled) it folds into the bias,
``b' = b - W[:, F:] center[F:]``, over inputs bounded by 0/1 or an embedding's scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bnmodel.model import Encode

from .fold import Center, FoldError

__all__ = ["FirstLayer", "first_layer", "gemm_weight", "split_first_layer"]


@dataclass(frozen=True)
class FirstLayer:
    """The first Linear by input block (see the module docstring), parameter dtype."""

    dense: torch.Tensor  # (H, F + K) numerics then indicators
    bias: torch.Tensor  # (H,)
    tables: list[torch.Tensor]  # per categorical column (S_c, H)
    center: torch.Tensor | None  # (F,) kept centering of the numerics, or None


def split_first_layer(
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_dense: int,
    category_sizes: Sequence[int],
    embeddings: Sequence[torch.Tensor] | None = None,
    center: torch.Tensor | None = None,
    num_numeric: int | None = None,
) -> FirstLayer:
    """W (H, D) and b (H,) of the first Linear -> dense columns and one table per category.

    ``embeddings``: each column's (S_c, E) weight, or None for one-hot blocks of S_c columns.
    ``center`` (D,): a kept centering; a Sub on the ``num_numeric`` columns, the bias beyond.
    """
    w = weight.detach().double()
    b = bias.detach().double()
    widths = [
        size if embeddings is None else embeddings[i].shape[1]
        for i, size in enumerate(category_sizes)
    ]
    if num_dense + sum(widths) != w.shape[1]:
        raise FoldError(
            f"first Linear has {w.shape[1]} inputs; the encoder gives {num_dense} dense + "
            f"{sum(widths)} categorical = {num_dense + sum(widths)}"
        )
    tables, col = [], num_dense
    for i, width in enumerate(widths):
        block = w[:, col : col + width]  # (H, S_c) or (H, E)
        table = block.T if embeddings is None else embeddings[i].detach().double() @ block.T
        tables.append(table.to(weight.dtype).contiguous())
        col += width
    kept = None
    if center is not None:
        numeric = num_dense if num_numeric is None else num_numeric
        b = b - w[:, numeric:] @ center[numeric:].detach().double()
        kept = center[:numeric].detach().clone()
    return FirstLayer(w[:, :num_dense].to(weight.dtype), b.to(bias.dtype), tables, kept)


def gemm_weight(split: FirstLayer, columns: Sequence[int]) -> torch.Tensor:
    """(H, F + K + sum S_c) the dense columns, then the tables of ``columns`` transposed: the
    Gemm weight when those categorical columns come in one-hot (one-hot x T_c^T = T_c[slot])."""
    return torch.cat([split.dense, *(split.tables[i].T for i in columns)], dim=1)


def first_layer(
    layers: Sequence[tuple[str, nn.Module]],
) -> tuple[Encode, FirstLayer, int] | None:
    """For folded layers ``[Encode, (Center), Linear, ...]``: the encoder, the split first
    Linear and how many layers they cover; None when the layers do not start that way (the
    unfolded reference, or an INT8 source that keeps the standardization)."""
    if not layers or not isinstance(layers[0][1], Encode):
        return None
    encode = layers[0][1]
    index, center = 1, None
    if index < len(layers) and isinstance(layers[index][1], Center):
        center, index = layers[index][1].mean, index + 1
    if index >= len(layers) or not isinstance(layers[index][1], nn.Linear):
        return None
    linear = layers[index][1]
    embeddings = None
    if encode.embeddings is not None:
        embeddings = [e.weight for e in encode.embeddings]
    num_dense = encode.num_numeric + encode.indicators.numel()
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    split = split_first_layer(
        linear.weight,
        bias,
        num_dense,
        encode.category_sizes,
        embeddings,
        center,
        encode.num_numeric,
    )
    return encode, split, index + 1
