"""Dynamic batching, statistics and metrics through a real server process.

Many clients with mixed batch sizes each get exactly the rows ONNX Runtime computes for their
own input; ModelStatistics and the Prometheus endpoint count exactly the requests sent; a request
whose deadline passes in the queue never runs; a full queue answers RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from bnmodel.serve.client import InferenceClient, InferenceServerError
from conftest import run_server
from models import FEATURES, config_text, mlp_model, write_model

ROWS = (1, 2, 3, 5, 8, 13)
CLIENTS, PER_CLIENT = 8, 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    path = write_model(root, "clf", mlp_model(seed=5), config_text("clf"))
    port = _free_port()
    # A 2 ms window makes requests from several clients meet in one batch. Every run on a
    # thread (--max-inline-us 0): an inline run never leaves a queue behind it to merge.
    args = ("--model-repository", str(root), "--metrics-port", str(port), "--max-inline-us", "0")
    with run_server(*args, "--max-queue-delay-us", "2000") as running:
        yield running, path, port


def _client_work(url: str, seed: int, session: ort.InferenceSession) -> int:
    rng = np.random.default_rng(seed)
    rows_sent = 0
    with InferenceClient(url, timeout=30) as client:
        for i in range(PER_CLIENT):
            rows = ROWS[(seed + i) % len(ROWS)]
            x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
            got = client.infer("clf", x)
            expected = session.run(["logits", "probabilities"], {"features": x})
            for name, value in zip(["logits", "probabilities"], expected, strict=True):
                np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
            rows_sent += rows
    return rows_sent


def test_mixed_concurrent_clients_get_their_own_rows_and_every_request_is_counted(
    batching_server,
):
    server, path, metrics_port = batching_server
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with ThreadPoolExecutor(CLIENTS) as pool:
        rows = sum(pool.map(lambda s: _client_work(server.url, s, session), range(CLIENTS)))
    requests = CLIENTS * PER_CLIENT
    with InferenceClient(server.url) as client:
        (stats,) = client.model_statistics("clf").model_stats
        assert "statistics" in client.server_metadata().extensions
    infer = stats.inference_stats
    assert (stats.name, stats.version) == ("clf", "1")
    assert infer.success.count == requests and infer.fail.count == 0
    assert infer.queue.count == requests and infer.compute_infer.count == requests
    assert stats.inference_count == rows
    assert 0 < stats.execution_count < requests  # some requests shared a run
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == rows
    assert infer.success.ns >= infer.queue.ns > 0 and stats.last_inference > 0
    _check_metrics(metrics_port, requests, rows, stats.execution_count)


def _sample(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model="clf",version="1"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _check_metrics(port: int, requests: int, rows: int, executions: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert _sample(text, "nv_inference_request_success") == requests
    assert _sample(text, "nv_inference_request_failure") == 0
    assert _sample(text, "nv_inference_count") == rows
    assert _sample(text, "nv_inference_exec_count") == executions
    assert _sample(text, "nv_inference_queue_duration_us") > 0
    assert _sample(text, "nv_inference_compute_infer_duration_us") > 0
    assert _sample(text, "bnmodel_inference_request_duration_seconds_count") == requests
    match = re.search(
        r'^bnmodel_inference_request_duration_seconds_bucket\{le="\+Inf",model="clf",'
        r'version="1"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert match and float(match.group(1)) == requests


def test_requests_refused_by_validation_are_counted_as_failures_of_their_model(
    batching_server,
):
    server, _, port = batching_server
    with InferenceClient(server.url) as client:
        before = client.model_statistics("clf", "1").model_stats[0].inference_stats
        with pytest.raises(InferenceServerError):
            client.infer("clf", np.ones((2, FEATURES + 1), np.float32))  # refused by validation
        with pytest.raises(InferenceServerError) as info:
            client.model_statistics("nope")
        after = client.model_statistics("clf", "1").model_stats[0].inference_stats
    assert info.value.code == "NOT_FOUND"
    # As Triton: a request its model refused is one failure (nv_inference_request_failure).
    assert after.success.count == before.success.count
    assert after.fail.count == before.fail.count + 1


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """One model that takes about 3 s for 512 rows (on one core); a queue of one request."""
    root = tmp_path_factory.mktemp("slow")
    slow = mlp_model(hidden=512, repeat=700, seed=3)
    write_model(root, "slow", slow, config_text("slow", max_batch_size=512))
    with run_server("--model-repository", str(root), "--max-queue-size", "1") as running:
        yield running


def _until_dispatched(client: InferenceClient, model: str, count: int) -> None:
    """Until ``count`` requests of ``model`` have left its queue (queue statistics are
    recorded when a request's batch starts): an event the server reports, not a sleep."""
    deadline = time.monotonic() + 30
    while client.model_statistics(model).model_stats[0].inference_stats.queue.count < count:
        assert time.monotonic() < deadline, f"no {model} request started within 30 s"
        time.sleep(0.005)


def test_deadline_in_queue_means_never_run_and_full_queue_is_resource_exhausted(slow_server):
    url = slow_server.url
    big = np.ones((512, FEATURES), np.float32)
    with InferenceClient(url, timeout=60) as client:
        running = threading.Thread(target=client.infer, args=("slow", big))
        running.start()
        _until_dispatched(client, "slow", 1)  # the big request is running now
        with pytest.raises(InferenceServerError) as late:
            client.infer("slow", np.ones((3, FEATURES), np.float32), timeout=0.2)
        assert late.value.code == "DEADLINE_EXCEEDED"
        waiting = threading.Thread(target=client.infer, args=("slow", big[:7]))
        waiting.start()
        time.sleep(0.3)  # queued behind the running one: the queue (size 1) is full
        with pytest.raises(InferenceServerError) as full:
            client.infer("slow", big[:1])
        running.join()
        waiting.join()
        stats = client.model_statistics("slow").model_stats[0]
    assert full.value.code == "RESOURCE_EXHAUSTED" and "queue full" in full.value.message
    # Ran: the 512 rows, then the 7 queued rows; never the 3 rows whose deadline passed.
    assert stats.inference_count == 512 + 7
    assert stats.inference_stats.success.count == 2
    # Failures: the one whose deadline passed in the queue, and the queue-full one.
    assert stats.inference_stats.fail.count == 2


def _http_infer(url: str, rows: int, parameters: dict) -> tuple[int, dict]:
    body = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [rows, FEATURES],
             "data": [0.5] * (rows * FEATURES)}
        ],
        "parameters": parameters,
    }  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v2/models/slow/infer", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_an_http_timeout_parameter_is_a_deadline_an_expired_request_never_runs(slow_server):
    big = np.ones((512, FEATURES), np.float32)
    with InferenceClient(slow_server.url, timeout=60) as client:
        before = client.model_statistics("slow").model_stats[0]
        running = threading.Thread(target=client.infer, args=("slow", big))
        running.start()
        _until_dispatched(client, "slow", before.inference_stats.queue.count + 1)
        # Triton's HTTP "timeout" parameter, in microseconds: 0.2 s, queued behind ~3 s.
        status, answer = _http_infer(slow_server.http_url, 3, {"timeout": 200_000})
        running.join()
        status_without, _ = _http_infer(slow_server.http_url, 2, {"timeout": 0})  # 0: none
        after = client.model_statistics("slow").model_stats[0]
    assert status == 504 and "deadline passed" in answer["error"], answer
    assert status_without == 200
    assert after.inference_count - before.inference_count == 512 + 2  # never the 3 rows
