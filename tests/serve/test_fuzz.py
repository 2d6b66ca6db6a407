"""Hypothesis mutates valid ModelInfer requests (message and byte level) against a real server.

The oracle (tools/fuzz_server.py: ``expect``) restates the protocol contract independently:
no INTERNAL or UNKNOWN, no OK for an invalid request, valid requests answered with ONNX
Runtime's values; afterwards the server is alive, SERVING, and its log holds no traceback.
The long run (tens of thousands of requests) is ``python tools/fuzz_server.py``.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest
from conftest import run_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import fuzz_server  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    repo = fuzz_server.write_repository(root / "repo")
    with (
        run_server("--model-repository", str(repo), log_path=root / "server.log") as server,
        grpc.insecure_channel(server.url) as channel,
    ):
        yield server, channel, fuzz_server.Reference(repo)


@settings(
    max_examples=3000,
    deadline=None,
    derandomize=True,  # the same examples on every CI run; the long run explores other seeds
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False))
def test_fuzzed_requests_get_the_right_answer(fuzz_target, rng: random.Random):
    server, channel, reference = fuzz_target
    payload = fuzz_server.Fuzzer(rng).request()
    expected = fuzz_server.expect(payload)
    code, message, response = fuzz_server.send(channel, payload, timeout=10)
    assert fuzz_server.judge(expected, code, message, response, reference) is None


@settings(
    max_examples=800,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False))
def test_fuzzed_http_requests_get_the_right_answer(fuzz_target, rng: random.Random):
    server, _, reference = fuzz_target
    request = fuzz_server.HttpFuzzer(rng).request()
    expected = fuzz_server.expect_http(request)
    status, headers, body = fuzz_server.send_http(server.http_url, request, timeout=10)
    assert fuzz_server.judge_http(expected, status, headers, body, reference) is None


def test_server_alive_serving_and_quiet_after_fuzzing(fuzz_target):
    server, channel, _ = fuzz_target
    rng = random.Random(1)  # its own requests: this test needs no other to have run first
    answered = Counter(
        fuzz_server.send(channel, fuzz_server.Fuzzer(rng).request(), timeout=10)[0].name
        for _ in range(1000)
    )
    assert answered["OK"] > 100 and answered["INVALID_ARGUMENT"] > 100  # both sides exercised
    assert answered["NOT_FOUND"] > 10
    answered_http = Counter(
        fuzz_server.send_http(server.http_url, fuzz_server.HttpFuzzer(rng).request(), timeout=10)[0]
        for _ in range(1000)
    )
    assert answered_http[200] > 20 and answered_http[400] > 100 and answered_http[404] > 5
    assert server.process.poll() is None
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    log = server.stderr_text()
    assert "Traceback" not in log and " ERROR " not in log
