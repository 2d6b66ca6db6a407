"""--workers N: N processes on one port (SO_REUSEPORT), one ready line, drained together.

Connections are spread by the kernel, so the checks count over all workers' metrics endpoints
(--metrics-port + worker index) rather than guessing which worker a connection landed on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from bnmodel.serve import session
from bnmodel.serve.client import InferenceClient
from bnmodel.serve.settings import ServerSettings, SettingsError
from bnmodel.serve.workers import default_workers, hold_port
from conftest import run_server
from models import FEATURES, config_text, mlp_model, write_model

CONNECTIONS = 24  # all on one of 2 workers by chance: 2 * 2**-24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    write_model(root, "clf", mlp_model(seed=7), config_text("clf"))
    return root


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _successes(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'^nv_inference_request_success\{model="clf",version="1"\} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_two_workers_share_the_port_and_sigterm_drains_both_with_exit_0(repo, tmp_path):
    metrics = _free_port()
    while _free_port() == metrics + 1:  # the second worker's metrics port must be free too
        metrics = _free_port()
    args = ("--model-repository", str(repo), "--workers", "2", "--metrics-port", str(metrics))
    with run_server(*args, log_path=tmp_path / "log") as server:
        assert "2 workers" in server.ready_line
        workers = _children(server.process.pid)
        assert len(workers) == 2
        clients = [InferenceClient(server.url) for _ in range(CONNECTIONS)]
        x = np.ones((2, FEATURES), np.float32)
        for client in clients:
            assert client.infer("clf", x)["probabilities"].shape[0] == 2
        per_worker = [_successes(metrics), _successes(metrics + 1)]
        for client in clients:
            client.close()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)
        log = server.stderr_text()
    assert sum(per_worker) == CONNECTIONS and min(per_worker) > 0, per_worker
    assert code == 0, log
    assert "forwarding to 2 workers" in log and log.count("stopped") >= 2
    for pid in workers:  # reaped by the parent: gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_dies_stops_the_others_and_the_server_exits_1(repo, tmp_path):
    args = ("--model-repository", str(repo), "--workers", "2")
    with run_server(*args, log_path=tmp_path / "log") as server:
        first, second = _children(server.process.pid)
        os.kill(first, signal.SIGKILL)
        code = server.process.wait(timeout=30)
        log = server.stderr_text()
    assert code == 1, log
    assert "worker exited unexpectedly" in log
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(second, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"worker {second} still alive after the parent exited")


def test_a_fixed_port_already_taken_is_refused_not_shared():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            hold_port("127.0.0.1", port)
    held = hold_port("127.0.0.1", 0)
    try:
        assert held.getsockname()[1] > 0
    finally:
        held.close()


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (16, 16)])
def test_default_workers_is_one_per_core_and_one_with_model_control(cores, expected):
    assert default_workers(cores) == expected
    assert default_workers(cores, model_control=True) == 1


def test_worker_processes_split_the_cores_for_their_threads(monkeypatch):
    monkeypatch.setattr(session, "cpu_count", lambda: 16)
    alone = session.default_threads()
    assert (alone.intra_op, alone.workers) == (4, 16)
    shared = session.default_threads(processes=4)  # 4 cores each: 2 per run ...
    assert (shared.intra_op, shared.workers) == (2, 16)  # ... and any process may use all
    assert session.default_threads(processes=32) == session.ThreadSettings(1, 16)
    assert session.default_threads(intra_op=3, workers=5, processes=8) == (
        session.ThreadSettings(3, 5)
    )


def test_model_control_with_several_workers_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="--allow-model-control needs --workers 1"):
        ServerSettings(model_repository=tmp_path, workers=2, allow_model_control=True)
    ServerSettings(model_repository=tmp_path, workers=1, allow_model_control=True)
