"""SIGTERM with requests in flight: every one is answered, then the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
from bnmodel.serve.client import InferenceClient
from conftest import run_server
from models import config_text, mlp_model, write_model


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory):
    # 400 chained 512x512 MatMul+Tanh layers: about half a second per 64-row run on one core.
    root = tmp_path_factory.mktemp("slow")
    write_model(root, "slow", mlp_model(hidden=512, repeat=400), config_text("slow"))
    return root


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight(slow_repository):
    x = np.ones((64, 8), np.float32)
    # One process (--workers counts processes); it runs one request per core at once.
    with run_server("--model-repository", str(slow_repository), "--workers", "1") as server:
        results, finished_at = [], []

        def one_request() -> None:
            with InferenceClient(server.url, timeout=60) as client:
                results.append(client.infer("slow", x)["probabilities"].shape)
                finished_at.append(time.monotonic())

        threads = [threading.Thread(target=one_request) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # all four sent; some running, the rest queued for the pool
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
        log = server.stderr_text()
    assert results == [(64, 3)] * 4  # every request in flight was answered
    assert max(finished_at) > signalled_at  # ... some of them after the signal
    assert "SIGTERM: draining" in log and "stopped" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_sigterm_drains_http_requests_in_flight(slow_repository):
    from bnmodel.serve.http_client import HttpInferenceClient

    x = np.ones((64, 8), np.float32)
    with run_server("--model-repository", str(slow_repository), "--workers", "1") as server:
        results, finished_at = [], []

        def one_request(url: str, connect) -> None:
            with connect(url, timeout=60) as client:
                results.append(client.infer("slow", x)["probabilities"].shape)
                finished_at.append(time.monotonic())

        threads = [  # HTTP and gRPC together, both drained
            threading.Thread(target=one_request, args=(server.http_url, HttpInferenceClient))
            for _ in range(3)
        ] + [threading.Thread(target=one_request, args=(server.url, InferenceClient))]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
        log = server.stderr_text()
    assert results == [(64, 3)] * 4
    assert max(finished_at) > signalled_at
    assert "Traceback" not in log
