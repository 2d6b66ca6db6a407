"""Fuzz a running server with mutated ModelInfer requests, judged by an independent oracle.

    python tools/fuzz_server.py --requests 30000 --seed 6 --seconds 600

The HTTP side (:class:`HttpFuzzer`, :func:`expect_http`) does the same with JSON and binary
infer requests over HTTP: never a 5xx, every 4xx a JSON error, 404 exactly for unknown models.

A valid request for model "clf" (FP32) or "half" (FP16) is built, then mutated at the message
level (names, datatypes, shapes, contents, outputs, parameters, ids) and/or at the byte level
(flips, cuts, inserts). :func:`expect` restates the protocol contract on its own to say what
the answer must be: OK with the model's values (checked against ONNX Runtime in this process),
NOT_FOUND, or INVALID_ARGUMENT. Never INTERNAL or UNKNOWN. The server must be alive and SERVING
afterwards. tests/serve/test_fuzz.py drives :class:`Fuzzer` from hypothesis.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from bnmodel.serve.codec import CONTENT_FIELDS
from bnmodel.serve.proto import grpc_service_pb2 as pb
from google.protobuf.message import DecodeError

__all__ = [
    "Fuzzer",
    "Expected",
    "Reference",
    "expect",
    "HttpFuzzer",
    "HttpRequest",
    "expect_http",
    "send_http",
    "judge_http",
    "send",
    "judge",
    "write_repository",
    "main",
]

INFER = "/inference.GRPCInferenceService/ModelInfer"
OUTPUTS = ("logits", "probabilities")
# model -> (datatype, numpy dtype, typed contents field or None)
SPECS = {"clf": ("FP32", np.float32, "fp32_contents"), "half": ("FP16", np.float16, None)}
MAX_BATCH, FEATURES, MAX_ID = 64, 8, 256
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass(frozen=True)
class Expected:
    code: grpc.StatusCode
    model: str = ""
    x: np.ndarray | None = None  # the decoded input when valid
    outputs: tuple[str, ...] = ()
    id: str = ""


# -- generating -----------------------------------------------------------------------------


class Fuzzer:
    """Valid requests and their mutations, every choice drawn from one ``random.Random``."""

    NAMES = ["", "nope", "clf", "half", "CLF", "clf ", "../clf", "/etc", "m" * 300, "clf\x00"]
    VERSIONS = ["", "", "1", "2", "0", "01", "-1", "latest", " 1"]
    INPUT_NAMES = ["", "feature", "features", "FEATURES", "extra", "features\n"]
    DATATYPES = ["FP32", "FP16", "FP64", "INT32", "BOOL", "BYTES", "BF16", "", "fp32", "FLOAT"]
    DIMS = [0, -1, 1, 7, 8, 9, 64, 65, 2**31, 2**62, -(2**63)]
    OUTPUT_NAMES = ["logits", "probabilities", "nope", "", "Logits"]
    PARAMETERS = [
        ("priority", {"int64_param": 1}),
        ("priority", {"string_param": "high"}),
        ("priority", {}),
        ("timeout", {"int64_param": -1}),
        ("timeout", {"uint64_param": 60_000_000}),  # us: a deadline the request meets
        ("sequence_id", {"int64_param": 0}),
        ("sequence_id", {"int64_param": 3}),
        ("sequence_start", {"bool_param": False}),
        ("sequence_start", {"bool_param": True}),
        ("sequence_end", {"double_param": 1.0}),
        ("custom", {"string_param": "ignored"}),
    ]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def valid(self) -> pb.ModelInferRequest:
        rng = self.rng
        model = rng.choice(["clf", "clf", "clf", "half"])
        datatype, dtype, field = SPECS[model]
        rows = rng.randint(1, 6)
        x = np.array([rng.uniform(-3, 3) for _ in range(rows * FEATURES)], dtype).reshape(rows, -1)
        ids = ["", "req-1", "x" * rng.randint(0, 600), "\u00e9\u4e2d\n"]
        r = pb.ModelInferRequest(model_name=model, id=rng.choice(ids))
        tensor = r.inputs.add(name="features", datatype=datatype, shape=x.shape)
        if field is not None and rng.random() < 0.3:
            getattr(tensor.contents, field).extend(x.ravel().tolist())
        else:
            r.raw_input_contents.append(x.tobytes())
        for name in rng.choice([(), ("probabilities",), ("logits",), OUTPUTS[::-1]]):
            r.outputs.add(name=name)
        return r

    # message-level mutations: each edits ``r`` in place
    def _model(self, r):
        r.model_name = self.rng.choice(self.NAMES)

    def _version(self, r):
        r.model_version = self.rng.choice(self.VERSIONS)

    def _input_name(self, r):
        if r.inputs:
            self.rng.choice(r.inputs).name = self.rng.choice(self.INPUT_NAMES)

    def _datatype(self, r):
        if r.inputs:
            self.rng.choice(r.inputs).datatype = self.rng.choice(self.DATATYPES)

    def _shape(self, r):
        if not r.inputs:
            return
        shape = self.rng.choice(r.inputs).shape
        action = self.rng.choice(["set", "append", "drop"])
        if action == "set" and shape:
            shape[self.rng.randrange(len(shape))] = self.rng.choice(self.DIMS)
        elif action == "append":
            shape.append(self.rng.choice(self.DIMS))
        elif shape:
            del shape[self.rng.randrange(len(shape))]

    def _raw(self, r):
        action = self.rng.choice(["cut", "grow", "extra", "clear", "nan"])
        if r.raw_input_contents and action in ("cut", "grow", "nan"):
            blob = bytearray(r.raw_input_contents[0])
            k = self.rng.choice([1, 2, 4, 32])
            if action == "cut":
                blob = blob[:-k]
            elif action == "grow":
                blob += bytes(k)
            elif len(blob) >= 4:  # NaN bit patterns over the first element(s)
                blob[: min(len(blob), 4 * k)] = b"\xff" * min(len(blob), 4 * k)
            r.raw_input_contents[0] = bytes(blob)
        elif action == "extra":
            r.raw_input_contents.append(bytes(self.rng.choice([0, 32, 64])))
        elif action == "clear":
            del r.raw_input_contents[:]

    def _typed(self, r):
        if not r.inputs:
            return
        contents = self.rng.choice(r.inputs).contents
        field = self.rng.choice(["fp32_contents", "int_contents", "fp64_contents", "bool_contents"])
        values = [1] * self.rng.choice([0, 1, 8, 16])
        getattr(contents, field).extend([bool(v) for v in values] if "bool" in field else values)

    def _inputs(self, r):
        if self.rng.random() < 0.5 and r.inputs:
            r.inputs.add().CopyFrom(self.rng.choice(r.inputs))
            if r.raw_input_contents:
                r.raw_input_contents.append(r.raw_input_contents[0])
        elif r.inputs:
            del r.inputs[self.rng.randrange(len(r.inputs))]

    def _outputs(self, r):
        r.outputs.add(name=self.rng.choice(self.OUTPUT_NAMES))

    def _parameter(self, r):
        name, value = self.rng.choice(self.PARAMETERS)
        if self.rng.random() < 0.8:
            r.parameters[name].CopyFrom(pb.InferParameter(**value))
        else:
            output = r.outputs.add(name="probabilities")
            output.parameters["classification"].CopyFrom(pb.InferParameter(int64_param=2))

    MESSAGE_MUTATIONS = (
        _model,
        _version,
        _input_name,
        _datatype,
        _shape,
        _raw,
        _typed,
        _inputs,
        _outputs,
        _parameter,
    )

    def _bytes(self, data: bytes) -> bytes:
        rng, data = self.rng, bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4])):
            at = rng.randrange(len(data) + 1)
            action = rng.choice(["flip", "cut", "insert", "delete", "repeat"])
            if action == "flip" and at < len(data):
                data[at] ^= 1 << rng.randrange(8)
            elif action == "cut":
                data = data[:at]
            elif action == "insert":
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif action == "delete":
                del data[at : at + rng.randint(1, 8)]
            else:
                data[at:at] = data[max(0, at - 16) : at]
        return bytes(data)

    def request(self) -> bytes:
        """One request: valid (about 1 in 6), message-mutated, and/or byte-mutated."""
        r = self.valid()
        for _ in range(self.rng.choice([0, 1, 1, 1, 2, 3])):
            self.rng.choice(self.MESSAGE_MUTATIONS)(self, r)
        data = r.SerializeToString()
        return self._bytes(data) if self.rng.random() < 0.3 else data


# -- the oracle -------------------------------------------------------------------------------


def _parameters_ok(m: pb.ModelInferRequest) -> bool:
    for name, param in m.parameters.items():
        kind = param.WhichOneof("parameter_choice")
        if name in ("priority", "timeout"):
            if kind not in ("int64_param", "uint64_param"):
                return False
            if name == "timeout" and getattr(param, kind) < 0:
                return False
        elif name in ("sequence_id", "sequence_start", "sequence_end"):
            allowed = ("int64_param", "uint64_param", "string_param")
            if kind not in (allowed if name == "sequence_id" else ("bool_param",)):
                return False
            if getattr(param, kind):
                return False
    return not any("classification" in o.parameters for o in m.outputs)


def _input(m: pb.ModelInferRequest, model: str) -> np.ndarray | None:
    """The decoded input when the tensor part of ``m`` is valid for ``model``."""
    datatype, dtype, field = SPECS[model]
    if len(m.inputs) != 1:
        return None
    t = m.inputs[0]
    if t.name != "features" or t.datatype != datatype or len(t.shape) != 2:
        return None
    rows, width = t.shape
    if width != FEATURES or not 1 <= rows <= MAX_BATCH:
        return None
    raw, typed = m.raw_input_contents, t.HasField("contents")
    if raw:
        if typed or len(raw) != 1 or len(raw[0]) != rows * width * np.dtype(dtype).itemsize:
            return None
        return np.frombuffer(raw[0], dtype).reshape(rows, width)
    if not typed or field is None:
        return None
    if any(len(getattr(t.contents, f)) for f in CONTENT_FIELDS if f != field):
        return None
    values = getattr(t.contents, field)
    return np.array(values, dtype).reshape(rows, width) if len(values) == rows * width else None


def expect(payload: bytes) -> Expected:
    """What the server must answer to ``payload``, from the protocol contract alone."""
    try:
        m = pb.ModelInferRequest.FromString(payload)
    except DecodeError:
        return Expected(INVALID)
    if not m.model_name or len(m.model_name) > 255:
        return Expected(INVALID)
    if m.model_name not in SPECS:
        return Expected(NOT_FOUND)
    if not (m.model_version.isascii() and m.model_version.isdigit()) and m.model_version:
        return Expected(INVALID)  # a version that is not a number, as Triton answers it
    if m.model_version not in ("", "1"):
        return Expected(NOT_FOUND)
    outputs = [o.name for o in m.outputs]
    if len(set(outputs)) != len(outputs) or not set(outputs) <= set(OUTPUTS):
        return Expected(INVALID)
    x = _input(m, m.model_name)
    if x is None or not _parameters_ok(m):
        return Expected(INVALID)
    return Expected(OK, m.model_name, x, tuple(outputs) or OUTPUTS, m.id[:MAX_ID])


class Reference:
    """The models run by ONNX Runtime in this process."""

    def __init__(self, repository: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about the test models' unused initializer
        self.sessions = {
            name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options)
            for name in SPECS
        }

    def run(self, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
        results = self.sessions[model].run(list(OUTPUTS), {"features": x})
        return dict(zip(OUTPUTS, results, strict=True))


def judge(expected: Expected, code, message: str, response: bytes, reference: Reference):
    """None when the answer is right, else what is wrong."""
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{code.name}: {message}"
    if code != expected.code:
        return f"status {code.name}, expected {expected.code.name}: {message}"
    if code != OK:
        return None
    r = pb.ModelInferResponse.FromString(response)
    names = tuple(o.name for o in r.outputs)
    if names != expected.outputs or r.id != expected.id or r.model_name != expected.model:
        return f"answer for {names} id {r.id[:20]!r}, expected {expected.outputs}"
    want = reference.run(expected.model, expected.x)
    tolerance = 1e-5 if expected.x.dtype == np.float32 else 2e-3
    for tensor, raw in zip(r.outputs, r.raw_output_contents, strict=True):
        got = np.frombuffer(raw, want[tensor.name].dtype).reshape(tuple(tensor.shape))
        if not np.allclose(got, want[tensor.name], rtol=tolerance, atol=tolerance, equal_nan=True):
            return f"{tensor.name} differs from ONNX Runtime"
    return None


def write_repository(root: Path) -> Path:
    """clf (FP32) and half (FP16) classifiers in a Triton-layout folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
    from models import config_text, mlp_model, write_model

    write_model(root, "clf", mlp_model(), config_text("clf"))
    write_model(root, "half", mlp_model(fp16=True, seed=2), config_text("half", fp16=True))
    return root


