"""ONNX writing: the graph is built node by node from the (folded) layers with ``onnx.helper``.

Why not ``torch.onnx.export``: the dynamo exporter takes ~4 s per model here (torch 2.13) and
decides itself which BNs to fold; building the graph from the layers takes milliseconds and
gives exact control: Linear -> Gemm, each activation -> its operator, BN -> BatchNormalization
(only in the unfolded reference graph), the standardization -> Sub + Div.

Contract (serve and the client rely on it): input "features" [batch, in_features]; classifier
outputs "logits" and "probabilities" (softmax over classes), regressor output "predictions";
the batch axis is the symbolic dimension "batch"; FP32, or FP16 for I/O and weights with fp16.

Raw-row models (an ``Encode`` layer first, bnmodel/encoding.py) take "features" with NaN for a
missing cell (present when there are numeric columns) and one string input [batch, 1] per
categorical column, named as the column: the graph imputes (IsNaN -> Where), adds missing
indicators (Cast of IsNaN), maps each string to its slot (ai.onnx.ml LabelEncoder, default the
"other" slot) and, folded, takes the slot's first-layer column (``encoders.py``): one-hot into
the first Gemm for a small vocabulary, a Gather of the folded table for a large one.
Why these inputs: one float tensor keeps the numeric path as fast as today's models, NaN is
the natural "missing" of a float, and a string per categorical column is what a client has
(no vocabulary in the client, no training/serving skew).

A date column is one DOUBLE input [batch, 1] named as the column: seconds since 1970-01-01
UTC, NaN for missing. float64 because float32 holds today's epoch seconds only to 128 s. The
graph computes its five features (bnmodel/dates.py: days since the training origin, hour,
weekday, month, day of month) with the same float64 steps training used, casts them to the
model's float type and appends them to the numeric columns, which then impute and fold as any.
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

from bnmodel import dates as date_math
from bnmodel.files import atomic_write_bytes
from bnmodel.model import Encode, Standardize, TargetScale

from .encoders import FirstLayer, first_layer, gemm_weight
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
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder with keys_strings / values_int64s
# A folded categorical column with at most this many slots goes one-hot into the first Gemm
# (its table as extra weight columns); a larger one is a Gather of its table plus an Add.
# Both are the same product (one-hot x W); which is faster depends on the slots: a Gather and
# an Add each move a (batch, H) tensor, a one-hot column costs one more Gemm input. Measured
# (ORT CPU, batch 65536, H 256, 3 columns, 1 thread): 11 slots each, one-hot 213 ms against
# Gather 252 ms (all-numeric model of 9 columns: 180 ms); 61 slots each, one-hot 241 ms against
# Gather 185 ms (all-numeric: 141 ms). Between the two: 24.
ONE_HOT_MAX_SLOTS = 24


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
        self.elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []

    def const(self, name: str, value: torch.Tensor | np.ndarray | float) -> str:
        array = value.detach().cpu().double().numpy() if torch.is_tensor(value) else value
        self.initializers.append(numpy_helper.from_array(np.asarray(array, self.dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def double(self, name: str, value: float) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float64), name))
        return name


class _GraphArithmetic:
    """``bnmodel.dates.Arithmetic`` as float64 ONNX nodes: the date features in the graph."""

    def __init__(self, g: _Graph, prefix: str) -> None:
        self.g, self.prefix, self.count = g, prefix, 0

    def _name(self, op: str) -> str:
        self.count += 1
        return f"{self.prefix}/{op}_{self.count}"

    def _value(self, b: str | float) -> str:
        return b if isinstance(b, str) else self.g.double(self._name("c"), b)

    def _binary(self, op: str, a: str, b: str | float) -> str:
        return self.g.op(op, [a, self._value(b)], self._name(op))

    def add(self, a: str, b: str | float) -> str:
        return self._binary("Add", a, b)

    def sub(self, a: str, b: str | float) -> str:
        return self._binary("Sub", a, b)

    def mul(self, a: str, b: str | float) -> str:
        return self._binary("Mul", a, b)

    def div(self, a: str, b: str | float) -> str:
        return self._binary("Div", a, b)

    def floor(self, a: str) -> str:
        return self.g.op("Floor", [a], self._name("Floor"))

    def below(self, a: str, limit: float, yes: str, no: str) -> str:
        less = self.g.op("Less", [a, self._value(limit)], self._name("Less"))
        return self.g.op("Where", [less, yes, no], self._name("Where"))


def _emit_dates(g: _Graph, dates: Sequence[tuple[str, float]], numeric: str | None) -> str:
    """[batch, F + 5 D]: the "features" input (when present), then each date input's features
    cast to the model's float type."""
    parts = [] if numeric is None else [numeric]
    for column, origin in dates:
        ops = _GraphArithmetic(g, f"dates/{column}")
        values = date_math.date_parts(column, float(origin), ops)
        joined = g.op("Concat", values, f"dates/{column}/Concat", axis=1)  # [batch, 5] double
        parts.append(g.op("Cast", [joined], f"dates/{column}/features", to=g.elem))
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, "dates/numeric", axis=1)


