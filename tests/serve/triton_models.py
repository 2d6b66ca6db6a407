"""ONNX models of the shapes Triton's client examples expect, and one per protocol datatype.

- ``simple``: INPUT0, INPUT1 INT32 [16] -> OUTPUT0 = sum, OUTPUT1 = difference (max_batch_size 8)
- ``simple_int8``: the same in INT8
- ``simple_string``: INPUT0, INPUT1 BYTES [16] holding decimal numbers -> OUTPUT0/OUTPUT1 BYTES
- ``identity_<DTYPE>``: INPUT0 [4] -> OUTPUT0 (Identity) and OUTPUT1 = INPUT0 + INPUT0 (Add; Or
  for BOOL, the input again for BYTES) for every datatype ONNX Runtime runs

Any ONNX model, none of them following the bnmodel contract (no metadata, config.pbtxt by hand).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from models import write_model
from onnx import TensorProto, helper

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
CONFIG_TYPES = {name: f"TYPE_{'STRING' if name == 'BYTES' else name}" for name in ONNX_TYPES}


def _model(nodes, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    # opset 14 (Add of 8- and 16-bit integers) and IR 8: what the ONNX Runtime of this project runs
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


def _info(name: str, elem: int, width: int):
    return helper.make_tensor_value_info(name, elem, ["batch", width])


def _config(name: str, max_batch_size: int, inputs, outputs) -> str:
    def tensors(group):
        return ", ".join(
            f'{{ name: "{n}" data_type: {CONFIG_TYPES[t]} dims: [ {w} ] }}' for n, t, w in group
        )

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [{tensors(inputs)}]\noutput [{tensors(outputs)}]\n"
    )


def add_sub_model(datatype: str) -> onnx.ModelProto:
    elem = ONNX_TYPES[datatype]
    return _model(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        [_info("INPUT0", elem, 16), _info("INPUT1", elem, 16)],
        [_info("OUTPUT0", elem, 16), _info("OUTPUT1", elem, 16)],
    )  # fmt: skip


def string_model() -> onnx.ModelProto:
    """Triton's simple_string: decimal numbers as strings, added and subtracted as INT32."""
    string, int32 = TensorProto.STRING, TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=int32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=int32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=string),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=string),
    ]
    return _model(
        nodes,
        [_info("INPUT0", string, 16), _info("INPUT1", string, 16)],
        [_info("OUTPUT0", string, 16), _info("OUTPUT1", string, 16)],
    )


def identity_model(datatype: str) -> onnx.ModelProto:
    elem = ONNX_TYPES[datatype]
    if datatype == "BYTES":
        second = helper.make_node("Identity", ["INPUT0"], ["OUTPUT1"])
    elif datatype == "BOOL":
        second = helper.make_node("Or", ["INPUT0", "INPUT0"], ["OUTPUT1"])
    else:
        second = helper.make_node("Add", ["INPUT0", "INPUT0"], ["OUTPUT1"])
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"]), second],
        [_info("INPUT0", elem, 4)],
        [_info("OUTPUT0", elem, 4), _info("OUTPUT1", elem, 4)],
    )


def add_sub_config(name: str, datatype: str, max_batch_size: int = 8) -> str:
    return _config(
        name,
        max_batch_size,
        [("INPUT0", datatype, 16), ("INPUT1", datatype, 16)],
        [("OUTPUT0", datatype, 16), ("OUTPUT1", datatype, 16)],
    )


def write_example_repository(root: Path) -> Path:
    """simple, simple_int8, simple_string and identity_<DTYPE> for every datatype in ``root``."""
    write_model(root, "simple", add_sub_model("INT32"), add_sub_config("simple", "INT32"))
    write_model(root, "simple_int8", add_sub_model("INT8"), add_sub_config("simple_int8", "INT8"))
    write_model(root, "simple_string", string_model(), add_sub_config("simple_string", "BYTES"))
    for datatype in ONNX_TYPES:
        name = f"identity_{datatype}"
        config = _config(
            name, 8, [("INPUT0", datatype, 4)], [("OUTPUT0", datatype, 4), ("OUTPUT1", datatype, 4)]
        )
        write_model(root, name, identity_model(datatype), config)
    return root
