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


# -- raw-row models: numeric columns with NaN for blanks, plus string columns ------------------

RAW_NUMERIC = ["age", "income", "score"]
RAW_VOCABULARIES = {"color": ["red", "green", "blue"], "size": ["S", "M", "L", "XL"]}
ML_OPSET = 3  # ai.onnx.ml: LabelEncoder 2 (keys_strings -> values_int64s), run by ORT


def raw_model(
    task: str = "classification",
    numeric: list[str] | None = None,
    vocabularies: dict[str, list[str]] | None = None,
    hidden: int = 16,
    layers: int = 1,
    classes: int = CLASSES,
    seed: int = 0,
    preprocessing: bool = False,
) -> onnx.ModelProto:
    """A raw-row model as export writes one (``preprocessing``: with the bnmodel.preprocessing
    metadata holding the vocabularies, as export writes it; else the contract has none).

    features FP32 [batch, F] (NaN: missing) and one string [batch, 1] input per categorical
    column -> first layer = MatMul(Where(IsNaN(x), means, x), W) + MatMul(Cast(IsNaN(x)), W_ind)
    + sum over columns of Gather(W_c, LabelEncoder(c)) (unseen and "" -> the "other" row)
    -> Relu -> ``layers - 1`` more [hidden, hidden] Gemm+Relu -> logits + probabilities, or
    predictions [batch, 2] for a regressor. ``numeric=[]`` leaves out ``features``.
    """
    numeric = RAW_NUMERIC if numeric is None else numeric
    vocabularies = RAW_VOCABULARIES if vocabularies is None else vocabularies
    rng = np.random.default_rng(seed)
    out_width = classes if task == "classification" else 2
    init = {"b1": rng.normal(size=hidden) * 0.1}
    nodes, terms, inputs = [], [], []
    if numeric:
        f = len(numeric)
        init |= {
            "means": rng.normal(size=f),
            "w_num": rng.normal(size=(f, hidden)) / np.sqrt(f),
            "w_ind": rng.normal(size=(f, hidden)) * 0.5,
        }
        nodes += [
            helper.make_node("IsNaN", ["features"], ["missing"]),
            helper.make_node("Where", ["missing", "means", "features"], ["imputed"]),
            helper.make_node("Cast", ["missing"], ["indicators"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["imputed", "w_num"], ["t_num"]),
            helper.make_node("MatMul", ["indicators", "w_ind"], ["t_ind"]),
        ]
        terms += ["t_num", "t_ind"]
        inputs.append(_tensor("features", TensorProto.FLOAT, f))
    init["squeeze_axes"] = np.array([1], np.int64)
    for column, vocabulary in vocabularies.items():
        init[f"w_{column}"] = rng.normal(size=(len(vocabulary) + 1, hidden))  # + "other"
        nodes += [
            helper.make_node(
                "LabelEncoder",
                [column],
                [f"{column}_index"],
                domain="ai.onnx.ml",
                keys_strings=vocabulary,
                values_int64s=list(range(len(vocabulary))),
                default_int64=len(vocabulary),
            ),
            helper.make_node("Squeeze", [f"{column}_index", "squeeze_axes"], [f"{column}_row"]),
            helper.make_node("Gather", [f"w_{column}", f"{column}_row"], [f"t_{column}"]),
        ]
        terms.append(f"t_{column}")
        inputs.append(helper.make_tensor_value_info(column, TensorProto.STRING, ["batch", 1]))
    total = "b1"
    for i, term in enumerate(terms):
        nodes.append(helper.make_node("Add", [total, term], [f"sum{i}"]))
        total = f"sum{i}"
    nodes.append(helper.make_node("Relu", [total], ["a0"]))
    last = "a0"
    for i in range(1, layers):
        init |= {f"wh{i}": rng.normal(size=(hidden, hidden)) / np.sqrt(hidden)}
        init |= {f"bh{i}": rng.normal(size=hidden) * 0.1}
        nodes += [
            helper.make_node("Gemm", [last, f"wh{i}", f"bh{i}"], [f"h{i}"]),
            helper.make_node("Relu", [f"h{i}"], [f"a{i}"]),
        ]
        last = f"a{i}"
    init |= {"w2": rng.normal(size=(hidden, out_width)) / np.sqrt(hidden)}
    init |= {"b2": rng.normal(size=out_width) * 0.1}
    if task == "classification":
        nodes += [
            helper.make_node("Gemm", [last, "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ]
        outputs = [
            _tensor("logits", TensorProto.FLOAT, classes),
            _tensor("probabilities", TensorProto.FLOAT, classes),
        ]
    else:
        nodes.append(helper.make_node("Gemm", [last, "w2", "b2"], ["predictions"]))
        outputs = [_tensor("predictions", TensorProto.FLOAT, 2)]
    initializers = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in init.items()]
    initializers = [
        numpy_helper.from_array(init[k], k) if k == "squeeze_axes" else t
        for k, t in zip(init, initializers, strict=True)
    ]
    graph = helper.make_graph(nodes, "raw_mlp", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    labels = LABELS if classes == CLASSES else [f"c{i}" for i in range(classes)]
    helper.set_model_props(
        model,
        {
            "bnmodel.task": task,
            "bnmodel.feature_names": json.dumps(numeric),
            "bnmodel.categorical_columns": json.dumps(list(vocabularies)),
            **({"bnmodel.class_labels": json.dumps(labels)} if task == "classification" else {}),
            **(
                {"bnmodel.preprocessing": json.dumps({"vocabularies": vocabularies})}
                if preprocessing
                else {}
            ),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def raw_reference(
    model: onnx.ModelProto, features: np.ndarray | None, columns: dict[str, np.ndarray]
) -> np.ndarray:
    """The first layer's pre-activation of :func:`raw_model`, in numpy (from its weights):
    what the graph must compute, unseen and empty strings taking the "other" row."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    total = np.broadcast_to(w["b1"], (len(next(iter(columns.values()))), len(w["b1"]))).copy()
    if features is not None:
        missing = np.isnan(features)
        total += np.where(missing, w["means"], features) @ w["w_num"]
        total += missing.astype(np.float32) @ w["w_ind"]
    encoders = {n.input[0]: n for n in model.graph.node if n.op_type == "LabelEncoder"}
    for column, values in columns.items():
        attributes = {a.name: helper.get_attribute_value(a) for a in encoders[column].attribute}
        keys = [k.decode() for k in attributes["keys_strings"]]
        rows = [keys.index(v) if v in keys else len(keys) for v in values.ravel()]
        total += w[f"w_{column}"][rows]
    return total


def raw_other_slots(model: onnx.ModelProto, cells: dict[str, list[str]]) -> dict[str, int]:
    """Per column, how many of ``cells`` the graph's own LabelEncoder sends to the "other" slot
    (its index output, exposed as a graph output, run by ONNX Runtime)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for column in cells:
        exposed.graph.output.append(
            helper.make_tensor_value_info(f"{column}_index", TensorProto.INT64, ["batch", 1])
        )
    session = ort.InferenceSession(exposed.SerializeToString())
    rows = len(next(iter(cells.values())))
    feeds = {c: np.array(v, dtype=object).reshape(-1, 1) for c, v in cells.items()}
    for tensor in model.graph.input:
        if tensor.name == "features":  # numerics play no part in the slots
            width = tensor.type.tensor_type.shape.dim[1].dim_value
            feeds["features"] = np.zeros((rows, width), np.float32)
    slots = session.run([f"{c}_index" for c in cells], feeds)
    other = {  # the "other" slot is the index after the vocabulary's
        n.input[0]: len(helper.get_attribute_value(a))
        for n in model.graph.node
        if n.op_type == "LabelEncoder"
        for a in n.attribute
        if a.name == "keys_strings"
    }
    return {c: int(np.count_nonzero(s == other[c])) for c, s in zip(cells, slots, strict=True)}


def raw_config_text(
    name: str,
    task: str = "classification",
    numeric: list[str] | None = None,
    vocabularies: dict[str, list[str]] | None = None,
    max_batch_size: int = 64,
    classes: int = CLASSES,
    extra: str = "",
    queue_delay_us: int = 100,
) -> str:
    """config.pbtxt of :func:`raw_model` as the contract has `bnmodel export --repository`
    write it: ``features`` TYPE_FP32 [F] first, then one TYPE_STRING [1] per categorical."""
    numeric = RAW_NUMERIC if numeric is None else numeric
    vocabularies = RAW_VOCABULARIES if vocabularies is None else vocabularies
    inputs = (
        [f'{{ name: "features" data_type: TYPE_FP32 dims: [ {len(numeric)} ] }}'] if numeric else []
    )
    inputs += [f'{{ name: "{c}" data_type: TYPE_STRING dims: [ 1 ] }}' for c in vocabularies]
    outputs = (
        [("logits", classes), ("probabilities", classes)]
        if task == "classification"
        else [("predictions", 2)]
    )
    labels = LABELS if classes == CLASSES else [f"c{i}" for i in range(classes)]
    parts = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f"input [{', '.join(inputs)}]",
        "output ["
        + ", ".join(f'{{ name: "{o}" data_type: TYPE_FP32 dims: [ {w} ] }}' for o, w in outputs)
        + "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        "version_policy: { latest: { num_versions: 1 } }",
        f'parameters {{ key: "task" value {{ string_value: "{task}" }} }}',
        _string_parameter("feature_names", json.dumps(numeric)),
        _string_parameter("categorical_columns", json.dumps(list(vocabularies))),
    ]
    if task == "classification":
        parts.append(_string_parameter("class_labels", json.dumps(labels)))
    return "\n".join(parts + [extra]) + "\n"
