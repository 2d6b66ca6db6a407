"""The Open Inference Protocol's HTTP/JSON bodies <-> the data plane's domain objects.

An infer request body is a JSON object, optionally followed by binary tensor data (Triton's
binary tensor data extension): the ``Inference-Header-Content-Length`` header then gives the
length of the JSON part, and each input with ``parameters.binary_data_size`` takes that many
bytes of what follows, in the order of the inputs. JSON ``data`` becomes an input's ``values``
(a flat array) and binary data its ``raw``, so decoding, validation and their messages are the
data plane's (serve/validation.py, serve/codec.py), the same as over gRPC. Errors here are
about the JSON itself: :class:`InvalidInputError` naming the field and the JSON type received.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .codec import BYTES, DATATYPES, datatype_of, encode_raw
from .dataplane import InferResponse
from .errors import InvalidInputError
from .validation import InferInput, InferRequest, Parameter, quote

__all__ = [
    "HEADER_LENGTH",
    "json_object",
    "decode_infer_request",
    "binary_outputs",
    "encode_infer_response",
]

HEADER_LENGTH = "inference-header-content-length"  # lower case, as the server stores headers

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
# numpy kinds of a JSON array each datatype family accepts: b bool, i/u integers, f floats.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_ARRAY_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def json_object(data: bytes | memoryview, what: str = "request body") -> dict:
    """``data`` parsed as one JSON object, or InvalidInputError saying why not."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"{what} must be a JSON object, got {_json_type(document)}")
    return document


def _get(document: Mapping, key: str, kind: type | tuple, where: str, default: Any = None):
    """``document[key]`` checked to be of JSON type ``kind``; absent or null: ``default``."""
    value = document.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = _json_type(kind()) if isinstance(kind, type) else "a number"
        raise InvalidInputError(f"{where}: {key!r} must be {expected}, got {_json_type(value)}")
    return value


def _parameters(document: Mapping, where: str) -> tuple[Parameter, ...]:
    """JSON "parameters" -> Parameters, the JSON type standing for the gRPC oneof field."""
    entries = _get(document, "parameters", dict, where)
    if not entries:
        return ()
    found = []
    for name, value in entries.items():
        if isinstance(value, bool):
            kind = "bool_param"
        elif isinstance(value, int):
            kind = "int64_param" if value < 2**63 else "uint64_param"
        elif isinstance(value, float):
            kind = "double_param"
        elif isinstance(value, str):
            kind = "string_param"
        else:
            raise InvalidInputError(
                f"{where}: parameter {quote(name)} must be a boolean, number or string, "
                f"got {_json_type(value)}"
            )
        found.append(Parameter(name, kind, value))
    return tuple(found)


def _json_strings(data: list, where: str) -> list[str]:
    """A BYTES tensor's JSON "data": strings, flat or nested (row-major), flattened."""
    if all(type(value) is str for value in data):  # the usual case: a flat array
        return data
    flat: list[str] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if type(value) is not str:
                raise InvalidInputError(
                    f"{where}: 'data' must hold strings for BYTES, got {_json_type(value)} "
                    f"at element {len(flat)}"
                )
            flat.append(value)
        else:
            stack.pop()
    return flat


def _with_nulls(values: np.ndarray) -> np.ndarray:
    """Numbers and nulls (a float tensor with missing values, as this server writes NaN in
    JSON answers) -> float64 with NaN for null; anything else is left for the type check."""
    flat = values.ravel()
    if all(v is None or type(v) in (int, float) for v in flat):
        return np.array(flat, dtype=np.float64).reshape(values.shape)
    return values


def _json_data(data: Any, datatype: str, where: str) -> np.ndarray | list[str]:
    """A tensor's JSON "data" (flat or nested array) as flat values for serve/codec.py."""
    if not isinstance(data, list):
        raise InvalidInputError(f"{where}: 'data' must be an array, got {_json_type(data)}")
    dt = DATATYPES.get(datatype)
    if dt is None:  # validation refuses it, naming the datatype the model expects
        return []
    if dt.contents_field is None:
        raise InvalidInputError(
            f"{where}: {datatype} has no JSON form; send it as binary data "
            "(parameters.binary_data_size and the Inference-Header-Content-Length header)"
        )
    if dt is BYTES:
        return _json_strings(data, where)
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInputError(f"{where}: 'data' is a ragged nested array") from None
    if values.dtype.kind == "O" and dt.dtype.kind == "f":
        values = _with_nulls(values)  # JSON has no NaN: null is a missing value
    if values.dtype.kind not in _ACCEPTED_KINDS[dt.dtype.kind]:
        expected = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
        got = _ARRAY_KINDS.get(values.dtype.kind, "nulls, objects or mixed JSON types")
        raise InvalidInputError(
            f"{where}: 'data' must hold {expected[dt.dtype.kind]} for {datatype}, got {got}"
        )
    return values.ravel()


