"""The bad-request matrix: every class of malformed request, its expected status and message.

    python tools/bad_request_matrix.py                 # starts its own server, prints the matrix
    python tools/bad_request_matrix.py --url H:P       # against a running server (model "clf"...)

Each class is sent as raw bytes (a generic ``unary_unary`` call, no client-side checks) to a
server started with the default policy (NaN accepted, model control off). The HTTP side sends
its classes (malformed and truncated bodies, wrong JSON types, binary header/body mismatches,
huge declared sizes) to the same server's HTTP port: each must be a 4xx with a JSON error.
A class passes when the status is the expected one, the message holds the expected fragment
and no internals (exception names, numpy/struct text, ONNX Runtime dumps), and an OK answer is
right.
tests/serve/test_bad_requests.py asserts the same cases; exit status 1 if any class fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from bnmodel.serve.proto import grpc_service_pb2 as pb

__all__ = [
    "Case",
    "Outcome",
    "HttpCase",
    "LEAKS",
    "cases",
    "http_cases",
    "send",
    "send_http",
    "judge",
    "judge_http",
    "write_repository",
    "main",
]

SERVICE = "/inference.GRPCInferenceService/"
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
# What a client message must never carry: Python exception names, tracebacks, numpy, struct or
# ONNX Runtime text, object reprs.
LEAKS = re.compile(
    r"Traceback|File \"|\b[A-Z]\w*(Error|Exception)\b|numpy|np\.|struct\.|unpack|"
    r"onnxruntime|ONNXRuntime|\bORT\b|<[\w.]+ object at 0x"
)
X = np.arange(16, dtype=np.float32).reshape(2, 8) / 16  # the valid [2, 8] input


@dataclass(frozen=True)
class Case:
    label: str
    payload: bytes
    code: grpc.StatusCode
    fragment: str  # the message must contain it ("" for OK)
    method: str = "ModelInfer"
    check: Callable[[bytes], str | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: grpc.StatusCode
    message: str
    problem: str | None  # None: as expected


def _request(
    model: str = "clf",
    name: str = "features",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (2, 8),
    raw: tuple[bytes, ...] | None = None,
    outputs: tuple[str, ...] = (),
    **fields,
) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=model, **fields)
    r.inputs.add(name=name, datatype=datatype, shape=shape)
    r.raw_input_contents.extend((X.tobytes(),) if raw is None else raw)
    for output in outputs:
        r.outputs.add(name=output)
    return r


def _bytes(message) -> bytes:
    return message.SerializeToString()


def _with(message, edit: Callable[[pb.ModelInferRequest], object]) -> bytes:
    edit(message)
    return _bytes(message)


def _typed(field_name: str, values, model: str = "clf", datatype: str = "FP32") -> bytes:
    r = _request(model=model, datatype=datatype, raw=())
    getattr(r.inputs[0].contents, field_name).extend(values)
    return _bytes(r)


def _param(r: pb.ModelInferRequest, key: str, **value) -> bytes:
    r.parameters[key].CopyFrom(pb.InferParameter(**value))
    return _bytes(r)


def _answer(expect_nan: bool = False, id_length: int | None = None):
    """A check of an OK answer: shapes [2, 3], probabilities summing to 1 (or NaN), the id."""

    def check(data: bytes) -> str | None:
        response = pb.ModelInferResponse.FromString(data)
        outputs = {
            t.name: np.frombuffer(raw, np.float32).reshape(tuple(t.shape))
            for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }
        if set(outputs) != {"logits", "probabilities"}:
            return f"outputs {sorted(outputs)}"
        p = outputs["probabilities"]
        if p.shape != (2, 3):
            return f"probabilities shape {p.shape}"
        if expect_nan and not np.isnan(p[0]).all():
            return f"row 0 should be NaN, got {p[0]}"
        finite_rows = p[1:] if expect_nan else p
        if not np.allclose(finite_rows.sum(axis=1), 1, atol=1e-5):
            return f"probabilities do not sum to 1: {finite_rows}"
        if id_length is not None and len(response.id) != id_length:
            return f"echoed id has {len(response.id)} characters, expected {id_length}"
        return None

    return check


# The raw-row model "raw": features FP32 [-1, 3], color and size BYTES [-1, 1].
RAW_X = np.array([[1.0, np.nan, 3.0], [0.5, 0.25, np.nan]], np.float32)
RAW_STRINGS = {"color": [b"red", b"\xe7\xb4\x85"], "size": [b"XL", b""]}


def _length_prefixed(values: list[bytes]) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def _raw_rows(
    edit: Callable[[dict], object] | None = None, typed: bool = False
) -> pb.ModelInferRequest:
    """A valid request to "raw" unless ``edit`` changes its {name: [datatype, shape, data]}
    (data: bytes for raw contents, or a list of bytes for bytes_contents when ``typed``)."""
    tensors = {"features": ["FP32", (2, 3), RAW_X.tobytes()]}
    for name, values in RAW_STRINGS.items():
        tensors[name] = ["BYTES", (2, 1), list(values) if typed else _length_prefixed(values)]
    if edit is not None:
        edit(tensors)
    r = pb.ModelInferRequest(model_name="raw")
    for name, (datatype, shape, data) in tensors.items():
        tensor = r.inputs.add(name=name, datatype=datatype, shape=shape)
        if not typed:
            r.raw_input_contents.append(data)
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(data)
        else:
            tensor.contents.fp32_contents.extend(np.frombuffer(data, np.float32).tolist())
    return r


def _set(name: str, index: int, value) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        tensors[name][index] = value

    return edit


def _raw_rows_answer(data: bytes) -> str | None:
    """A check of the raw-row model's answer: [2, 3] probabilities, finite, summing to 1."""
    response = pb.ModelInferResponse.FromString(data)
    names = [t.name for t in response.outputs]
    if names != ["logits", "probabilities"]:
        return f"outputs {names}"
    p = np.frombuffer(response.raw_output_contents[1], np.float32).reshape(-1, 3)
    if p.shape != (2, 3) or not np.allclose(p.sum(axis=1), 1, atol=1e-5):
        return f"probabilities {p}"
    return None


