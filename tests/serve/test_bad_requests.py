"""Every class of bad request gets its status and a message without internals; the log stays short.

The classes live in tools/bad_request_matrix.py (the script prints the same matrix by hand).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bnmodel.serve.client import InferenceClient, InferenceServerError
from conftest import run_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bad_request_matrix as matrix  # noqa: E402

CASES = matrix.cases()
SEND_LIMIT = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
SUPPRESSED = re.compile(r"\((\d+) similar lines suppressed\)")


@pytest.fixture(scope="module")
def matrix_repository(tmp_path_factory) -> Path:
    return matrix.write_repository(tmp_path_factory.mktemp("matrix"))


@pytest.fixture(scope="module")
def matrix_server(matrix_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    with run_server("--model-repository", str(matrix_repository), log_path=log) as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_each_class_gets_its_status_and_a_clean_message(matrix_server, case):
    with grpc.insecure_channel(matrix_server.url, options=SEND_LIMIT) as channel:
        code, message, response = matrix.send(channel, case)
    assert matrix.judge(case, code, message, response) is None, (code, message)


HTTP_CASES = matrix.http_cases()


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.label for c in HTTP_CASES])
def test_each_http_class_gets_its_4xx_and_a_json_error(matrix_server, case):
    status, kind, message = matrix.send_http(matrix_server.http_url, case)
    assert matrix.judge_http(case, status, kind, message) is None, (status, message)


def test_http_matrix_covers_the_issue_classes():
    assert len(HTTP_CASES) >= 40
    assert {c.status for c in HTTP_CASES} >= {400, 403, 404, 405, 413, 415, 431}
    assert all(400 <= c.status < 500 for c in HTTP_CASES)


def test_matrix_covers_the_issue_classes():
    statuses = {c.code for c in CASES}
    assert len(CASES) >= 41
    assert {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
    } <= statuses


def _rejection_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " rejected: " in line or " refused: " in line]


def test_rejections_log_at_most_one_line_each_and_no_traceback(matrix_repository, tmp_path):
    log_path = tmp_path / "server.log"
    bad = [c for c in CASES if c.code != grpc.StatusCode.OK]
    with (
        run_server("--model-repository", str(matrix_repository), log_path=log_path) as server,
        grpc.insecure_channel(server.url, options=SEND_LIMIT) as channel,
    ):
        for case in bad:
            matrix.send(channel, case)
        time.sleep(0.3)  # the limiter refills; the next line reports what it held back
        matrix.send(channel, CASES[1])  # unknown model: one more rejection
    log = log_path.read_text()
    lines = _rejection_lines(log)
    counted = len(lines) + sum(int(n) for n in SUPPRESSED.findall(log))
    # Every rejection is one line or one count; grpcio refuses the oversized message itself
    # and UNIMPLEMENTED is not a rejection of a request, so neither is logged.
    assert counted == len(bad) + 1 - 2
    assert "Traceback" not in log and "ERROR" not in log
    assert max(len(line) for line in log.splitlines()) < 600  # client text in logs is bounded
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in log.splitlines())


def test_a_flood_of_bad_requests_cannot_flood_the_log(matrix_repository, tmp_path):
    log_path = tmp_path / "server.log"
    garbage = next(c for c in CASES if c.label == "random bytes")
    with (
        run_server("--model-repository", str(matrix_repository), log_path=log_path) as server,
        grpc.insecure_channel(server.url) as channel,
    ):
        for _ in range(300):
            matrix.send(channel, garbage)
        time.sleep(0.3)
        matrix.send(channel, garbage)
    log = log_path.read_text()
    lines = _rejection_lines(log)
    assert len(lines) + sum(int(n) for n in SUPPRESSED.findall(log)) == 301
    assert len(lines) < 150  # 300 requests took well under 13 s at 10 lines/s + 20 burst


def test_reject_non_finite_flag(matrix_repository, tmp_path):
    x = np.ones((3, 8), np.float32)
    bad = x.copy()
    bad[1, 4] = np.inf
    bad[2, 0] = np.nan
    args = ("--model-repository", str(matrix_repository), "--reject-non-finite")
    with (
        run_server(*args, log_path=tmp_path / "log") as server,
        InferenceClient(server.url) as client,
    ):
        assert client.infer("clf", x)["probabilities"].shape == (3, 3)
        with pytest.raises(InferenceServerError) as info:
            client.infer("clf", bad)
        half = client.infer("half", x.astype(np.float16))["probabilities"]
        with pytest.raises(InferenceServerError) as half_info:
            client.infer("half", bad.astype(np.float16))
    assert info.value.code == "INVALID_ARGUMENT"
    assert "model 'clf' input 'features': 2 non-finite value(s)" in info.value.message
    assert "first at index [1, 4]" in info.value.message
    assert half.dtype == np.float16 and half_info.value.code == "INVALID_ARGUMENT"