def _shape(tensor: Mapping, where: str) -> tuple[int, ...]:
    shape = _get(tensor, "shape", list, where)
    if shape is None:
        raise InvalidInputError(f"{where}: 'shape' is missing")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInputError(f"{where}: 'shape' must be an array of integers, got {shape[:8]}")
    return tuple(shape)


def _inputs(model: str, document: Mapping, binary: memoryview) -> tuple[InferInput, ...]:
    entries = _get(document, "inputs", list, f"model {quote(model)}")
    if not entries:
        raise InvalidInputError(f"model {quote(model)}: request has no 'inputs'")
    inputs, offset = [], 0
    for i, tensor in enumerate(entries):
        where = f"model {quote(model)} input {i}"
        if not isinstance(tensor, dict):
            raise InvalidInputError(f"{where}: must be an object, got {_json_type(tensor)}")
        name = _get(tensor, "name", str, where)
        if name is None:
            raise InvalidInputError(f"{where}: 'name' is missing")
        where = f"model {quote(model)} input {quote(name)}"
        datatype = _get(tensor, "datatype", str, where, "")
        shape = _shape(tensor, where)
        parameters = _parameters(tensor, where)
        size = next((p for p in parameters if p.name == "binary_data_size"), None)
        if size is not None:
            if size.kind != "int64_param" or size.value < 0:
                raise InvalidInputError(
                    f"{where}: parameter 'binary_data_size' must be an integer >= 0"
                )
            if tensor.get("data") is not None:
                raise InvalidInputError(f"{where}: has both 'data' and binary_data_size")
            if offset + size.value > len(binary):
                raise InvalidInputError(
                    f"{where}: binary_data_size {size.value} at offset {offset} runs past the "
                    f"{len(binary)} bytes of binary data after the JSON header"
                )
            raw = binary[offset : offset + size.value]
            offset += size.value
            inputs.append(InferInput(name, datatype, shape, raw=raw, parameters=parameters))
        elif tensor.get("data") is not None:
            values = _json_data(tensor["data"], datatype, where)
            inputs.append(InferInput(name, datatype, shape, values=values, parameters=parameters))
        else:  # shared memory, or validation says "no data"
            inputs.append(InferInput(name, datatype, shape, parameters=parameters))
    if offset != len(binary):
        raise InvalidInputError(
            f"model {quote(model)}: the inputs' binary_data_size add up to {offset} bytes, but "
            f"{len(binary)} bytes follow the JSON header (Inference-Header-Content-Length)"
        )
    return tuple(inputs)


def decode_infer_request(
    model: str, version: str, body: bytes, header_length: int | None
) -> InferRequest:
    """An infer request body -> domain request (tensors still undecoded).

    ``header_length``: the Inference-Header-Content-Length header (None: all JSON).
    """
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif not 0 <= header_length <= len(view):
        raise InvalidInputError(
            f"Inference-Header-Content-Length is {header_length}, but the body holds "
            f"{len(view)} bytes"
        )
    document = json_object(view[:header_length], "inference request header")
    where = f"model {quote(model)}"
    request_id = _get(document, "id", str, where, "")
    outputs = _get(document, "outputs", list, where) or ()
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInputError(f"{where}: each of 'outputs' must be an object with a 'name'")
    return InferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=_inputs(model, document, view[header_length:]),
        outputs=tuple(output["name"] for output in outputs),
        parameters=_parameters(document, where),
        output_parameters=tuple(
            (output["name"], param)
            for output in outputs
            for param in _parameters(output, f"{where} output {quote(output['name'])}")
        ),
    )


def binary_outputs(request: InferRequest) -> frozenset[str] | bool:
    """Which outputs go back as binary data: True for all (binary_data_output), else the names
    whose own binary_data parameter is true."""
    named = {o: p.value for o, p in request.output_parameters if p.name == "binary_data"}
    default = any(p.name == "binary_data_output" and p.value is True for p in request.parameters)
    if not named:
        return default
    outputs = request.outputs
    return frozenset(o for o in outputs if named.get(o, default) is True)


def encode_infer_response(
    response: InferResponse, binary: frozenset[str] | bool
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) for ``response``; ``binary`` as from
    :func:`binary_outputs`. JSON data is the flat row-major array, as Triton sends it."""
    outputs, blobs = [], []
    for name, array in response.outputs:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array).name,
            "shape": list(array.shape),
        }
        if binary is True or (binary and name in binary):
            _, raw = encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            flat = np.ascontiguousarray(array).ravel()
            if flat.dtype == object:  # BYTES: a list of strings (orjson takes no object arrays)
                entry["data"] = flat.tolist()
            else:
                entry["data"] = flat.astype(np.float32) if flat.dtype == np.float16 else flat
        outputs.append(entry)
    for shared in response.shared:
        parameters = {
            "shared_memory_region": shared.region,
            "shared_memory_byte_size": shared.byte_size,
        }
        outputs.append(
            {
                "name": shared.name,
                "datatype": shared.datatype,
                "shape": list(shared.shape),
                "parameters": parameters,
            }
        )
    document = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)