class _Raw:
    """The raw-row front of a graph: imputed numerics, indicators, and per categorical column
    its slot indices (batch,), each emitted once."""

    def __init__(
        self,
        g: _Graph,
        encode: Encode,
        categorical: Sequence[tuple[str, Sequence[str]]],
        dates: Sequence[tuple[str, float]] = (),
    ):
        if len(categorical) != len(encode.category_sizes):
            raise ExportError(
                f"the model has {len(encode.category_sizes)} categorical inputs, the export "
                f"was given vocabularies for {len(categorical)}"
            )
        self.g, self.encode, self.categorical = g, encode, list(categorical)
        self.dates = list(dates)
        self.num_features = encode.num_numeric - len(date_math.DATE_PARTS) * len(self.dates)
        if self.num_features < 0:
            raise ExportError(
                f"the model has {encode.num_numeric} numeric inputs, fewer than the "
                f"{len(self.dates)} date column(s) give"
            )
        self.numeric: str | None = None
        self.indicators: str | None = None
        if encode.num_numeric:
            raw = INPUT_NAME
            if self.dates:
                raw = _emit_dates(g, self.dates, INPUT_NAME if self.num_features else None)
            missing = g.op("IsNaN", [raw], "encode/IsNaN")
            impute = g.const("encode.impute", encode.impute)
            self.numeric = g.op("Where", [missing, impute, raw], "encode/impute")
            if encode.indicators.numel():
                picked = g.op(
                    "Gather",
                    [missing, g.ints("encode.indicators", encode.indicators.tolist())],
                    "encode/missing",
                    axis=1,
                )
                self.indicators = g.op("Cast", [picked], "encode/indicators", to=g.elem)

    def slots(self, i: int) -> str:
        """(batch,) int64 slot of categorical column i; "other" for anything not in training."""
        name, vocab = self.categorical[i]
        if len(vocab) + 1 != self.encode.category_sizes[i]:
            raise ExportError(
                f"categorical column {name!r}: vocabulary of {len(vocab)} values, the model "
                f"has {self.encode.category_sizes[i]} slots (vocabulary + other)"
            )
        index = self.g.op(
            "LabelEncoder",
            [name],
            f"encode/{name}/LabelEncoder",
            domain=ML_DOMAIN,
            keys_strings=list(vocab),
            values_int64s=list(range(len(vocab))),
            default_int64=len(vocab),
        )  # (batch, 1)
        axes = self.g.ints(f"encode.{name}.axes", [1])
        return self.g.op("Squeeze", [index, axes], f"encode/{name}/slot")

    def inputs(self, elem: int) -> list[onnx.ValueInfoProto]:
        values = []
        if self.num_features:
            values.append(
                helper.make_tensor_value_info(INPUT_NAME, elem, [BATCH_AXIS, self.num_features])
            )
        values += [
            helper.make_tensor_value_info(name, TensorProto.STRING, [BATCH_AXIS, 1])
            for name, _ in self.categorical
        ]
        values += [
            helper.make_tensor_value_info(name, TensorProto.DOUBLE, [BATCH_AXIS, 1])
            for name, _ in self.dates
        ]
        return values


def _emit_encode(g: _Graph, raw: _Raw) -> str:
    """Unfolded: the Encode layer's output [batch, D] (one-hot as rows of an identity matrix,
    embeddings as rows of their weight), for the layers after it to run as they are."""
    parts = [p for p in (raw.numeric, raw.indicators) if p is not None]
    embeddings = raw.encode.embeddings
    for i, size in enumerate(raw.encode.category_sizes):
        name = raw.categorical[i][0]
        table = torch.eye(size) if embeddings is None else embeddings[i].weight
        parts.append(
            g.op("Gather", [g.const(f"encode.{name}.table", table), raw.slots(i)], f"encode/{name}")
        )
    if len(parts) == 1:
        return parts[0]
    return g.op("Concat", parts, "encode/Concat", axis=1)


