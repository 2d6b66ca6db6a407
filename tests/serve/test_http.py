"""HTTP/REST beside gRPC (serve/http.py): tritonclient.http, plain HTTP, keep-alive, timeouts.

The classes of bad request live in tools/bad_request_matrix.py (tests/serve/test_bad_requests.py).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import numpy as np
import pytest
from bnmodel.serve import http as http_module
from bnmodel.serve.client import InferenceClient
from bnmodel.serve.dataplane import DataPlane
from bnmodel.serve.http import HttpServer
from bnmodel.serve.http_app import HttpApp, HttpResponse
from bnmodel.serve.http_client import HttpInferenceClient
from bnmodel.serve.security import LogLimiter
from conftest import onnx_outputs, run_triton_check

X = np.random.default_rng(3).normal(size=(5, 8)).astype(np.float32)


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
    run_triton_check("triton_http_check.py", server.http_url, "infer", model, inputs, outputs, mode)
    got = np.load(outputs)
    for n, x in batches.items():
        for name, expected in onnx_outputs(repository, model, x).items():
            assert got[f"{n}/{name}"].dtype == expected.dtype
            np.testing.assert_allclose(got[f"{n}/{name}"], expected, rtol=1e-6, atol=1e-6)


def test_tritonclient_http_control_plane(server):
    result = run_triton_check("triton_http_check.py", server.http_url, "control", "clf")
    assert result["live"] and result["ready"] and result["model_ready"]
    assert result["server"]["name"] == "bnmodel"
    assert result["metadata"]["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 8]}
    ]
    assert result["config"]["max_batch_size"] == 64 and result["config"]["input"][0]["dims"] == [8]
    assert result["stats"]["model_stats"][0]["name"] == "clf"
    assert isinstance(result["stats"]["model_stats"][0]["inference_count"], int)
    assert result["index"] == ["clf", "half", "raw", "reg"]
    assert result["ready_after_unload"] is False and result["ready_after_load"] is True
    assert result["missing_model"].startswith(
        "404 Request for unknown model: 'no-such-model' is not found"
    )


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
    np.testing.assert_allclose(values, onnx_outputs(repository, "reg", X)["predictions"], rtol=1e-6)


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


def test_the_error_texts_are_the_grpc_ones(server):
    """One decoding and validation path: the same request gets the same words both ways."""
    x = np.ones((2, 7), np.float32)
    with pytest.raises(Exception) as grpc_error, InferenceClient(server.url) as client:
        client.infer("clf", x)
    with pytest.raises(Exception) as http_error, HttpInferenceClient(server.http_url) as client:
        client.infer("clf", x)
    assert grpc_error.value.code == "INVALID_ARGUMENT" and http_error.value.code == "HTTP 400"
    assert grpc_error.value.message == http_error.value.message.replace(server.http_url, server.url)


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


def test_absolute_form_request_targets_are_served_as_their_path(server):
    # RFC 9112 3.2.2: what a client sends through a proxy; the authority is not checked.
    host = server.http_url.removeprefix("http://")
    for target in (f"http://{host}/v2/models/clf", "HTTP://other:1/v2/models/clf?x=1"):
        answer = _raw(server.http_url, f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                      "Connection: close\r\n\r\n".encode())  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 200 OK") and b'"name":"clf"' in answer, answer
    bare = _raw(
        server.http_url, f"GET http://{host} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert bare.startswith(b"HTTP/1.1 404") and b"'/'" in bare, bare  # the path is "/"


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
    assert (
        missing.returncode == 1 and "HTTP 404: Request for unknown model: 'nope'" in missing.stderr
    )


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


def test_either_side_can_be_turned_off(repository):
    from bnmodel.serve.settings import ServerSettings, SettingsError
    from conftest import run_server

    with run_server("--model-repository", str(repository), "--no-grpc") as server:
        assert "(HTTP)" in server.ready_line and "(gRPC)" not in server.ready_line
        assert server.url == server.http_url.removeprefix("http://")
        assert _request(server.http_url, "GET", "/v2/health/ready")[0] == 200
    with run_server("--model-repository", str(repository), "--no-http") as server:
        assert server.http_url == "" and "(HTTP)" not in server.ready_line
        with InferenceClient(server.url) as client:
            assert client.server_ready()
    with pytest.raises(SettingsError, match="leave nothing to serve"):
        ServerSettings(model_repository=repository, http=False, grpc=False)


async def _unread_answers() -> bool:
    """A client that pipelines requests and never reads: the server stops answering (no
    unbounded buffer) and closes the connection after request_timeout."""
    app = HttpApp(DataPlane(_NoModels(), factory=None, executor=None))
    server = HttpServer(app, body_limit=1024, request_timeout=0.5, idle_timeout=5)
    port = await server.start("127.0.0.1", 0)
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        request = b"GET /v2/models/x/stats HTTP/1.1\r\nHost: x\r\n\r\n" * 200
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            try:
                sock.send(request)
            except BlockingIOError:
                await asyncio.sleep(0.05)
            except (ConnectionResetError, BrokenPipeError):
                return True  # closed by the server
            if not server.connections:
                return True
            await asyncio.sleep(0)
        return False
    finally:
        sock.close()
        await server.close()


def test_a_client_that_never_reads_is_cut_off():
    assert asyncio.run(_unread_answers())


_HOLD_CONNECTIONS = r"""
import socket, sys
port = int(sys.stdin.readline())
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
print("connected", flush=True)
sys.stdin.readline()
"""


async def _out_of_files() -> None:
    """A server whose open-file limit 40 client connections exceed (the clients in a process
    of their own, whose descriptors do not count); then one more client once they left."""
    server = HttpServer(_StaticApp(), 1000)
    port = await server.start("127.0.0.1", 0, fd_check_s=0.1)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CONNECTIONS], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 10, hard))
        holder.stdin.write(f"{port}\n".encode())
        holder.stdin.flush()
        assert await asyncio.to_thread(holder.stdout.readline) == b"connected\n"
        await asyncio.sleep(0.5)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        holder.communicate(b"\n", timeout=10)
    await asyncio.sleep(1.2)  # asyncio retries accepting after 1 s
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
    await server.close()


class _StaticApp:
    def handle(self, request):
        return HttpResponse(200, b"")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_running_out_of_file_descriptors_is_one_log_line_and_serving_resumes(
    loop, caplog, monkeypatch
):
    monkeypatch.setattr(http_module, "_fd_log", LogLimiter(http_module.log, 1 / 60, 1))
    with caplog.at_level("WARNING", logger="bnmodel.serve"):
        if loop == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            uvloop.run(_out_of_files())
        else:
            asyncio.run(_out_of_files())
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and "ulimit -n" in lines[0], caplog.text  # once, not per accept
