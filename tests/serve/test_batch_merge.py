"""The pure merge/split of dynamic batching: every request gets exactly its own rows back."""

from __future__ import annotations

import numpy as np
import pytest
from bnmodel.serve.batch_merge import BatchSplitError, merge_inputs, split_outputs


def _requests(rows: list[int]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {"a": rng.normal(size=(n, 3)).astype(np.float32), "b": rng.integers(0, 9, size=(n, 2))}
        for n in rows
    ]


def test_merge_concatenates_in_order_and_split_returns_each_requests_rows():
    requests = _requests([1, 4, 2, 7])
    merged, offsets = merge_inputs(requests)
    assert offsets == [0, 1, 5, 7, 14]
    assert merged["a"].shape == (14, 3) and merged["b"].shape == (14, 2)
    # A row-wise "model": each output row depends on its input row only.
    outputs = {"y": merged["a"] * 2 + merged["b"][:, :1], "z": merged["b"].sum(axis=1)}
    parts = split_outputs(outputs, offsets)
    assert len(parts) == len(requests)
    for request, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], request["a"] * 2 + request["b"][:, :1])
        np.testing.assert_array_equal(part["z"], request["b"].sum(axis=1))


def test_one_request_is_passed_through_without_copies():
    (request,) = _requests([5])
    merged, offsets = merge_inputs([request])
    assert merged["a"] is request["a"] and offsets == [0, 5]
    outputs = {"y": np.zeros((5, 1))}
    assert split_outputs(outputs, offsets)[0]["y"] is outputs["y"]


@pytest.mark.parametrize("shape", [(13, 2), (15, 2), ()])
def test_split_refuses_outputs_that_are_not_the_batch_rows(shape):
    with pytest.raises(BatchSplitError, match="expected first dimension 14"):
        split_outputs({"y": np.zeros(shape)}, [0, 7, 14])
