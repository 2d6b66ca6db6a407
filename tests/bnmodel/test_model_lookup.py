"""The one-hot first layer computed as a gather of W's columns equals the dense one-hot net."""

from __future__ import annotations

import pytest
import torch

from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP


def _raw_rows(n: int, sizes: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    numeric = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    numeric[::4, 1] = float("nan")  # missing cells: imputed, with an indicator
    codes = [torch.randint(0, s, (n, 1), generator=generator).double() for s in sizes]
    return torch.cat([numeric, *codes], dim=1)


@pytest.mark.parametrize("placement", ["pre", "post", "none"])
@pytest.mark.parametrize("standardize", [True, False])
def test_lookup_equals_dense_one_hot(placement: str, standardize: bool) -> None:
    sizes = (4, 7, 300)
    config = ModelConfig(
        in_features=3,
        hidden_sizes=(16, 8),
        out_features=3,
        bn_placement=placement,
        standardize_input=standardize,
        impute_missing=True,
        indicator_columns=(1,),
        category_sizes=sizes,
    )
    torch.manual_seed(0)
    model = BNMLP(config).double()
    if standardize:  # arbitrary statistics, one-hot columns included: the formula covers them
        width = config.first_width
        model.standardize.set_statistics(torch.randn(width), torch.rand(width) + 0.5)
    model.encode.impute.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = _raw_rows(64, sizes, torch.Generator().manual_seed(1))

    model.train()
    lookup = model(x)
    lookup.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    dense = model.net(x)  # the one-hot blocks built explicitly
    dense.sum().backward()
    torch.testing.assert_close(lookup, dense, rtol=1e-10, atol=1e-10)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-9)
    model.eval()
    torch.testing.assert_close(model(x), model.net(x), rtol=1e-10, atol=1e-10)


def test_embeddings_and_plain_numeric_models_run_the_net_as_built() -> None:
    config = ModelConfig(
        in_features=3, hidden_sizes=(8,), out_features=2, embedding_dim=4, category_sizes=(5,)
    )
    model = BNMLP(config).eval()
    x = _raw_rows(10, (5,), torch.Generator().manual_seed(2)).float()
    x[:, 1] = 0.0
    assert torch.equal(model(x), model.net(x))
