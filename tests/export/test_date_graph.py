"""The exported graph computes date features bit for bit as training did (bnmodel/dates.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from bnmodel.export.onnx_export import _emit_dates, _Graph
from onnx import TensorProto, helper

from bnmodel.dates import DATE_PARTS, date_features


def _graph(origins, fp16=False):
    g = _Graph(np.dtype(np.float16 if fp16 else np.float32))
    dates = [(f"d{i}", o) for i, o in enumerate(origins)]
    out = _emit_dates(g, dates, "features")
    g.op("Identity", [out], "y")
    elem = g.elem
    graph = helper.make_graph(
        g.nodes,
        "dates",
        [helper.make_tensor_value_info("features", elem, ["batch", 1])]
        + [helper.make_tensor_value_info(n, TensorProto.DOUBLE, ["batch", 1]) for n, _ in dates],
        [helper.make_tensor_value_info("y", elem, ["batch", 1 + len(DATE_PARTS) * len(dates)])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("optimize", [False, True], ids=["opt-off", "opt-on"])
def test_graph_features_equal_training_features_bit_for_bit(optimize):
    rng = np.random.default_rng(1)
    seconds = np.round(rng.uniform(-3e9, 5e9, (4096, 2)), 3)
    seconds[rng.random(seconds.shape) < 0.1] = np.nan
    seconds[:3, 0] = [0.0, -0.001, 951868799.999]
    origins = [19000.0, -365.0]
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    session = ort.InferenceSession(_graph(origins), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((4096, 1)).astype(np.float32)
    (got,) = session.run(None, {"features": x, "d0": seconds[:, :1], "d1": seconds[:, 1:]})
    np.testing.assert_array_equal(got[:, :1], x)
    np.testing.assert_array_equal(got[:, 1:], date_features(seconds, origins))  # NaN == NaN