# -- the HTTP side (serve/http.py) ------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    path: str
    body: bytes
    header_length: int | None = None  # Inference-Header-Content-Length; None: all JSON


@dataclass(frozen=True)
class HttpExpected:
    status: int  # 200, 404, or 400 (any 4xx but 404 is accepted for it)
    model: str = ""
    x: np.ndarray | None = None
    outputs: tuple[str, ...] = ()
    binary: frozenset[str] = frozenset()
    id: str = ""


class HttpFuzzer:
    """Valid JSON / binary infer requests and their mutations (document and byte level)."""

    PATHS = ["clf", "clf/versions/1", "half", "nope", "clf/versions/2", "CLF", "half/versions/1"]
    VALUES = [None, True, 1, -1, 1.5, "x", [], {}, [1, 2], {"a": 1}, 2**70]
    PARAMETERS = [
        {"priority": 1},
        {"priority": "high"},
        {"timeout": -1},
        {"sequence_id": 3},
        {"sequence_start": True},
        {"binary_data_output": True},
        {"custom": "ignored"},
        {"nested": {"a": 1}},
    ]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def valid(self) -> tuple[str, dict, bytes]:
        rng = self.rng
        model = rng.choice(["clf", "clf", "clf", "half"])
        datatype, dtype, _ = SPECS[model]
        rows = rng.randint(1, 6)
        x = np.array([rng.uniform(-3, 3) for _ in range(rows * FEATURES)], dtype).reshape(rows, -1)
        tensor: dict = {"name": "features", "datatype": datatype, "shape": [rows, FEATURES]}
        binary = b""
        if model == "half" or rng.random() < 0.5:
            binary = x.tobytes()
            tensor["parameters"] = {"binary_data_size": len(binary)}
        else:
            values = x.astype(np.float64)
            tensor["data"] = (values if rng.random() < 0.5 else values.ravel()).tolist()
        document: dict = {"inputs": [tensor]}
        if rng.random() < 0.5:
            document["id"] = rng.choice(["", "req-1", "\u00e9\u4e2d\n", "x" * 300])
        outputs = rng.choice([(), ("probabilities",), ("logits",), OUTPUTS[::-1]])
        if outputs:
            document["outputs"] = [
                {"name": n, "parameters": {"binary_data": rng.random() < 0.5}} for n in outputs
            ]
        return model, document, binary

    def _mutate(self, document: dict) -> None:
        rng = self.rng
        inputs = document.get("inputs")
        ok = isinstance(inputs, list) and inputs and isinstance(inputs[0], dict)
        tensor = inputs[0] if ok else {}
        target, key = rng.choice(
            [
                (document, "inputs"),
                (document, "id"),
                (document, "outputs"),
                (document, "parameters"),
                (tensor, "name"),
                (tensor, "datatype"),
                (tensor, "shape"),
                (tensor, "data"),
                (tensor, "parameters"),
            ]
        )
        action = rng.choice(["drop", "value", "edit"])
        if action == "drop":
            target.pop(key, None)
        elif action == "value":
            target[key] = rng.choice(self.VALUES)
        elif key == "shape" and isinstance(target.get(key), list) and target[key]:
            target[key][rng.randrange(len(target[key]))] = rng.choice(Fuzzer.DIMS + [2.0, "8"])
        elif key == "data" and isinstance(target.get(key), list) and target[key]:
            data = target[key]
            choice = rng.choice(["cut", "grow", "string", "null", "bools"])
            if choice == "cut":
                data.pop()
            elif choice == "grow":
                data.append(data[0])
            elif choice == "bools":
                target[key] = [True] * len(data)
            else:
                data[rng.randrange(len(data))] = "1.0" if choice == "string" else None
        elif key == "parameters" and target is tensor:
            parameters = tensor.get("parameters")
            if isinstance(parameters, dict) and type(parameters.get("binary_data_size")) is int:
                parameters["binary_data_size"] += rng.choice([-4, -1, 1, 4, 10**6])
        elif key == "parameters":
            document["parameters"] = rng.choice(self.PARAMETERS)
        elif key == "outputs" and isinstance(document.get("outputs", []), list):
            document.setdefault("outputs", []).append(
                rng.choice([{"name": "nope"}, {"name": "logits"}, {"name": 3}, "logits",
                            {"name": "logits", "parameters": {"classification": 2}}])
            )  # fmt: skip
        elif key in ("name", "datatype"):
            target[key] = rng.choice(Fuzzer.INPUT_NAMES + Fuzzer.DATATYPES)
        elif key == "inputs" and ok:
            document["inputs"].append(dict(tensor))

    def request(self) -> HttpRequest:
        """One request: valid (about 1 in 6), document-mutated, and/or byte-mutated."""
        rng = self.rng
        model, document, binary = self.valid()
        path = f"/v2/models/{model}/infer"
        if rng.random() < 0.15:
            path = f"/v2/models/{rng.choice(self.PATHS)}/infer"
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            self._mutate(document)
        header = json.dumps(document).encode()
        body = header + binary
        length = len(header) if binary else None
        if rng.random() < 0.1:
            length = max(0, (length or len(body)) + rng.choice([-3, -1, 1, 5, 10**6]))
        if rng.random() < 0.3:
            body = Fuzzer(rng)._bytes(body)
        return HttpRequest(path, body, length)


