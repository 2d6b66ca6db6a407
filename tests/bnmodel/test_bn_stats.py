"""Algorithm 2: BN population statistics recomputed over the training set."""

from __future__ import annotations

import torch
from torch import nn

from bnmodel.bn_stats import recompute_bn_stats
from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP


def test_one_full_batch_gives_exact_population_stats() -> None:
    torch.manual_seed(0)
    model = BNMLP(
        ModelConfig(5, (7,), 2, standardize_input=False, bn_placement="pre", dropout=0.2)
    ).eval()
    x = torch.randn(64, 5)
    params = [p.clone() for p in model.parameters()]
    used = recompute_bn_stats(model, x, batch_size=64)
    bn = model.net[1]
    with torch.no_grad():
        z = model.net[0](x)  # (64, 7) the first Linear's output: what BN normalizes
    assert used == 1
    torch.testing.assert_close(bn.running_mean, z.mean(0))
    torch.testing.assert_close(bn.running_var, z.var(0, unbiased=True))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert not model.training and bn.momentum == 0.1  # flags and momentum restored


def test_equal_batches_average_the_batch_statistics() -> None:
    torch.manual_seed(1)
    model = BNMLP(ModelConfig(3, (4,), 2, standardize_input=False, bn_placement="post"))
    x = torch.randn(50, 3)
    assert recompute_bn_stats(model, x, batch_size=16, seed=3) == 3  # 50 // 16, tail dropped
    assert model.training
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = model.net[1](model.net[0](x[order[:48]]))  # Linear -> act, the BN input
    batch_means = h.view(3, 16, 4).mean(1)
    torch.testing.assert_close(bn.running_mean, batch_means.mean(0))


def test_model_without_bn_is_untouched() -> None:
    model = BNMLP(ModelConfig(3, (4,), 2, standardize_input=False, bn_placement="none"))
    assert recompute_bn_stats(model, torch.randn(10, 3), batch_size=4) == 0
