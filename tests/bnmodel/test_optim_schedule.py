"""Parameter groups (no weight decay on BN or biases) and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP
from bnmodel.optim import build_optimizer, lr_at, param_groups


def test_weight_decay_only_on_weight_matrices() -> None:
    model = BNMLP(ModelConfig(4, (8, 8), 3, standardize_input=False, bn_placement="pre"))
    decay, no_decay = param_groups(model, 0.1)
    bn_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm1d)
        for p in m.parameters()
    }
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert bn_params <= {id(p) for p in no_decay["params"]}
    assert id(model.net[-1].bias) in {id(p) for p in no_decay["params"]}
    total = sum(len(g["params"]) for g in (decay, no_decay))
    assert total == len(list(model.parameters()))


def test_optimizer_choices_and_error() -> None:
    model = BNMLP(ModelConfig(4, (8,), 3, standardize_input=False))
    cpu = torch.device("cpu")
    assert isinstance(
        build_optimizer("adamw", param_groups(model, 0), 1e-3, device=cpu), torch.optim.AdamW
    )
    assert isinstance(
        build_optimizer("sgd", param_groups(model, 0), 1e-3, device=cpu), torch.optim.SGD
    )
    with pytest.raises(ValueError, match="--optimizer"):
        build_optimizer("lion", param_groups(model, 0), 1e-3, device=cpu)


def test_cosine_warmup_then_decay_to_zero() -> None:
    lrs = [lr_at(s, 100, 1.0, "cosine", warmup=0.1) for s in range(101)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert max(lrs) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_onecycle_peaks_at_30_percent() -> None:
    lrs = [lr_at(s, 1000, 2.0, "onecycle") for s in range(1000)]
    assert lrs[0] == pytest.approx(2.0 / 25)
    assert max(range(1000), key=lrs.__getitem__) == 300
    assert lrs[-1] < 2.0 / 1000


def test_constant_and_unknown() -> None:
    assert lr_at(7, 10, 0.5, "constant") == 0.5
    with pytest.raises(ValueError, match="--schedule"):
        lr_at(0, 10, 0.5, "linear")
    assert math.isfinite(lr_at(0, 0, 0.5, "cosine"))
