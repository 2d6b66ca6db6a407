"""Fuzz a running server with mutated ModelInfer requests, judged by an independent oracle.

    python tools/fuzz_server.py --requests 30000 --seed 6 --seconds 600

A valid request for model "clf" (FP32) or "half" (FP16) is built, then mutated at the message
level (names, datatypes, shapes, contents, outputs, parameters, ids) and/or at the byte level
(flips, cuts, inserts). :func:`expect` restates the protocol contract on its own to say what
the answer must be: OK with the model's values (checked against ONNX Runtime in this process),
NOT_FOUND, or INVALID_ARGUMENT. Never INTERNAL or UNKNOWN. The server must be alive and SERVING
afterwards. tests/serve/test_fuzz.py drives :class:`Fuzzer` from hypothesis.
"""

from __future__ import annotations

import argparse
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
        ("timeout", {"uint64_param": 5}),
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
    if m.model_name not in SPECS or m.model_version not in ("", "1"):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=600, help="stop early after this long")
    parser.add_argument("--threads", type=int, default=4, help="concurrent client calls")
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
