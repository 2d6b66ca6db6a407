"""The clients' one-input lookup behind `infer(model, array)` (column names of `bnmodel infer`:
tests/bnmodel/test_remote.py)."""

from __future__ import annotations

import pytest
from bnmodel.serve.client import only_input_name
from bnmodel.serve.errors import InvalidInputError


def test_a_one_input_models_input_is_looked_up_once_per_model_and_version():

    calls, cache = [], {}

    def lookup() -> list[str]:
        calls.append(1)
        return ["features"]

    for _ in range(3):
        assert only_input_name(cache, "m", "", lookup) == "features"
    assert only_input_name(cache, "m", "2", lookup) == "features"
    assert len(calls) == 2  # once for version "", once for "2"


def test_a_model_with_several_inputs_asks_for_a_dict():

    with pytest.raises(InvalidInputError, match="has inputs features, color: pass a dict"):
        only_input_name({}, "raw", "", lambda: ["features", "color"])
