"""BNMLP layout: output shapes, layer order per BN placement, and the bias rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP, Standardize


@pytest.mark.parametrize("placement", ["pre", "post", "none"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid", "tanh"])
def test_output_shape(placement: str, activation: str) -> None:
    model = BNMLP(
        ModelConfig(
            7, (5, 4), 3, standardize_input=False, activation=activation, bn_placement=placement
        )
    )
    assert model(torch.randn(6, 7)).shape == (6, 3)


@pytest.mark.parametrize("placement", ["pre", "post", "none"])
def test_linear_has_bias_exactly_when_no_bn_follows(placement: str) -> None:
    model = BNMLP(
        ModelConfig(4, (8, 8, 8), 2, standardize_input=False, bn_placement=placement, dropout=0.1)
    )
    layers = list(model.net)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            followed_by_bn = i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d)
            assert (layer.bias is None) == followed_by_bn, f"layer {i}: {layer}"


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ("pre", [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]),
        ("post", [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]),
        ("none", [nn.Linear, nn.ReLU, nn.Linear]),
    ],
)
def test_layer_order(placement: str, expected: list[type]) -> None:
    model = BNMLP(ModelConfig(4, (8,), 2, standardize_input=False, bn_placement=placement))
    assert [type(m) for m in model.net] == expected


def test_bn_settings_and_standardize_buffers() -> None:
    config = ModelConfig(3, (6,), 2, bn_eps=1e-3, bn_momentum=None, standardize_input=True)
    model = BNMLP(config)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert bn.eps == 1e-3 and bn.momentum is None
    assert isinstance(model.net[0], Standardize)
    assert {"net.0.mean", "net.0.std"} <= set(model.state_dict())
