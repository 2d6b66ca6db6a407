"""HTTP/REST beside gRPC (serve/http.py): tritonclient.http, plain HTTP, errors, limits."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import onnxruntime as ort
import pytest
from bnmodel.serve.client import InferenceClient
from bnmodel.serve.dataplane import DataPlane
from bnmodel.serve.http import HttpApp, HttpServer
from bnmodel.serve.http_client import HttpInferenceClient

SCRIPT = Path(__file__).with_name("triton_http_check.py")
X = np.random.default_rng(3).normal(size=(5, 8)).astype(np.float32)


def _triton(url: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), url, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _reference(repository: Path, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"features": x}), strict=True))


def _request(url: str, method: str, path: str, body: bytes = b"", headers=None):
    """(status, headers, body) of one request on a fresh connection."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _raw(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is on a new connection; everything the server answers until it closes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _infer_body(x: np.ndarray, **extra) -> bytes:
    tensor = {"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize(
    ("model", "dtype", "mode"),
    [("clf", np.float32, "json"), ("clf", np.float32, "binary"), ("half", np.float16, "binary")],
)
def test_tritonclient_http_matches_onnxruntime(server, repository, tmp_path, model, dtype, mode):
    rng = np.random.default_rng(0)
    batches = {str(n): rng.normal(size=(n, 8)).astype(dtype) for n in (1, 7, 64)}
    np.savez(tmp_path / "in.npz", **batches)
    inputs, outputs = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    _triton(server.http_url, "infer", model, inputs, outputs, mode)
    got = np.load(outputs)
    for n, x in batches.items():
        for name, expected in _reference(repository, model, x).items():
            assert got[f"{n}/{name}"].dtype == expected.dtype
            np.testing.assert_allclose(got[f"{n}/{name}"], expected, rtol=1e-6, atol=1e-6)


def test_tritonclient_http_control_plane(server):
    result = _triton(server.http_url, "control", "clf")
    assert result["live"] and result["ready"] and result["model_ready"]
    assert result["server"]["name"] == "bnmodel"
    assert result["metadata"]["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 8]}
    ]
    assert result["config"]["max_batch_size"] == 64 and result["config"]["input"][0]["dims"] == [8]
    assert result["stats"]["model_stats"][0]["name"] == "clf"
    assert isinstance(result["stats"]["model_stats"][0]["inference_count"], int)
    assert result["index"] == ["clf", "half", "reg"]
    assert result["ready_after_unload"] is False and result["ready_after_load"] is True
    assert result["missing_model"].startswith("404 unknown model 'no-such-model'")


def test_plain_json_matches_grpc_beside_it(server, repository):
    status, headers, body = _request(
        server.http_url, "POST", "/v2/models/reg/infer", _infer_body(X, id="r1")
    )
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["model_name"] == "reg" and answer["id"] == "r1"
    (output,) = answer["outputs"]
    assert output["name"] == "predictions" and output["datatype"] == "FP32"
    values = np.asarray(output["data"], np.float32).reshape(output["shape"])
    with InferenceClient(server.url) as client:  # gRPC, same process, same answer
        np.testing.assert_array_equal(values, client.infer("reg", X)["predictions"])
    np.testing.assert_allclose(values, _reference(repository, "reg", X)["predictions"], rtol=1e-6)