def _raw_rows_cases() -> list[Case]:
    """BYTES inputs and several inputs per request."""
    not_utf8 = [b"red", b"gr\xffen"]
    return [
        Case("raw rows, BYTES raw (control)", _bytes(_raw_rows()), OK, "",
             check=_raw_rows_answer),
        Case("raw rows, bytes_contents (control)", _bytes(_raw_rows(typed=True)), OK, "",
             check=_raw_rows_answer),
        Case("BYTES raw element not UTF-8",
             _bytes(_raw_rows(_set("color", 2, _length_prefixed(not_utf8)))), INVALID,
             "model 'raw' input 'color': element 1 is not valid UTF-8 (byte 0xff at offset 2"),
        Case("bytes_contents element not UTF-8",
             _bytes(_raw_rows(_set("size", 2, not_utf8), typed=True)), INVALID,
             "model 'raw' input 'size': element 1 is not valid UTF-8"),
        Case("BYTES length past the end",
             _bytes(_raw_rows(_set("color", 2, b"\x09\x00\x00\x00red"))), INVALID,
             "input 'color': element 0 declares 9 bytes, but only 3 remain"),
        Case("BYTES raw cut inside a length",
             _bytes(_raw_rows(_set("color", 2, _length_prefixed([b"red"]) + b"\x01\x00"))),
             INVALID, "input 'color': raw contents end (9 bytes) inside the 4-byte length of "
             "element 1"),
        Case("BYTES raw with bytes left over",
             _bytes(_raw_rows(_set("color", 2, _length_prefixed([b"a", b"b", b"c"])))),
             INVALID, "input 'color': raw contents hold 15 bytes, 5 more than the 2 BYTES"),
        Case("FP32 sent for a string input",
             _bytes(_raw_rows(_set("color", 0, "FP32"))), INVALID,
             "model 'raw' input 'color': datatype 'FP32', expected BYTES"),
        Case("BYTES sent for the numeric input",
             _bytes(_raw_rows(_set("features", 0, "BYTES"))), INVALID,
             "model 'raw' input 'features': datatype 'BYTES', expected FP32"),
        Case("wrong BYTES element count",
             _bytes(_raw_rows(_set("size", 2, [b"S", b"M", b"L"]), typed=True)), INVALID,
             "input 'size': typed contents hold 3 values, expected 2 (BYTES with shape [2, 1])"),
        Case("BYTES with two columns",
             _bytes(_raw_rows(_set("size", 1, (1, 2)))), INVALID,
             "input 'size': shape [1, 2], expected [-1, 1]"),
        Case("inputs disagree on the batch size",
             _bytes(_raw_rows(lambda t: t["size"].__setitem__(
                 slice(1, 3), [(3, 1), _length_prefixed([b"S", b"M", b"L"])]))),
             INVALID, "inputs disagree on the batch size: {'features': 2, 'color': 2, 'size': 3}"),
        Case("unknown input beside the right ones",
             _bytes(_raw_rows(lambda t: t.__setitem__("colour", t.pop("color")))), INVALID,
             "unknown input 'colour'; expected inputs: 'features', 'color', 'size'"),
        Case("a categorical input missing",
             _bytes(_raw_rows(lambda t: t.pop("size"))), INVALID,
             "model 'raw': missing input 'size' (BYTES [-1, 1])"),
        Case("the numeric input missing",
             _bytes(_raw_rows(lambda t: t.pop("features"))), INVALID,
             "model 'raw': missing input 'features' (FP32 [-1, 3])"),
    ]  # fmt: skip


