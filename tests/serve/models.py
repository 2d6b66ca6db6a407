"""Test ONNX models following the bnmodel contract, and Triton-layout repositories for them.

Built with onnx.helper (tests may import onnx; the server never does).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 8
CLASSES = 3
LABELS = ["setosa", "versicolor", "virginica"]
FEATURE_NAMES = [f"f{i}" for i in range(FEATURES)]


def _tensor(name: str, elem: int, width: int):
    return helper.make_tensor_value_info(name, elem, ["batch", width])


def mlp_model(
    task: str = "classification",
    fp16: bool = False,
    seed: int = 0,
    hidden: int = 16,
    repeat: int = 0,
) -> onnx.ModelProto:
    """features [batch, 8] -> Gemm -> Relu -> Gemm -> logits [batch, 3] + softmax probabilities,
    or predictions [batch, 2] for a regressor. ``repeat`` adds that many [hidden, hidden]
    MatMul+Tanh layers (a slow model for drain tests)."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    out_width = CLASSES if task == "classification" else 2
    init = {
        "w1": rng.normal(size=(FEATURES, hidden)) / np.sqrt(FEATURES),
        "b1": rng.normal(size=hidden) * 0.1,
        "wh": rng.normal(size=(hidden, hidden)) / np.sqrt(hidden),
        "w2": rng.normal(size=(hidden, out_width)) / np.sqrt(hidden),
        "b2": rng.normal(size=out_width) * 0.1,
    }
    initializers = [numpy_helper.from_array(v.astype(dtype), k) for k, v in init.items()]
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["a0"]),
    ]
    last = "a0"
    for i in range(repeat):
        nodes += [
            helper.make_node("MatMul", [last, "wh"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]),
        ]
        last = f"t{i}"
    if task == "classification":
        nodes += [
            helper.make_node("Gemm", [last, "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ]
        outputs = [_tensor("logits", elem, CLASSES), _tensor("probabilities", elem, CLASSES)]
    else:
        nodes.append(helper.make_node("Gemm", [last, "w2", "b2"], ["predictions"]))
        outputs = [_tensor("predictions", elem, 2)]
    graph = helper.make_graph(
        nodes, "mlp", [_tensor("features", elem, FEATURES)], outputs, initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {
            "bnmodel.task": task,
            "bnmodel.feature_names": json.dumps(FEATURE_NAMES),
            **({"bnmodel.class_labels": json.dumps(LABELS)} if task == "classification" else {}),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _string_parameter(key: str, value: str) -> str:
    return f"parameters {{ key: \"{key}\" value {{ string_value: '{value}' }} }}"


def config_text(
    name: str,
    task: str = "classification",
    fp16: bool = False,
    max_batch_size: int = 64,
    extra: str = "",
) -> str:
    """config.pbtxt as `bnmodel export --repository` writes it."""
    dtype = "TYPE_FP16" if fp16 else "TYPE_FP32"
    outputs = (
        [("logits", CLASSES), ("probabilities", CLASSES)]
        if task == "classification"
        else [("predictions", 2)]
    )
    parts = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f'input [{{ name: "features" data_type: {dtype} dims: [ {FEATURES} ] }}]',
        "output ["
        + ", ".join(f'{{ name: "{o}" data_type: {dtype} dims: [ {w} ] }}' for o, w in outputs)
        + "]",
        "dynamic_batching { max_queue_delay_microseconds: 100 }",
        "version_policy: { latest: { num_versions: 1 } }",
        f'parameters {{ key: "task" value {{ string_value: "{task}" }} }}',
        _string_parameter("feature_names", json.dumps(FEATURE_NAMES)),
    ]
    if task == "classification":
        parts.append(_string_parameter("class_labels", json.dumps(LABELS)))
    return "\n".join(parts + [extra]) + "\n"


def write_model(
    repo: Path, name: str, model: onnx.ModelProto, config: str, version: int = 1
) -> Path:
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    path = folder / str(version) / "model.onnx"
    onnx.save(model, path)
    return path


def fixed_model(seed: int = 3) -> onnx.ModelProto:
    """A model without a batch axis: features [8] -> logits [3] and probabilities [3]."""
    w = np.random.default_rng(seed).normal(size=(FEATURES, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=0),
        ],
        "fixed",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [FEATURES])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [CLASSES]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [CLASSES]),
        ],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, {"bnmodel.class_labels": json.dumps(LABELS)})
    return model


def fixed_config(name: str) -> str:
    return "\n".join(
        [
            f'name: "{name}"',
            "max_batch_size: 0",
            f'input [{{ name: "features" data_type: TYPE_FP32 dims: [ {FEATURES} ] }}]',
            f'output [{{ name: "logits" data_type: TYPE_FP32 dims: [ {CLASSES} ] }},',
            f'         {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {CLASSES} ] }}]',
            _string_parameter("class_labels", json.dumps(LABELS)),
        ]
    )


def failing_model() -> onnx.ModelProto:
    """Loads, but every run fails: 8 features per row cannot be reshaped into rows of 5."""
    shape = numpy_helper.from_array(np.array([-1, 5], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["features", "shape"], ["y"])],
        "failing",
        [_tensor("features", TensorProto.FLOAT, FEATURES)],
        [_tensor("y", TensorProto.FLOAT, 5)],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model
