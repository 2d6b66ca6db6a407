"""Half-precision export: which folded weights leave the fp16 range.

Folding multiplies weights by gamma / sqrt(running_var + eps); a running variance near 1e-8
with eps 1e-10 scales them by 1e4 or more. fp16 tops out at 65504, and below its smallest
normal (6.1e-5) values keep fewer than 10 bits or become zero. An overflow is refused; a loss
of precision is reported so the caller sees it next to the fp16 tolerance check.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["FP16_MAX", "FP16_MIN_NORMAL", "MAX_TINY_SHARE", "Fp16RangeError", "fp16_range_warnings"]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2**-14 ~ 6.1e-5
# A trained layer always has a few near-zero weights (0.2% of a digits MLP's first layer); they
# matter little. A share above this means the folded scale shrank the whole tensor: report it.
MAX_TINY_SHARE = 0.01


class Fp16RangeError(ValueError):
    """A tensor holds values beyond the float16 range: it would become inf."""


def fp16_range_warnings(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Raise on values beyond +-65504; warn per tensor with many values below fp16 normals."""
    warnings: list[str] = []
    for name, tensor in tensors.items():
        values = tensor.detach().double().abs()
        if values.numel() == 0:
            continue
        largest = values.max().item()
        if largest > FP16_MAX:
            raise Fp16RangeError(
                f"{name}: largest magnitude {largest:.6g} exceeds the float16 maximum "
                f"{FP16_MAX:g}; export in float32 (drop --fp16), or check that layer's "
                "running_var (a tiny variance gives a huge folded scale)"
            )
        tiny = (values > 0) & (values < FP16_MIN_NORMAL)
        if tiny.sum() > MAX_TINY_SHARE * (values > 0).sum():
            warnings.append(
                f"{name}: {int(tiny.sum())} of {values.numel()} values are nonzero and below the "
                f"smallest normal float16 {FP16_MIN_NORMAL:.3g} (smallest "
                f"{values[tiny].min().item():.3g}) and lose precision or become 0"
            )
    return warnings