def _infer_cases() -> list[Case]:
    nan = X.copy()
    nan[0, 3], nan[0, 5] = np.nan, np.inf
    big = b"\0" * (5 * 1024 * 1024)
    return [
        Case("valid request (control)", _bytes(_request()), OK, "", check=_answer()),
        Case(
            "unknown model",
            _bytes(_request(model="nope")),
            NOT_FOUND,
            "Request for unknown model: 'nope' is not found",
        ),
        Case(
            "unknown version",
            _bytes(_request(model_version="9")),
            NOT_FOUND,
            "model 'clf' has no version '9'",
        ),
        Case(
            "non-numeric version",
            _bytes(_request(model_version="latest\n")),
            INVALID,
            "version string 'latest\\n'",
        ),
        Case(
            "model that failed to load",
            _bytes(_request(model="broken")),
            NOT_FOUND,
            "model: 'broken' is not loaded: failed to load",
        ),
        Case(
            "path-like model name",
            _bytes(_request(model="../clf")),
            NOT_FOUND,
            "unknown model: '../clf'",
        ),
        Case("empty model name", _bytes(_request(model="")), INVALID, "model name is empty"),
        Case(
            "oversized model name",
            _bytes(_request(model="m" * 100_000)),
            INVALID,
            "100000 characters long, at most 255",
        ),
        Case(
            "no inputs",
            _bytes(pb.ModelInferRequest(model_name="clf")),
            INVALID,
            "model 'clf': missing input 'features' (FP32 [-1, 8])",
        ),
        Case(
            "wrong input name",
            _bytes(_request(name="feature")),
            INVALID,
            "unknown input 'feature'; expected inputs: 'features'",
        ),
        Case(
            "extra input",
            _with(
                _request(),
                lambda r: (
                    r.inputs.add(name="extra", datatype="FP32", shape=(2, 8)),
                    r.raw_input_contents.append(X.tobytes()),
                ),
            ),
            INVALID,
            "unknown input 'extra'",
        ),
        Case(
            "duplicate input",
            _with(
                _request(),
                lambda r: (
                    r.inputs.add(name="features", datatype="FP32", shape=(2, 8)),
                    r.raw_input_contents.append(X.tobytes()),
                ),
            ),
            INVALID,
            "input 'features' appears 2 times",
        ),
        Case(
            "unknown requested output",
            _bytes(_request(outputs=("nope",))),
            INVALID,
            "unknown output 'nope'; outputs: 'logits', 'probabilities'",
        ),
        Case(
            "duplicate requested output",
            _bytes(_request(outputs=("logits", "logits"))),
            INVALID,
            "output 'logits' requested 2 times",
        ),
        Case(
            "BYTES for an FP32 input",
            _bytes(_request(datatype="BYTES")),
            INVALID,
            "input 'features': datatype 'BYTES', expected FP32",
        ),
        Case(
            "unknown datatype name",
            _bytes(_request(datatype="float32")),
            INVALID,
            "datatype 'float32', expected FP32",
        ),
        Case("empty datatype", _bytes(_request(datatype="")), INVALID, "datatype '', expected"),
        Case(
            "wrong datatype (FP64)",
            _bytes(_request(datatype="FP64", raw=(X.astype(np.float64).tobytes(),))),
            INVALID,
            "datatype 'FP64', expected FP32",
        ),
        Case(
            "FP16 data for an FP32 model",
            _bytes(_request(datatype="FP16", raw=(X.astype(np.float16).tobytes(),))),
            INVALID,
            "datatype 'FP16', expected FP32",
        ),
        Case("rank 1", _bytes(_request(shape=(16,))), INVALID, "shape [16], expected [-1, 8]"),
        Case("rank 3", _bytes(_request(shape=(2, 8, 1))), INVALID, "shape [2, 8, 1], expected"),
        Case(
            "wrong feature count",
            _bytes(_request(shape=(4, 4))),
            INVALID,
            "shape [4, 4], expected [-1, 8]",
        ),
        Case(
            "negative dimension",
            _bytes(_request(shape=(-2, 8))),
            INVALID,
            "shape [-2, 8] has a negative dimension",
        ),
        Case(
            "dims whose product overflows int64",
            _bytes(_request(shape=(2**62, 8))),
            INVALID,
            f"batch size {2**62} exceeds max_batch_size 64",
        ),
        Case(
            "huge dims of the wrong shape",
            _bytes(_request(shape=(2**40, 2**40))),
            INVALID,
            f"shape [{2**40}, {2**40}], expected [-1, 8]",
        ),
        Case(
            "zero-row batch (refused by design)",
            _bytes(_request(shape=(0, 8), raw=(b"",))),
            INVALID,
            "batch size 0; at least 1 row is required",
        ),
        Case(
            "batch above max_batch_size",
            _bytes(_request(shape=(65, 8), raw=(b"\0" * 65 * 32,))),
            INVALID,
            "batch size 65 exceeds max_batch_size 64",
        ),
        Case(
            "raw contents too small",
            _bytes(_request(raw=(X.tobytes()[:-4],))),
            INVALID,
            "raw contents hold 60 bytes, expected 64 (FP32 with shape [2, 8])",
        ),
        Case(
            "raw contents too large",
            _bytes(_request(raw=(X.tobytes() + b"\0" * 4,))),
            INVALID,
            "raw contents hold 68 bytes, expected 64",
        ),
        Case(
            "raw and typed contents both set",
            _with(_request(), lambda r: r.inputs[0].contents.fp32_contents.extend(X.ravel())),
            INVALID,
            "contents field must not be specified when using raw_input_contents for 'features'",
        ),
        Case(
            "typed contents in the wrong field",
            _typed("int_contents", range(16)),
            INVALID,
            "typed contents are in int_contents, expected fp32_contents for FP32",
        ),
        Case(
            "typed contents of the wrong count",
            _typed("fp32_contents", [1.0] * 15),
            INVALID,
            "typed contents hold 15 values, expected 16",
        ),
        Case(
            "typed contents for FP16 (no such field)",
            _typed("fp32_contents", [1.0] * 16, model="half", datatype="FP16"),
            INVALID,
            "FP16 has no typed contents field; send it in raw_input_contents",
        ),
        Case(
            "more raw blobs than inputs",
            _bytes(_request(raw=(X.tobytes(), X.tobytes()))),
            INVALID,
            "2 raw_input_contents for 1 input(s)",
        ),
        Case(
            "raw blob without any input",
            _bytes(pb.ModelInferRequest(model_name="clf", raw_input_contents=[X.tobytes()])),
            INVALID,
            "1 raw_input_contents for 0 input(s)",
        ),
        Case(
            "input without any data",
            _bytes(_request(raw=())),
            INVALID,
            "input 'features': no data; expected typed contents or raw_input_contents",
        ),
        Case(
            "truncated protobuf",
            _bytes(_request())[:-7],
            INVALID,
            "not a valid ModelInferRequest message",
        ),
        Case(
            "invalid UTF-8 in model_name",
            b"\x0a\x02\xc3\x28",
            INVALID,
            "not a valid ModelInferRequest message",
        ),
        Case(
            "invalid UTF-8 in an input name",
            b"\x0a\x03clf\x22\x04\x0a\x02\xff\xfe",
            INVALID,
            "not a valid ModelInferRequest message",
        ),
        Case(
            "invalid UTF-8 in the request id",
            _bytes(_request()) + b"\x1a\x02\xc3\x28",
            INVALID,
            "not a valid ModelInferRequest message",
        ),
        Case("random bytes", bytes(range(256))[::-7] * 3, INVALID, "not a valid ModelInferRequest"),
        Case(
            "wrong wire type (parses as an unknown field)",
            b"\x08\x05",
            INVALID,
            "model name is empty",
        ),
        Case(
            "parameter of the wrong type (priority as string)",
            _param(_request(), "priority", string_param="high"),
            INVALID,
            "parameter 'priority' is string_param, expected int64_param or uint64_param",
        ),
        Case(
            "negative timeout parameter",
            _param(_request(), "timeout", int64_param=-5),
            INVALID,
            "parameter 'timeout' is -5, expected >= 0",
        ),
        Case(
            "parameter without a value",
            _param(_request(), "priority"),
            INVALID,
            "parameter 'priority' is no value, expected",
        ),
        Case(
            "sequence parameter for a non-sequence model",
            _param(_request(), "sequence_id", int64_param=7),
            INVALID,
            "is not a sequence model",
        ),
        Case(
            "output parameter 'classification'",
            _with(
                _request(outputs=("probabilities",)),
                lambda r: (
                    r.outputs[0]
                    .parameters["classification"]
                    .CopyFrom(pb.InferParameter(int64_param=2))
                ),
            ),
            INVALID,
            "output 'probabilities': parameter 'classification' is not supported",
        ),
        Case(
            "message above the size limit",
            _bytes(_request(raw=(big,))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
        ),
        Case(
            "NaN and inf inputs (default policy: computed)",
            _bytes(_request(raw=(nan.tobytes(),))),
            OK,
            "",
            check=_answer(expect_nan=True),
        ),
        Case(
            "100 000-character request id (echo bounded)",
            _bytes(_request(id="r" * 100_000)),
            OK,
            "",
            check=_answer(id_length=256),
        ),
        Case(
            "request id with control characters",
            _bytes(_request(id="a\nb\x00c\u2028d")),
            OK,
            "",
            check=_answer(id_length=7),
        ),
    ]


def _control_cases() -> list[Case]:
    return [
        Case(
            "ModelMetadata of an unknown model",
            _bytes(pb.ModelMetadataRequest(name="nope")),
            NOT_FOUND,
            "Request for unknown model: 'nope' is not found",
            method="ModelMetadata",
        ),
        Case(
            "undecodable ModelMetadata request",
            b"\x0a\x05ab",
            INVALID,
            "not a valid ModelMetadataRequest message",
            method="ModelMetadata",
        ),
        Case(
            "model load without --allow-model-control",
            _bytes(pb.RepositoryModelLoadRequest(model_name="clf")),
            grpc.StatusCode.PERMISSION_DENIED,
            "RepositoryModelLoad is disabled on this server; start it with --allow-model-control",
            method="RepositoryModelLoad",
        ),
        Case(
            "unimplemented RPC",
            b"",
            grpc.StatusCode.UNIMPLEMENTED,
            "TraceSetting is not implemented",
            method="TraceSetting",
        ),
    ]


def cases() -> list[Case]:
    """Every class of the matrix, in the order it is printed."""
    return _infer_cases() + _raw_rows_cases() + _control_cases()


def send(
    channel: grpc.Channel, case: Case, timeout: float = 10.0
) -> tuple[grpc.StatusCode, str, bytes]:
    """Send ``case`` as raw bytes: (status, message, response bytes)."""
    call = channel.unary_unary(SERVICE + case.method)  # no serializers: bytes in, bytes out
    try:
        return OK, "", call(case.payload, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", b""


def judge(case: Case, code: grpc.StatusCode, message: str, response: bytes) -> str | None:
    """None when the answer is right, else what is wrong with it."""
    if code != case.code:
        return f"status {code.name}, expected {case.code.name}"
    if case.fragment not in message:
        return f"message lacks {case.fragment!r}"
    if LEAKS.search(message):
        return f"message leaks internals: {LEAKS.search(message).group(0)!r}"
    if code == OK and case.check is not None:
        return case.check(response)
    return None


def write_repository(root: Path) -> Path:
    """clf (FP32 classifier), half (FP16 classifier), broken (a truncated model file), raw (a
    raw-row classifier: features FP32 [3], color and size BYTES [1])."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
    from models import config_text, mlp_model, raw_config_text, raw_model, write_model

    write_model(root, "clf", mlp_model(), config_text("clf"))
    write_model(root, "raw", raw_model(seed=4), raw_config_text("raw"))
    write_model(root, "half", mlp_model(fp16=True, seed=2), config_text("half", fp16=True))
    path = write_model(root, "broken", mlp_model(seed=3), config_text("broken"))
    path.write_bytes(path.read_bytes()[:100])
    return root


def run(url: str) -> list[Outcome]:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(url, options=options) as channel:
        outcomes = []
        for case in cases():
            code, message, response = send(channel, case)
            outcomes.append(Outcome(case, code, message, judge(case, code, message, response)))
    return outcomes


def _print(outcomes: list[Outcome]) -> None:
    print("| # | class | expected | got | result | message |\n|---|---|---|---|---|---|")
    for i, o in enumerate(outcomes, 1):
        result = "PASS" if o.problem is None else f"FAIL: {o.problem}"
        message = o.message if len(o.message) < 240 else o.message[:237] + "..."
        print(
            f"| {i} | {o.case.label} | {o.case.code.name} | {o.code.name} | {result} | "
            f"{message.replace('|', '/')} |"
        )
    failed = sum(o.problem is not None for o in outcomes)
    print(f"\n{len(outcomes) - failed} of {len(outcomes)} classes answered as expected")


# -- the HTTP side (serve/http.py) ------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    """One bad HTTP request: sent with http.client, or as ``raw`` bytes on a bare socket
    (``half_close``: then the client shuts its sending side, as a truncated upload does)."""

    label: str
    status: int
    fragment: str
    method: str = "POST"
    path: str = "/v2/models/clf/infer"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    half_close: bool = False


_ONE = {"name": "features", "datatype": "FP32", "shape": [2, 8], "data": X.ravel().tolist()}


def _json(inputs=None, **fields) -> bytes:
    return json.dumps({"inputs": [_ONE] if inputs is None else inputs, **fields}).encode()


def _tensor(**edits) -> bytes:
    return _json([{**_ONE, **edits}])


def _binary(size: int, header_length: int | None = None) -> tuple[bytes, tuple]:
    tensor = {k: v for k, v in _ONE.items() if k != "data"}
    tensor["parameters"] = {"binary_data_size": size}
    header = json.dumps({"inputs": [tensor]}).encode()
    length = len(header) if header_length is None else header_length
    return header + X.tobytes(), (("Inference-Header-Content-Length", str(length)),)


def _raw_json(**columns) -> bytes:
    """A JSON request to "raw"; ``columns`` replace the data of color/size (None: leave out)."""
    data = {"color": ["red", "blue"], "size": ["S", ""]} | columns
    inputs = [{"name": "features", "datatype": "FP32", "shape": [2, 3], "data": [0.5] * 6}]
    inputs += [
        {"name": name, "datatype": "BYTES", "shape": [2, 1], "data": values}
        for name, values in data.items()
        if values is not None
    ]
    return json.dumps({"inputs": inputs}).encode()


def _raw_binary(first: bytes, tail: bytes = b"") -> tuple[bytes, tuple]:
    """ "raw" with color as binary data: elements ``first`` and "red", then ``tail`` (framing
    left to the caller) in place of the second when given."""
    color = (len(first).to_bytes(4, "little") + first) + (tail or b"\x03\x00\x00\x00red")
    inputs = [
        {"name": "features", "datatype": "FP32", "shape": [2, 3], "data": [0.5] * 6},
        {"name": "color", "datatype": "BYTES", "shape": [2, 1],
         "parameters": {"binary_data_size": len(color)}},
        {"name": "size", "datatype": "BYTES", "shape": [2, 1], "data": ["S", "M"]},
    ]  # fmt: skip
    header = json.dumps({"inputs": inputs}).encode()
    return header + color, (("Inference-Header-Content-Length", str(len(header))),)


def _post(path: str, body: bytes, extra: str = "", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {size}\r\n\r\n"
    return head.encode() + body


def http_cases() -> list[HttpCase]:
    """Every class of bad HTTP request, with the status and message fragment it must get."""
    infer = "/v2/models/clf/infer"
    return [
        HttpCase("unknown route", 404, "unknown route '/nowhere'", "GET", "/nowhere"),
        HttpCase("wrong method", 405, "takes GET, not DELETE", "DELETE", "/v2/models/clf"),
        HttpCase("GET on infer", 405, "takes POST, not GET", "GET", infer),
        HttpCase("unknown model", 404, "unknown model: 'nope'", "GET", "/v2/models/nope"),
        HttpCase("unknown version", 404, "version", "GET", "/v2/models/clf/versions/9"),
        HttpCase("model not loaded", 404, "is not loaded", "GET", "/v2/models/broken"),
        HttpCase("infer unknown model", 404, "unknown model: 'nope'", path="/v2/models/nope/infer"),
        HttpCase("malformed JSON", 400, "is not valid JSON", body=b"{not json"),
        HttpCase("empty body", 400, "is not valid JSON"),
        HttpCase("JSON not an object", 400, "must be a JSON object, got an array", body=b"[1]"),
        HttpCase("no inputs", 400, "request has no 'inputs'", body=b"{}"),
        HttpCase("inputs not an array", 400, "'inputs' must be an array", body=b'{"inputs": 1}'),
        HttpCase("input not an object", 400, "input 0: must be an object", body=_json([7])),
        HttpCase("input without a name", 400, "'name' is missing", body=_json([{"shape": [1]}])),
        HttpCase("id not a string", 400, "'id' must be a string", body=_json(id=5)),
        HttpCase("strings as data", 400, "must hold numbers for FP32, got strings",
                 body=_tensor(data=["a"] * 16)),
        HttpCase("null and strings in data", 400, "must hold numbers for FP32",
                 body=_tensor(data=[None, "a"] * 8)),
        HttpCase("data not an array", 400, "'data' must be an array", body=_tensor(data=1.5)),
        HttpCase("ragged data", 400, "ragged", body=_tensor(data=[[1.0, 2.0], [3.0]])),
        HttpCase("shape not an array", 400, "'shape' must be an array", body=_tensor(shape="2x8")),
        HttpCase("shape of floats", 400, "array of integers", body=_tensor(shape=[2.0, 8])),
        HttpCase("shape missing", 400, "'shape' is missing",
                 body=_json([{k: v for k, v in _ONE.items() if k != "shape"}])),
        HttpCase("too few values", 400, "typed contents hold 8 values, expected 16",
                 body=_tensor(data=[0.5] * 8)),
        HttpCase("batch over max_batch_size", 400, "exceeds max_batch_size 64",
                 body=_tensor(shape=[65, 8], data=[0.5] * 520)),
        HttpCase("wrong datatype", 400, "datatype 'FP64', expected FP32",
                 body=_tensor(datatype="FP64")),
        HttpCase("numbers as BYTES data", 400,
                 "input 'color': 'data' must hold strings for BYTES, got a number at element 1",
                 path="/v2/models/raw/infer", body=_raw_json(color=["red", 7])),
        HttpCase("BYTES binary not UTF-8", 400,
                 "model 'raw' input 'color': element 0 is not valid UTF-8",
                 path="/v2/models/raw/infer", body=_raw_binary(b"\xc3\x28")[0],
                 headers=_raw_binary(b"\xc3\x28")[1]),
        HttpCase("BYTES binary length past the end", 400,
                 "input 'color': element 1 declares 200 bytes, but only 0 remain",
                 path="/v2/models/raw/infer",
                 body=_raw_binary(b"ok", b"\xc8\x00\x00\x00")[0],
                 headers=_raw_binary(b"ok", b"\xc8\x00\x00\x00")[1]),
        HttpCase("string input missing", 400, "model 'raw': missing input 'size' (BYTES [-1, 1])",
                 path="/v2/models/raw/infer", body=_raw_json(size=None)),
        HttpCase("FP16 as JSON", 400, "FP16 has no JSON form", path="/v2/models/half/infer",
                 body=_tensor(datatype="FP16")),
        HttpCase("unknown output", 400, "unknown output 'nope'",
                 body=_json(outputs=[{"name": "nope"}])),
        HttpCase("output without a name", 400, "each of 'outputs' must be an object",
                 body=_json(outputs=[3])),
        HttpCase("parameter of a wrong type", 400, "must be a boolean, number or string",
                 body=_json(parameters={"sequence_id": [1]})),
        HttpCase("classification asked for", 400, "'classification' is not supported",
                 body=_json(outputs=[{"name": "logits", "parameters": {"classification": 2}}])),
        HttpCase("binary sizes short of the body", 400, "add up to 32 bytes, but 64 bytes follow",
                 body=_binary(32)[0], headers=_binary(32)[1]),
        HttpCase("binary size past the body", 400, "binary_data_size 65 at offset 0 runs past",
                 body=_binary(65)[0], headers=_binary(65)[1]),
        HttpCase("header length past the body", 400, "Inference-Header-Content-Length is 99999",
                 body=_binary(64)[0], headers=_binary(64, 99999)[1]),
        HttpCase("header length not a number", 400, "must be a number of bytes", body=b"{}",
                 headers=(("Inference-Header-Content-Length", "-3"),)),
        HttpCase("header length cuts the JSON", 400, "is not valid JSON",
                 body=_binary(64)[0], headers=_binary(64, 20)[1]),
        HttpCase("compressed body", 415, "Content-Encoding 'gzip'", body=b"{}",
                 headers=(("Content-Encoding", "gzip"),)),
        HttpCase("model control off", 403, "--allow-model-control",
                 path="/v2/repository/models/clf/unload"),
        HttpCase("index flag not a boolean", 400, "'ready' must be a boolean",
                 path="/v2/repository/index", body=b'{"ready": 1}'),
        HttpCase("not HTTP", 400, "malformed HTTP request", raw=b"NOT HTTP AT ALL\r\n\r\n"),
        HttpCase("huge declared body", 413, "exceeds this server's limit",
                 raw=_post(infer, b"", length=2**40)),
        HttpCase("headers past 64 KiB", 431, "exceed 65536 bytes",
                 raw=b"GET /v2 HTTP/1.1\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n"),
        HttpCase("two Content-Length", 400, "Duplicate Content-Length",
                 raw=_post(infer, b"{}", extra="Content-Length: 2\r\n")),
        HttpCase("truncated body", 400, "request truncated: the client closed its side after 10",
                 raw=_post(infer, _json()[:10], length=len(_json())), half_close=True),
    ]  # fmt: skip


def send_http(url: str, case: HttpCase, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, error message or body text) of ``case``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    if case.raw is None:
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            connection.request(case.method, case.path, case.body, dict(case.headers))
            answer = connection.getresponse()
            status, kind, data = answer.status, answer.getheader("content-type", ""), answer.read()
        finally:
            connection.close()
    else:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(case.raw)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        head, _, data = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        kind = "application/json" if b"content-type: application/json" in head.lower() else ""
    try:
        message = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        message = data[:300].decode("utf-8", "replace")
    return status, kind, message


def judge_http(case: HttpCase, status: int, kind: str, message: str) -> str | None:
    """None when the answer is right, else what is wrong with it."""
    if status != case.status:
        return f"status {status}, expected {case.status}"
    if kind != "application/json":
        return f"content type {kind!r}, expected application/json"
    if case.fragment not in message:
        return f"message lacks {case.fragment!r}"
    if LEAKS.search(message):
        return f"message leaks internals: {LEAKS.search(message).group(0)!r}"
    return None


def run_http(url: str) -> list[tuple[HttpCase, int, str, str | None]]:
    outcomes = []
    for case in http_cases():
        status, kind, message = send_http(url, case)
        outcomes.append((case, status, message, judge_http(case, status, kind, message)))
    return outcomes


def _print_http(outcomes) -> None:
    print("\n| # | HTTP class | expected | got | result | message |\n|---|---|---|---|---|---|")
    for i, (case, status, message, problem) in enumerate(outcomes, 1):
        result = "PASS" if problem is None else f"FAIL: {problem}"
        message = message if len(message) < 240 else message[:237] + "..."
        print(
            f"| {i} | {case.label} | {case.status} | {status} | {result} | "
            f"{message.replace('|', '/')} |"
        )
    failed = sum(problem is not None for *_, problem in outcomes)
    print(f"\n{len(outcomes) - failed} of {len(outcomes)} HTTP classes answered as expected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server with models clf, half, broken")
    parser.add_argument("--http-url", help="its HTTP side, http://HOST:PORT (with --url)")
    args = parser.parse_args(argv)
    http_outcomes = []
    if args.url:
        outcomes = run(args.url)
        http_outcomes = run_http(args.http_url) if args.http_url else []
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
        from conftest import run_server

        with tempfile.TemporaryDirectory() as tmp:
            repo = write_repository(Path(tmp))
            with run_server("--model-repository", str(repo), "--device", "cpu") as server:
                outcomes = run(server.url)
                http_outcomes = run_http(server.http_url)
                print(f"server: {server.ready_line.strip()}")
    _print(outcomes)
    _print_http(http_outcomes)
    ok = all(o.problem is None for o in outcomes)
    return 0 if ok and all(problem is None for *_, problem in http_outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
