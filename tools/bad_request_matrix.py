"""The bad-request matrix: every class of malformed request, its expected status and message.

    python tools/bad_request_matrix.py                 # starts its own server, prints the matrix
    python tools/bad_request_matrix.py --url H:P       # against a running server (model "clf"...)

Each class is sent as raw bytes (a generic ``unary_unary`` call, no client-side checks) to a
server started with the default policy (NaN accepted, model control off). A class passes when
the status is the expected one, the message holds the expected fragment and no internals
(exception names, numpy/struct text, ONNX Runtime dumps), and an OK answer is right.
tests/serve/test_bad_requests.py asserts the same cases; exit status 1 if any class fails.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from bnmodel.serve.proto import grpc_service_pb2 as pb

__all__ = ["Case", "Outcome", "LEAKS", "cases", "send", "judge", "write_repository", "main"]

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


def _infer_cases() -> list[Case]:
    nan = X.copy()
    nan[0, 3], nan[0, 5] = np.nan, np.inf
    big = b"\0" * (5 * 1024 * 1024)
    return [
        Case("valid request (control)", _bytes(_request()), OK, "", check=_answer()),
        Case("unknown model", _bytes(_request(model="nope")), NOT_FOUND, "unknown model 'nope'"),
        Case(
            "unknown version",
            _bytes(_request(model_version="9")),
            NOT_FOUND,
            "model 'clf' has no version '9'",
        ),
        Case(
            "non-numeric version",
            _bytes(_request(model_version="latest\n")),
            NOT_FOUND,
            "has no version 'latest\\n'",
        ),
        Case(
            "model that failed to load",
            _bytes(_request(model="broken")),
            NOT_FOUND,
            "model 'broken' is not loaded",
        ),
        Case(
            "path-like model name",
            _bytes(_request(model="../clf")),
            NOT_FOUND,
            "unknown model '../clf'",
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
            "unsupported datatype (BYTES)",
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
            "both raw_input_contents and typed contents (input 'features')",
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
            "unknown model 'nope'",
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
            "CudaSharedMemoryRegister is not implemented",
            method="CudaSharedMemoryRegister",
        ),
    ]


def cases() -> list[Case]:
    """Every class of the matrix, in the order it is printed."""
    return _infer_cases() + _control_cases()


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
    """clf (FP32 classifier), half (FP16 classifier), broken (a truncated model file)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
    from models import config_text, mlp_model, write_model

    write_model(root, "clf", mlp_model(), config_text("clf"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server with models clf, half, broken")
    args = parser.parse_args(argv)
    if args.url:
        outcomes = run(args.url)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
        from conftest import run_server

        with tempfile.TemporaryDirectory() as tmp:
            repo = write_repository(Path(tmp))
            with run_server("--model-repository", str(repo), "--device", "cpu") as server:
                outcomes = run(server.url)
                print(f"server: {server.ready_line.strip()}")
    _print(outcomes)
    return 0 if all(o.problem is None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
