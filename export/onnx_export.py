"""ONNX writing: the graph is built node by node from the (folded) layers with ``onnx.helper``.

Why not ``torch.onnx.export``: the dynamo exporter takes ~4 s per model here (torch 2.13) and
decides itself which BNs to fold; building the graph from the layers takes milliseconds and
gives exact control: Linear -> Gemm, each activation -> its operator, BN -> BatchNormalization
(only in the unfolded reference graph), the standardization -> Sub + Div.

Contract (serve and the client rely on it): input "features" [batch, in_features]; classifier
outputs "logits" and "probabilities" (softmax over classes), regressor output "predictions";
the batch axis is the symbolic dimension "batch"; FP32, or FP16 for I/O and weights with fp16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bnmodel.files import atomic_write_bytes
from bnmodel.model import Standardize, TargetScale

from .fold import Center

__all__ = [
    "BATCH_AXIS",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MAX_OPSET",
    "MIN_OPSET",
    "ExportError",
    "build_onnx",
    "check_onnx",
    "output_names",
    "save_onnx",
]

INPUT_NAME = "features"
BATCH_AXIS = "batch"
# 20 is the first opset with a Gelu operator; older opsets get GELU as Erf arithmetic.
DEFAULT_OPSET = 20
MIN_OPSET = 13  # Softmax over one axis (not a flattened 2-D view) from 13 on
MAX_OPSET = 23  # the newest opset onnxruntime 1.31 implements for every operator used here
_ACTIVATIONS = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh"}


class ExportError(ValueError):
    """A model cannot be written as ONNX under the contract (unknown layer, bad opset, bad axis)."""


def output_names(task: str) -> tuple[str, ...]:
    if task == "classification":
        return ("logits", "probabilities")
    if task == "regression":
        return ("predictions",)
    raise ExportError(f"task must be 'classification' or 'regression', got {task!r}")


class _Graph:
    """Nodes and initializers collected in order; every value gets a unique name."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []

    def const(self, name: str, value: torch.Tensor | np.ndarray | float) -> str:
        array = value.detach().cpu().double().numpy() if torch.is_tensor(value) else value
        self.initializers.append(numpy_helper.from_array(np.asarray(array, self.dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name


def _emit_gelu(g: _Graph, name: str, module: nn.GELU, x: str, opset: int) -> str:
    if opset >= 20:
        return g.op("Gelu", [x], f"{name}/Gelu", approximate=module.approximate)
    if module.approximate != "none":
        raise ExportError(f"{name}: GELU(approximate='tanh') needs opset >= 20, got {opset}")
    # 0.5 * x * (1 + erf(x / sqrt(2)))
    erf = g.op(
        "Erf",
        [g.op("Mul", [x, g.const(f"{name}.rsqrt2", 1 / math.sqrt(2))], f"{name}/s")],
        f"{name}/Erf",
    )
    one_plus = g.op("Add", [erf, g.const(f"{name}.one", 1.0)], f"{name}/Add")
    half_x = g.op("Mul", [x, g.const(f"{name}.half", 0.5)], f"{name}/half")
    return g.op("Mul", [half_x, one_plus], f"{name}/Gelu")


def _emit_bn(g: _Graph, name: str, bn: nn.BatchNorm1d, x: str) -> str:
    gamma = torch.ones(bn.num_features) if bn.weight is None else bn.weight
    beta = torch.zeros(bn.num_features) if bn.bias is None else bn.bias
    inputs = [
        x,
        g.const(f"{name}.weight", gamma),
        g.const(f"{name}.bias", beta),
        g.const(f"{name}.running_mean", bn.running_mean),
        g.const(f"{name}.running_var", bn.running_var),
    ]
    return g.op("BatchNormalization", inputs, f"{name}/BatchNormalization", epsilon=bn.eps)


def _emit(g: _Graph, name: str, module: nn.Module, x: str, opset: int) -> str:
    """Append the nodes of one layer; returns the name of its output value (batch, features)."""
    if isinstance(module, nn.Linear):
        inputs = [x, g.const(f"{name}.weight", module.weight)]  # weight (out, in): transB
        if module.bias is not None:
            inputs.append(g.const(f"{name}.bias", module.bias))
        return g.op("Gemm", inputs, f"{name}/Gemm", transB=1)
    if isinstance(module, nn.BatchNorm1d):
        return _emit_bn(g, name, module, x)
    if isinstance(module, Center):
        return g.op("Sub", [x, g.const(f"{name}.mean", module.mean)], f"{name}/Sub")
    if isinstance(module, Standardize):
        centered = g.op("Sub", [x, g.const(f"{name}.mean", module.mean)], f"{name}/Sub")
        return g.op("Div", [centered, g.const(f"{name}.std", module.std)], f"{name}/Div")
    if isinstance(module, TargetScale):  # only in the unfolded reference graph
        scaled = g.op("Mul", [x, g.const(f"{name}.std", module.std)], f"{name}/Mul")
        return g.op("Add", [scaled, g.const(f"{name}.mean", module.mean)], f"{name}/Add")
    if isinstance(module, nn.GELU):
        return _emit_gelu(g, name, module, x, opset)
    if type(module) in _ACTIVATIONS:
        op_type = _ACTIVATIONS[type(module)]
        return g.op(op_type, [x], f"{name}/{op_type}")
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return x  # identity in eval mode
    raise ExportError(
        f"layer {name} ({type(module).__name__}) has no ONNX mapping; supported: "
        "Linear, BatchNorm1d, Standardize, TargetScale, ReLU, GELU, Sigmoid, Tanh, Dropout"
    )


def build_onnx(
    layers: Sequence[tuple[str, nn.Module]],
    *,
    task: str,
    in_features: int,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The ONNX model of ``layers`` (named eval-mode modules run in order) under the contract."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    outputs = output_names(task)
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    g = _Graph(np.dtype(np.float16 if fp16 else np.float32))
    value = INPUT_NAME
    for name, module in layers:
        value = _emit(g, name, module, value, opset)
    if value == INPUT_NAME:  # no node at all: the outputs still need a producer
        value = g.op("Identity", [value], "output/Identity")
    # The last layer's output is the first contract output: rename it rather than add an Identity.
    g.nodes[-1].output[0] = outputs[0]
    if task == "classification":
        g.op("Softmax", [outputs[0]], outputs[1], axis=-1)
    width = _output_width(layers)
    graph = helper.make_graph(
        g.nodes,
        "bnmodel",
        [helper.make_tensor_value_info(INPUT_NAME, elem, [BATCH_AXIS, in_features])],
        [helper.make_tensor_value_info(n, elem, [BATCH_AXIS, width]) for n in outputs],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="bnmodel")
    # The oldest IR that carries this opset, so older runtimes still load the file.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, dict(metadata or {}))
    return model


def _output_width(layers: Sequence[tuple[str, nn.Module]]) -> int:
    for name, module in reversed(layers):
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, TargetScale):
            return module.mean.numel()
        if not isinstance(module, (nn.ReLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity)):
            raise ExportError(
                f"cannot tell the output width: last sized layer is {name} "
                f"({type(module).__name__}), expected a Linear"
            )
    raise ExportError("the model has no Linear layer")


def check_onnx(model: onnx.ModelProto) -> None:
    """onnx.checker full check, then: input and every output keep a symbolic batch axis."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX graph fails onnx.checker: {exc}") from exc
    graph = inferred.graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2 or dims[0].dim_param != BATCH_AXIS or dims[0].HasField("dim_value"):
            shape = [d.dim_param or d.dim_value for d in dims]
            raise ExportError(
                f"ONNX value {value.name!r} has shape {shape}; expected "
                f"[{BATCH_AXIS!r}, n] with a symbolic batch axis"
            )


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a model."""
    return atomic_write_bytes(path, model.SerializeToString())
