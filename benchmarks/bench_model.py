"""The benchmark's model: one 64-256-256-256-10 MLP in ONNX, written as a Triton-layout repository.

Every server under test loads this same file. It follows the bnmodel ONNX contract (input "features"
FP32 [batch, 64]; outputs "logits" and "probabilities" [batch, 10]) so our server takes it as it is.
Built with onnx.helper so the benchmark does not depend on training or export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = [
    "IN_FEATURES",
    "LAYERS",
    "MODEL_NAME",
    "NUM_CLASSES",
    "OUTPUT_NAME",
    "build_mlp",
    "write_repository",
]

MODEL_NAME = "mlp"
LAYERS = (64, 256, 256, 256, 10)
IN_FEATURES = LAYERS[0]
NUM_CLASSES = LAYERS[-1]
# The one output every client asks for: all servers still compute both (ORT runs the whole graph).
OUTPUT_NAME = "probabilities"


def build_mlp(seed: int = 0):
    """Gemm+Relu hidden layers, a Gemm head ("logits") and a Softmax ("probabilities")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "features"
    for i, (fan_in, fan_out) in enumerate(zip(LAYERS[:-1], LAYERS[1:], strict=True)):
        w = (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(LAYERS) - 2
        gemm_out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"a{i}"]))
            prev = f"a{i}"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", IN_FEATURES])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", NUM_CLASSES]
            ),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by any onnxruntime >= 1.16, whatever the peers install
    helper.set_model_props(model, _metadata())
    onnx.checker.check_model(model)
    return model


def _metadata() -> dict[str, str]:
    return {
        "bnmodel.task": "classification",
        "bnmodel.feature_names": json.dumps([f"f{i}" for i in range(IN_FEATURES)]),
        "bnmodel.class_labels": json.dumps([f"c{i}" for i in range(NUM_CLASSES)]),
        "bnmodel.folded": "true",
    }


def _config_pbtxt(max_batch_size: int, max_queue_delay_us: int) -> str:
    meta = _metadata()
    # string_value holds JSON text, so json.dumps twice: once for the list, once to quote it
    params = "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(value)} }} }}\n'
        for key, value in (
            (k, meta["bnmodel." + k]) for k in ("task", "class_labels", "feature_names")
        )
    )
    outputs = "".join(
        f'output {{ name: "{name}" data_type: TYPE_FP32 dims: [ {NUM_CLASSES} ] }}\n'
        for name in ("logits", "probabilities")
    )
    return (
        f'name: "{MODEL_NAME}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f'input {{ name: "features" data_type: TYPE_FP32 dims: [ {IN_FEATURES} ] }}\n'
        f"{outputs}"
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
        f"{params}"
    )


def write_repository(root: Path, max_batch_size: int = 1024, max_queue_delay_us: int = 500) -> Path:
    """Write root/mlp/config.pbtxt and root/mlp/1/model.onnx; return the model.onnx path."""
    import onnx

    model_dir = root / MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    path = model_dir / "1" / "model.onnx"
    onnx.save(build_mlp(), str(path))
    (model_dir / "config.pbtxt").write_text(_config_pbtxt(max_batch_size, max_queue_delay_us))
    return path
