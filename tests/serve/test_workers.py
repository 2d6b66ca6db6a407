"""--workers N: N processes on one port (SO_REUSEPORT), one ready line, drained together,
a dead one restarted.

Connections are spread by the kernel, so the checks count over all workers' metrics endpoints
(--metrics-port + worker index) rather than guessing which worker a connection landed on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
from bnmodel.serve import session, workers
from bnmodel.serve.client import InferenceClient
from bnmodel.serve.settings import ServerSettings, SettingsError
from bnmodel.serve.workers import default_workers, hold_port
from conftest import onnx_outputs, run_server
from models import FEATURES, config_text, mlp_model, write_model

CONNECTIONS = 24  # all on one of 2 workers by chance: 2 * 2**-24


def _free_pair() -> int:
    """A free port whose successor is free too (both bound here once, then released)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    write_model(root, "clf", mlp_model(seed=7), config_text("clf"))
    # About 0.1 s per 64-row run: still running when the test sends SIGTERM.
    write_model(root, "slow", mlp_model(hidden=512, repeat=80, seed=8), config_text("slow"))
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
    metrics = _free_pair()  # worker i serves metrics on metrics + i
    args = ("--model-repository", str(repo), "--workers", "2", "--metrics-port", str(metrics))
    x = np.random.default_rng(0).normal(size=(64, FEATURES)).astype(np.float32)
    expected = onnx_outputs(repo, "slow", x)["probabilities"]
    with run_server(*args, log_path=tmp_path / "log") as server:
        assert "2 workers" in server.ready_line
        workers = _children(server.process.pid)
        assert len(workers) == 2
        clients = [InferenceClient(server.url, timeout=60) for _ in range(CONNECTIONS)]
        for client in clients:  # one request each: the kernel spread the connections
            assert client.infer("clf", x[:2])["probabilities"].shape[0] == 2
        per_worker = [_successes(metrics), _successes(metrics + 1)]
        # Slow requests on every connection, in flight when SIGTERM comes: each is answered.
        answers: dict[int, object] = {}
        first_answer = threading.Event()

        def send(i: int) -> None:
            try:
                answers[i] = clients[i].infer("slow", x)["probabilities"]
            except Exception as exc:  # noqa: BLE001 -- recorded, asserted below
                answers[i] = exc
            first_answer.set()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
        for thread in threads:
            thread.start()
        # One answer back: the server has the others (runs of ~0.1 s, one after another).
        assert first_answer.wait(60)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        for client in clients:
            client.close()
        code = server.process.wait(timeout=30)
        log = server.stderr_text()
    assert sum(per_worker) == CONNECTIONS and min(per_worker) > 0, per_worker
    assert code == 0, log
    assert len(answers) == len(clients)
    for answer in answers.values():
        assert isinstance(answer, np.ndarray), answer
        np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-6)
    in_flight = [int(n) for n in re.findall(r"SIGTERM: draining (\d+) requests", log)]
    assert len(in_flight) == 2 and sum(in_flight) > 0, log  # both drained; most were running
    assert "forwarding to 2 workers" in log and log.count("stopped") >= 2
    for pid in workers:  # reaped by the parent: gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_restarts_back_off_and_a_crash_loop_stops_the_server(caplog):
    # The planning alone (test_lossless.py kills a real worker under load).
    supervisor = workers._Supervisor(2)
    supervisor._wake_r.close(), supervisor._wake_w.close()  # never entered: no selector use
    supervisor.pids = {0: 100, 1: 101}
    delays = []
    with caplog.at_level("ERROR", logger="bnmodel.serve"):
        for _ in range(workers._MAX_RESTARTS):
            supervisor.codes[0] = -signal.SIGKILL
            assert supervisor._plan_restarts([0])
            delays.append(supervisor.due.pop(0) - time.monotonic())
        assert "worker 0 (pid 100): killed by SIGKILL (exit -9) while serving" in caplog.text
        supervisor.codes[1] = 3
        assert not supervisor._plan_restarts([1])  # one restart too many within the window
    assert [round(d, 1) for d in delays] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert "worker 1: exit 3 while serving, after 5 restarts within 60 s" in caplog.text
    supervisor.restarts = [time.monotonic() - workers._RESTART_WINDOW_S - 1] * 5
    supervisor.codes[1] = 1
    assert supervisor._plan_restarts([1])  # old restarts no longer count


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