def _emit_first_layer(g: _Graph, raw: _Raw, name: str, split: FirstLayer) -> str:
    """Folded: one Gemm over [numerics - center, indicators, one-hot of the small-vocabulary
    columns] with W's matching columns, plus one Gather of W's columns per large-vocabulary
    column (``ONE_HOT_MAX_SLOTS`` says why the two)."""
    parts = []
    if raw.numeric is not None:
        dense = raw.numeric
        if split.center is not None:
            dense = g.op("Sub", [dense, g.const(f"{name}.center", split.center)], f"{name}/Sub")
        parts = [dense] + ([raw.indicators] if raw.indicators is not None else [])
    one_hot = [i for i, t in enumerate(split.tables) if t.shape[0] <= ONE_HOT_MAX_SLOTS]
    for i in one_hot:
        column, slots = raw.categorical[i][0], split.tables[i].shape[0]
        on_off = g.const(f"{name}.{column}.on_off", np.array([0.0, 1.0]))
        depth = g.ints(f"{name}.{column}.depth", [slots])
        parts.append(
            g.op("OneHot", [raw.slots(i), depth, on_off], f"{name}/{column}/OneHot", axis=-1)
        )  # (batch, slots)
    bias = g.const(f"{name}.bias", split.bias)
    value = None
    if parts:
        x = parts[0] if len(parts) == 1 else g.op("Concat", parts, f"{name}/inputs", axis=1)
        weight = g.const(f"{name}.weight", gemm_weight(split, one_hot))
        value = g.op("Gemm", [x, weight, bias], f"{name}/Gemm", transB=1)
    for i, table in enumerate(split.tables):
        if i in one_hot:
            continue
        column = raw.categorical[i][0]
        rows = g.op(
            "Gather", [g.const(f"{name}.{column}.table", table), raw.slots(i)], f"{name}/{column}"
        )  # (batch, H): W's column for the slot (one-hot x W), or the embedding through W
        if value is None:
            value = g.op("Add", [rows, bias], f"{name}/bias")
        else:
            value = g.op("Add", [value, rows], f"{name}/{column}/Add")
    return value


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
    categorical: Sequence[tuple[str, Sequence[str]]] = (),
    dates: Sequence[tuple[str, float]] = (),
) -> onnx.ModelProto:
    """The ONNX model of ``layers`` (named eval-mode modules run in order) under the contract.

    ``categorical``: (column, vocabulary) per categorical input of a raw-row model, in order;
    ``dates``: (column, origin day) per date input, in order (its features are the last of
    the ``in_features`` numeric columns).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    outputs = output_names(task)
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    g = _Graph(np.dtype(np.float16 if fp16 else np.float32))
    value, inputs = INPUT_NAME, None
    layers = list(layers)
    if dates and not (layers and isinstance(layers[0][1], Encode)):
        raise ExportError("a model with date columns starts with an Encode layer")
    if layers and isinstance(layers[0][1], Encode):
        raw = _Raw(g, layers[0][1], categorical, dates)
        inputs = raw.inputs(elem)
        folded = first_layer(layers)
        if folded is not None:
            _, split, covered = folded
            value = _emit_first_layer(g, raw, layers[covered - 1][0], split)
        else:
            value, covered = _emit_encode(g, raw), 1
        layers = layers[covered:]
    for name, module in layers:
        value = _emit(g, name, module, value, opset)
    if value == INPUT_NAME:  # no node at all: the outputs still need a producer
        value = g.op("Identity", [value], "output/Identity")
    # The last layer's output is the first contract output: rename it rather than add an Identity.
    g.nodes[-1].output[0] = outputs[0]
    if task == "classification":
        g.op("Softmax", [outputs[0]], outputs[1], axis=-1)
    width = _output_width(layers)
    if inputs is None:
        inputs = [helper.make_tensor_value_info(INPUT_NAME, elem, [BATCH_AXIS, in_features])]
    graph = helper.make_graph(
        g.nodes,
        "bnmodel",
        inputs,
        [helper.make_tensor_value_info(n, elem, [BATCH_AXIS, width]) for n in outputs],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    if any(node.domain == ML_DOMAIN for node in g.nodes):
        opsets.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
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