def test_nested_and_flat_data_and_mixed_binary_outputs(server):
    flat = {"name": "features", "datatype": "FP32", "shape": [5, 8], "data": X.ravel().tolist()}
    outputs = [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "logits"}]
    document = json.dumps({"inputs": [flat], "outputs": outputs}).encode()
    status, headers, body = _request(server.http_url, "POST", "/v2/models/clf/infer", document)
    assert status == 200, body
    length = int(headers["inference-header-content-length"])
    header = json.loads(body[:length])
    probabilities, logits = header["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 5 * 3 * 4 == len(body) - length
    with HttpInferenceClient(server.http_url) as client:
        expected = client.infer("clf", X)
    got = np.frombuffer(body[length:], np.float32).reshape(5, 3)
    np.testing.assert_array_equal(got, expected["probabilities"])
    np.testing.assert_allclose(np.reshape(logits["data"], (5, 3)), expected["logits"], rtol=1e-6)


def _binary_body(x: np.ndarray, size: int | None = None) -> tuple[bytes, dict]:
    raw = x.tobytes()
    tensor = {"name": "features", "datatype": "FP32", "shape": list(x.shape)}
    tensor["parameters"] = {"binary_data_size": len(raw) if size is None else size}
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


ONE = {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}
BAD_REQUESTS = [
    # (method, path, body, headers, status, part of the error message)
    ("GET", "/nowhere", b"", {}, 404, "unknown route '/nowhere'"),
    ("DELETE", "/v2/models/clf", b"", {}, 405, "takes GET, not DELETE"),
    ("GET", "/v2/models/clf/infer", b"", {}, 405, "takes POST, not GET"),
    ("GET", "/v2/models/nope", b"", {}, 404, "unknown model 'nope'; loaded models"),
    ("GET", "/v2/models/clf/versions/9", b"", {}, 404, "version"),
    ("POST", "/v2/models/nope/infer", b"{}", {}, 404, "unknown model 'nope'"),
    ("POST", "/v2/models/clf/infer", b"{not json", {}, 400, "is not valid JSON"),
    ("POST", "/v2/models/clf/infer", b"[1, 2]", {}, 400, "must be a JSON object, got an array"),
    ("POST", "/v2/models/clf/infer", b"{}", {}, 400, "request has no 'inputs'"),
    ("POST", "/v2/models/clf/infer", b'{"inputs": {}}', {}, 400, "'inputs' must be an array"),
    ("POST", "/v2/models/clf/infer", b'{"inputs": [7]}', {}, 400, "input 0: must be an object"),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [{**ONE, "data": ["a"] * 8}]}).encode(),
        {},
        400,
        "'data' must hold numbers for FP32, got strings",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [{**ONE, "shape": "1x8"}]}).encode(),
        {},
        400,
        "'shape' must be an array, got a string",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [{**ONE, "data": [[1, 2], [3]]}]}).encode(),
        {},
        400,
        "ragged",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [{**ONE, "data": [0.5] * 7}]}).encode(),
        {},
        400,
        "model 'clf' input 'features': typed contents hold 7 values, expected 8",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [{**ONE, "shape": [65, 8], "data": [0.5] * 520}]}).encode(),
        {},
        400,
        "batch size 65 exceeds max_batch_size 64",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [{**ONE, "datatype": "FP64"}]}).encode(),
        {},
        400,
        "datatype 'FP64', expected FP32",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [ONE], "outputs": [{"name": "nope"}]}).encode(),
        {},
        400,
        "unknown output 'nope'",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        json.dumps({"inputs": [ONE], "parameters": {"sequence_id": [1]}}).encode(),
        {},
        400,
        "parameter 'sequence_id' must be a boolean, number or string, got an array",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        *_binary_body(np.ones((2, 8), np.float32), size=32),
        400,
        "the inputs' binary_data_size add up to 32 bytes, but 64 bytes follow",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        *_binary_body(np.ones((2, 8), np.float32), size=65),
        400,
        "binary_data_size 65 at offset 0 runs past the 64 bytes",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        _binary_body(np.ones((2, 8), np.float32))[0],
        {"Inference-Header-Content-Length": "99999"},
        400,
        "Inference-Header-Content-Length is 99999, but the body holds",
    ),
    (
        "POST",
        "/v2/models/clf/infer",
        b"{}",
        {"Inference-Header-Content-Length": "-3"},
        400,
        "must be a number of bytes",
    ),
    ("POST", "/v2/repository/index", b'{"ready": 1}', {}, 400, "'ready' must be a boolean"),
    ("POST", "/v2/repository/models/nope/load", b"", {}, 404, "nope"),
    ("POST", "/v2/models/clf/infer", b"{}", {"Content-Encoding": "gzip"}, 415, "gzip"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    BAD_REQUESTS,
    ids=[f"{i}-{r[-1][:30]}" for i, r in enumerate(BAD_REQUESTS)],
)
def test_bad_requests_get_a_4xx_with_a_json_error(
    server, method, path, body, headers, status, message
):
    got, answer_headers, answer = _request(server.http_url, method, path, body, headers)
    assert got == status, answer
    assert answer_headers["content-type"] == "application/json"
    error = json.loads(answer)["error"]
    assert message in error and "Traceback" not in error


def test_the_error_texts_are_the_grpc_ones(server):
    """One decoding and validation path: the same request gets the same words both ways."""
    x = np.ones((2, 7), np.float32)
    with pytest.raises(Exception) as grpc_error, InferenceClient(server.url) as client:
        client.infer("clf", x)
    with pytest.raises(Exception) as http_error, HttpInferenceClient(server.http_url) as client:
        client.infer("clf", x)
    assert grpc_error.value.code == "INVALID_ARGUMENT" and http_error.value.code == "HTTP 400"
    assert grpc_error.value.message == http_error.value.message.replace(server.http_url, server.url)


def test_malformed_http_and_size_limits(server):
    assert _raw(server.http_url, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"POST /v2/models/clf/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
    answer = _raw(server.http_url, huge)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"exceeds this server's limit" in answer
    headers = b"GET /v2 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n"
    assert _raw(server.http_url, headers).startswith(b"HTTP/1.1 431 ")
    upgrade = b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    answer = _raw(server.http_url, upgrade)  # ignored: answered over HTTP/1.1, then closed
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1") == 1


def test_keep_alive_pipelining_and_expect_continue(server):
    body = _infer_body(X)
    one = (
        f"POST /v2/models/clf/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    last = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = _raw(server.http_url, one * 3 + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 4 and answer.count(b'"probabilities"') == 3
    expect = one.replace(
        b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
    )
    assert _raw(server.http_url, expect).startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


def test_infer_command_over_http(server, tmp_path):
    np.save(tmp_path / "rows.npy", X)
    command = [sys.executable, "-m", "bnmodel", "infer", "--url", server.http_url]
    result = subprocess.run(
        [*command, "--model", "clf", "--input", str(tmp_path / "rows.npy")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("class,p_setosa") and len(result.stdout.splitlines()) == 6
    missing = subprocess.run(
        [*command, "--model", "nope", "--input", str(tmp_path / "rows.npy")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "HTTP 404: unknown model 'nope'" in missing.stderr


class _NoModels:
    def names(self) -> list[str]:
        return []

    def source(self, name: str):
        raise AssertionError("no models here")


async def _timeouts() -> tuple[bytes, bytes]:
    app = HttpApp(DataPlane(_NoModels(), factory=None, executor=None))
    server = HttpServer(app, body_limit=1024, request_timeout=0.3, idle_timeout=0.5)
    port = await server.start("127.0.0.1", 0)
    try:
        # A client that stalls half-way through its body: 408 after request_timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v2/repository/index HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}")
        stalled = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        # An idle keep-alive connection: closed after idle_timeout, without an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        idle = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return stalled, idle
    finally:
        await server.close()


def test_slow_and_idle_clients_time_out():
    stalled, idle = asyncio.run(_timeouts())
    assert stalled.startswith(b"HTTP/1.1 408 ") and b"within 0.3 s" in stalled
    assert idle == b""