def _get(document: dict, key: str, default=None):
    """``document[key]``, with JSON null meaning absent."""
    value = document.get(key)
    return default if value is None else value


def _http_input(document: dict, model: str, binary: bytes) -> np.ndarray | None:
    """The decoded input when ``document``'s inputs are valid for ``model``."""
    datatype, dtype, _ = SPECS[model]
    inputs = _get(document, "inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        return None
    t = inputs[0]
    shape = _get(t, "shape")
    if t.get("name") != "features" or t.get("datatype") != datatype:
        return None
    if not isinstance(shape, list) or len(shape) != 2 or shape[1] != FEATURES:
        return None
    if not all(type(d) is int for d in shape) or not 1 <= shape[0] <= MAX_BATCH:
        return None
    parameters, data = _get(t, "parameters", {}), _get(t, "data")
    if not isinstance(parameters, dict):
        return None
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if data is not None or type(size) is not int or size != len(binary):
            return None
        if size != shape[0] * FEATURES * np.dtype(dtype).itemsize:
            return None
        return np.frombuffer(binary, dtype).reshape(shape)
    if binary or model == "half" or not isinstance(data, list):
        return None
    if data and isinstance(data[0], list):  # nested: [rows][8]
        if not all(isinstance(row, list) and len(row) == FEATURES for row in data):
            return None
        data = [v for row in data for v in row]
    if len(data) != shape[0] * FEATURES:
        return None
    if not all(v is None or type(v) in (int, float) for v in data):
        return None  # strings, lists; booleans are not numbers for FP32
    return np.array(data, dtype).reshape(shape)  # null: a missing value, NaN


def _http_parameters_ok(document: dict) -> bool:
    parameters = _get(document, "parameters", {})
    if not isinstance(parameters, dict):
        return False
    for name, value in parameters.items():
        if not isinstance(value, bool | int | float | str):
            return False
        if name in ("priority", "timeout") and (type(value) is not int or value < 0):
            return False
        if name in ("sequence_id", "sequence_start", "sequence_end") and value:
            return False
    return True


def expect_http(request: HttpRequest) -> HttpExpected:
    """What the server must answer to ``request``, from the protocol contract alone."""
    name, _, version = (
        request.path.removeprefix("/v2/models/").removesuffix("/infer").partition("/versions/")
    )
    if name not in SPECS or version not in ("", "1"):
        return HttpExpected(404)
    length = len(request.body) if request.header_length is None else request.header_length
    if length > len(request.body):
        return HttpExpected(400)
    try:
        document = json.loads(request.body[:length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return HttpExpected(400)
    if not isinstance(document, dict) or not _http_parameters_ok(document):
        return HttpExpected(400)
    request_id = _get(document, "id", "")
    outputs = _get(document, "outputs", [])
    if not isinstance(request_id, str) or not isinstance(outputs, list):
        return HttpExpected(400)
    if not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        return HttpExpected(400)
    names = [o["name"] for o in outputs]
    if len(set(names)) != len(names) or not set(names) <= set(OUTPUTS):
        return HttpExpected(400)
    everything = _get(document, "parameters", {}).get("binary_data_output") is True
    binary = set(OUTPUTS) if everything and not outputs else set()
    for o in outputs:
        parameters = _get(o, "parameters", {})
        if not isinstance(parameters, dict) or "classification" in parameters:
            return HttpExpected(400)
        if not all(isinstance(v, bool | int | float | str) for v in parameters.values()):
            return HttpExpected(400)
        if parameters.get("binary_data", everything) is True:
            binary.add(o["name"])
    x = _http_input(document, name, request.body[length:])
    if x is None:
        return HttpExpected(400)
    outputs = tuple(names) or OUTPUTS
    return HttpExpected(200, name, x, outputs, frozenset(binary), request_id[:MAX_ID])


def send_http(url: str, request: HttpRequest, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """(status, lower-case headers, body) of ``request`` on a new connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    headers = {"content-type": "application/json"}
    if request.header_length is not None:
        headers["inference-header-content-length"] = str(request.header_length)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("POST", request.path, request.body, headers)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def judge_http(expected: HttpExpected, status: int, headers: dict, body: bytes, reference):
    """None when the answer is right, else what is wrong."""
    if status >= 500 or status < 200:
        return f"HTTP {status}: {body[:200]!r}"
    if status != 200:
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"HTTP {status} without a JSON error: {body[:200]!r}"
        if expected.status == 200 or (expected.status == 404) != (status == 404):
            return f"HTTP {status}, expected {expected.status}: {message}"
        return None
    if expected.status != 200:
        return f"HTTP 200, expected {expected.status}"
    length = int(headers.get("inference-header-content-length", len(body)))
    document = json.loads(body[:length])
    names = tuple(o["name"] for o in document["outputs"])
    if names != expected.outputs or document.get("id", "") != expected.id:
        return f"answer for {names} id {document.get('id', '')[:20]!r}, expected {expected.outputs}"
    want, offset = reference.run(expected.model, expected.x), length
    tolerance = 1e-5 if expected.x.dtype == np.float32 else 2e-3
    for tensor in document["outputs"]:
        size = tensor.get("parameters", {}).get("binary_data_size")
        if (size is not None) != (tensor["name"] in expected.binary):
            return f"{tensor['name']}: binary_data_size {size}, expected {sorted(expected.binary)}"
        if size is None:
            got = np.asarray(tensor["data"], np.float64).reshape(tensor["shape"])
        else:
            got = np.frombuffer(body[offset : offset + size], want[tensor["name"]].dtype)
            got, offset = got.reshape(tensor["shape"]), offset + size
        if not np.allclose(
            got, want[tensor["name"]], rtol=tolerance, atol=tolerance, equal_nan=True
        ):
            return f"HTTP: {tensor['name']} differs from ONNX Runtime"
    return None


# -- the long run -------------------------------------------------------------------------------


def send(channel: grpc.Channel, payload: bytes, timeout: float = 30.0):
    """(status, message, response bytes) of ``payload`` sent as raw bytes to ModelInfer."""
    try:
        return OK, "", channel.unary_unary(INFER)(payload, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", b""


def _one(channel: grpc.Channel, payload: bytes, reference: Reference):
    code, message, response = send(channel, payload)
    expected = expect(payload)
    return expected.code, code, judge(expected, code, message, response, reference)


def _healthy(url: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING


def fuzz(url: str, repository: Path, requests: int, seed: int, seconds: float, threads: int):
    """Send ``requests`` fuzzed requests (or stop after ``seconds``); counts and problems."""
    reference, fuzzer = Reference(repository), Fuzzer(random.Random(seed))
    counts: Counter = Counter()
    problems: list[str] = []
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(url) as channel, ThreadPoolExecutor(threads) as pool:
        sent = 0
        while sent < requests and time.monotonic() < deadline:
            batch = [fuzzer.request() for _ in range(min(256, requests - sent))]
            for expected, got, problem in pool.map(lambda p: _one(channel, p, reference), batch):
                counts[(expected.name, got.name)] += 1
                if problem:
                    problems.append(problem)
            sent += len(batch)
    return counts, problems


def fuzz_http(url: str, repository: Path, requests: int, seed: int, seconds: float, threads: int):
    """The HTTP side: ``requests`` fuzzed HTTP infer requests; counts and problems."""
    reference, fuzzer = Reference(repository), HttpFuzzer(random.Random(seed))
    counts: Counter = Counter()
    problems: list[str] = []
    deadline = time.monotonic() + seconds

    def one(request: HttpRequest):
        expected = expect_http(request)
        status, headers, body = send_http(url, request)
        return expected.status, status, judge_http(expected, status, headers, body, reference)

    with ThreadPoolExecutor(threads) as pool:
        sent = 0
        while sent < requests and time.monotonic() < deadline:
            batch = [fuzzer.request() for _ in range(min(256, requests - sent))]
            for expected, got, problem in pool.map(one, batch):
                counts[(f"HTTP {expected}", f"HTTP {got}")] += 1
                if problem:
                    problems.append(problem)
            sent += len(batch)
    return counts, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=600, help="stop early after this long")
    parser.add_argument("--threads", type=int, default=4, help="concurrent client calls")
    parser.add_argument(
        "--http-requests", type=int, default=10000, help="then this many over HTTP (0: none)"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
    from conftest import run_server

    with tempfile.TemporaryDirectory() as tmp:
        repo, log = write_repository(Path(tmp) / "repo"), Path(tmp) / "server.log"
        with run_server("--model-repository", str(repo), log_path=log) as server:
            start = time.monotonic()
            counts, problems = fuzz(
                server.url, repo, args.requests, args.seed, args.seconds, args.threads
            )
            if args.http_requests:
                more, http_problems = fuzz_http(
                    server.http_url, repo, args.http_requests, args.seed, args.seconds,
                    args.threads,
                )  # fmt: skip
                counts.update(more)
                problems += http_problems
            elapsed = time.monotonic() - start
            alive, healthy = server.process.poll() is None, _healthy(server.url)
        text = log.read_text()
    total = sum(counts.values())
    print(f"seed {args.seed}: {total} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s)")
    print("| expected | answered | count |\n|---|---|---|")
    for (expected, got), n in sorted(counts.items()):
        print(f"| {expected} | {got} | {n} |")
    by_status = Counter()
    for (_, got), n in counts.items():
        by_status[got] += n
    print("by status:", dict(by_status.most_common()))
    print(
        f"problems: {len(problems)}; alive afterwards: {alive}; SERVING: {healthy}; "
        f"tracebacks in the log: {text.count('Traceback')}; log lines: {len(text.splitlines())}"
    )
    for problem in problems[:20]:
        print("  ", problem)
    return 0 if not problems and alive and healthy and "Traceback" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
