"""Fold formulas against the modules they replace, and the model walk's guarantees."""

from __future__ import annotations

import copy

import pytest
import torch
from bnmodel.export.fold import (
    FoldError,
    fold_into_next,
    fold_model,
    fuse_conv_bn,
    fuse_linear_bn,
    standardize_affine,
)
from export_testlib import make_model
from torch import nn

from bnmodel.model import Standardize


def _bn(n: int, affine: bool = True, cls: type = nn.BatchNorm1d, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    bn = cls(n, affine=affine)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 5)
        bn.running_var.copy_(torch.rand(n, generator=gen) + 1e-3)
        if affine:
            bn.weight.copy_(torch.randn(n, generator=gen))  # negative gamma included
            bn.bias.copy_(torch.randn(n, generator=gen))
    return bn.eval()


def _float64(*modules: nn.Module) -> nn.Sequential:
    return copy.deepcopy(nn.Sequential(*modules)).double().eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_linear_then_bn_folds_into_linear(bias: bool, affine: bool) -> None:
    linear, bn = nn.Linear(5, 4, bias=bias), _bn(4, affine)
    fused = fuse_linear_bn(linear, bn)
    x = torch.randn(32, 5, dtype=torch.float64)
    expected = _float64(linear, bn)(x)
    assert fused.weight.dtype == torch.float32 and fused.bias is not None
    torch.testing.assert_close(fused.double()(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("affine", [True, False])
def test_bn_then_linear_folds_into_linear(affine: bool) -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), _bn(5, affine), nn.Linear(5, 2)).eval()
    folded, report = fold_model(model)
    assert [s.kind for s in report.steps] == ["bn->linear"]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    x = torch.randn(64, 3, dtype=torch.float64)
    torch.testing.assert_close(folded.double()(x), _float64(*model)(x), rtol=1e-6, atol=1e-6)


def test_standardization_folds_into_first_linear() -> None:
    mean, std = torch.randn(4) * 100, torch.rand(4) * 10 + 0.5
    linear = nn.Linear(4, 3)
    affine = standardize_affine(mean, std)
    weight, bias = fold_into_next(affine, linear.weight, linear.bias, centered=False)
    x = torch.randn(16, 4, dtype=torch.float64) * 10 + mean.double()
    expected = linear.double()((x - mean.double()) / std.double())
    torch.testing.assert_close(
        x @ weight.double().T + bias.double(), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("conv", "bn_cls", "shape"),
    [
        (nn.Conv1d(3, 6, 3, bias=False), nn.BatchNorm1d, (2, 3, 11)),
        (nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.BatchNorm2d, (2, 4, 7, 5)),
    ],
)
def test_conv_then_bn_folds_per_channel(conv: nn.Module, bn_cls: type, shape: tuple) -> None:
    bn = _bn(conv.out_channels, cls=bn_cls)
    fused = fuse_conv_bn(conv, bn)
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(fused.double()(x), _float64(conv, bn)(x), rtol=1e-6, atol=1e-6)
    folded, report = fold_model(nn.Sequential(conv, bn).eval())
    assert [s.kind for s in report.steps] == ["conv<-bn"]
    torch.testing.assert_close(folded.double()(x), _float64(conv, bn)(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("placement", ["pre", "post", "none"])
@pytest.mark.parametrize("standardize", [True, False])
def test_model_walk_leaves_no_batchnorm(placement: str, standardize: bool) -> None:
    model = make_model(bn_placement=placement, standardize_input=standardize, dropout=0.2)
    folded, report = fold_model(model)
    assert not any(
        isinstance(m, (nn.BatchNorm1d, Standardize, nn.Dropout)) for m in folded.modules()
    )
    assert report.left_in_place == []
    assert len(report.dropped) == len(model.config.hidden_sizes)
    x = torch.randn(128, 6, dtype=torch.float64) * 10
    torch.testing.assert_close(
        folded.double()(x), copy.deepcopy(model).double()(x), rtol=1e-6, atol=1e-6
    )


def test_model_walk_never_mutates_its_input() -> None:
    model = make_model(bn_placement="post")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_model(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_float64_model_stays_float64() -> None:
    model = make_model(bn_placement="pre").double()
    folded, _ = fold_model(model)
    assert all(p.dtype == torch.float64 for p in folded.parameters())


def test_training_mode_is_refused() -> None:
    with pytest.raises(FoldError, match="training mode"):
        fold_model(make_model().train())


def test_bn_without_running_statistics_is_refused() -> None:
    bn = nn.BatchNorm1d(4, track_running_stats=False)
    model = nn.Sequential(nn.Linear(3, 4), bn, nn.ReLU(), nn.Linear(4, 1)).eval()
    with pytest.raises(
        FoldError, match=r"^hidden layer 1 BN \(1\) \(BatchNorm1d\) has track_running_stats=False"
    ):
        fold_model(model)


def test_bn_with_nothing_foldable_is_left_in_place_and_reported() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _bn(4), nn.Tanh()).eval()
    folded, report = fold_model(model)
    assert [name for name, _ in report.left_in_place] == ["2"]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in folded.modules()) == 1
    x = torch.randn(8, 3)
    torch.testing.assert_close(folded(x), model(x))


def test_feature_count_mismatch_names_the_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), _bn(5)).eval()
    with pytest.raises(FoldError, match="cannot fold 1 into 0: 1 has 5 features, 0 has 4"):
        fold_model(model)
