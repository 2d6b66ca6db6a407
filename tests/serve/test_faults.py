"""Faults: SIGTERM with 64 requests in flight, a second signal, a signal during startup, model
files that try to leave the repository, clients that give up.

(Broken model files failing alone, load/unload under traffic and deadlines in the batching
queue are in test_live_repository.py and test_batching_server.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bnmodel.serve.client import InferenceClient, InferenceServerError
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.shutdown import DrainGate
from conftest import run_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from models import config_text, mlp_model, write_model

INFER = "/inference.GRPCInferenceService/ModelInfer"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory) -> Path:
    # 200 chained 512x512 MatMul+Tanh layers: tens of ms per 8-row run on one core.
    root = tmp_path_factory.mktemp("slow")
    write_model(root, "slow", mlp_model(hidden=512, repeat=200), config_text("slow"))
    return root


def _request(rows: int = 8) -> bytes:
    x = np.linspace(-1, 1, rows * 8, dtype=np.float32).reshape(rows, 8)
    r = pb.ModelInferRequest(model_name="slow")
    r.inputs.add(name="features", datatype="FP32", shape=x.shape)
    r.raw_input_contents.append(x.tobytes())
    return r.SerializeToString()


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest()
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


@pytest.mark.slow
def test_sigterm_with_64_in_flight_answers_every_one(slow_repository, tmp_path):
    log_path = tmp_path / "server.log"
    # --workers means server processes (serve/workers.py); one process, two runs in flight.
    args = ("--model-repository", str(slow_repository), "--workers", "1")
    with run_server(*args, "--grace-seconds", "60", log_path=log_path) as server:
        channel = grpc.insecure_channel(server.url)
        call = channel.unary_unary(INFER)
        futures = [call.future(_request(64), timeout=120) for _ in range(64)]
        first = threading.Event()
        for future in futures:
            future.add_done_callback(lambda _: first.set())
        assert first.wait(60)  # one answered: the server has the others, most still to run
        server.process.send_signal(signal.SIGTERM)
        status = _health(channel)
        pending_at_health = sum(not f.done() for f in futures)
        time.sleep(DrainGate().settle + 0.2)  # requests already on their way are still served
        pending_at_refusal = sum(not f.done() for f in futures)
        with pytest.raises(grpc.RpcError) as refused:
            call(_request(), timeout=10)  # new work during the drain
        answers = [pb.ModelInferResponse.FromString(f.result()) for f in futures]
        exit_code = server.process.wait(timeout=60)
        channel.close()
    log = log_path.read_text()
    assert status == NOT_SERVING and pending_at_health > 0  # NOT_SERVING while work remains
    assert pending_at_refusal > 0  # the server was still draining when it refused
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in refused.value.details()
    assert [a.outputs[1].shape for a in answers] == [[64, 3]] * 64  # every one answered
    assert exit_code == 0
    drained = int(re.search(r"SIGTERM: draining (\d+) requests in flight", log).group(1))
    assert drained >= pending_at_health and "stopped" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_second_signal_exits_at_once(slow_repository, tmp_path):
    args = ("--model-repository", str(slow_repository), "--workers", "1")
    with run_server(*args, "--grace-seconds", "600", log_path=tmp_path / "log") as server:
        channel = grpc.insecure_channel(server.url)
        futures = [channel.unary_unary(INFER).future(_request(64), timeout=120) for _ in range(32)]
        first = threading.Event()
        for future in futures:
            future.add_done_callback(lambda _: first.set())
        assert first.wait(60)  # the server has them; 31 still to run
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGINT)
        exit_code = server.process.wait(timeout=30)  # far less than the 32 runs, or the grace
        unfinished = sum(f.exception() is not None for f in futures)
        channel.close()
    log = (tmp_path / "log").read_text()
    assert exit_code == 128 + signal.SIGINT
    assert "SIGINT again: exiting now" in log
    assert unfinished > 0  # it did not wait for them


def _catches_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_sigterm_during_startup_stops_cleanly(slow_repository):
    """The reported exit 143: a SIGTERM that came while Python was still importing."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bnmodel", "serve", "--model-repository", str(slow_repository)]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not _catches_sigterm(process.pid) and time.monotonic() < deadline:
            time.sleep(0.002)  # until `bnmodel serve` has caught the signal, long before ready
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_model_files_cannot_leave_the_repository(tmp_path):
    outside = tmp_path / "outside"
    write_model(outside, "elsewhere", mlp_model(), config_text("elsewhere"))
    repo = tmp_path / "repo"
    write_model(repo, "clf", mlp_model(), config_text("clf"))
    (repo / "linked").symlink_to(outside / "elsewhere", target_is_directory=True)
    write_model(repo, "filelink", mlp_model(), config_text("filelink"))
    target = repo / "filelink" / "1" / "model.onnx"
    target.unlink()
    target.symlink_to(outside / "elsewhere" / "1" / "model.onnx")
    escape = config_text("escape", extra='default_model_filename: "../../../outside/x.onnx"')
    write_model(repo, "escape", mlp_model(), escape)
    args = ("--model-repository", str(repo), "--allow-model-control")
    with (
        run_server(*args, log_path=tmp_path / "log") as server,
        InferenceClient(server.url, timeout=10) as client,
    ):
        index = {name: reason for name, _, state, reason in client.repository_index()}
        assert client.infer("clf", np.ones((1, 8), np.float32))["probabilities"].shape == (1, 3)
        codes = {}
        for name in ("../clf", "/etc", "..", "clf/../clf", "a\\b"):
            with pytest.raises(InferenceServerError) as info:
                client.load_model(name)
            codes[name] = (info.value.code, info.value.message)
        with pytest.raises(InferenceServerError) as linked:
            client.load_model("linked")
    assert "outside the model folder" in index["filelink"]
    assert "default_model_filename '../../../outside/x.onnx' is not a plain file" in index["escape"]
    assert all(code == "INVALID_ARGUMENT" for code, _ in codes.values()), codes
    assert "is not a plain folder name" in codes["../clf"][1]
    assert linked.value.code == "NOT_FOUND" and "'linked' is not in the repository" in (
        linked.value.message
    )


def _started(statistics) -> int:
    """Requests of "slow" whose run has started (queue statistics count them then)."""
    request = pb.ModelStatisticsRequest(name="slow").SerializeToString()
    response = pb.ModelStatisticsResponse.FromString(statistics(request, timeout=10))
    return response.model_stats[0].inference_stats.queue.count


@pytest.mark.slow
def test_clients_that_give_up_cost_no_run_and_no_log_noise(slow_repository, tmp_path):
    args = ("--model-repository", str(slow_repository), "--workers", "1", "--no-batching")
    with run_server(*args, log_path=tmp_path / "log") as server:
        channel = grpc.insecure_channel(server.url)
        call = channel.unary_unary(INFER)
        # One process runs one request per core at once: fill every run slot, and the queue
        # ahead of the given-up requests with twice as many again, so the queue reaches them
        # only after their deadline (two rounds of runs of ~70 ms could end before it).
        slots = len(os.sched_getaffinity(0))
        busy = [call.future(_request(64), timeout=60) for _ in range(3 * slots)]
        statistics = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")
        while _started(statistics) < slots:  # every run slot busy: the rest are queued
            time.sleep(0.005)
        expired = [call.future(_request(64), timeout=0.05) for _ in range(8)]
        cancelled = [call.future(_request(64), timeout=60) for _ in range(8)]
        time.sleep(0.05)
        for future in cancelled:
            future.cancel()
        codes = {f.exception().code() for f in expired}
        for future in busy:
            future.result()
        stats = pb.ModelStatisticsResponse.FromString(
            channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")(
                pb.ModelStatisticsRequest(name="slow").SerializeToString(), timeout=10
            )
        ).model_stats[0]
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    log = (tmp_path / "log").read_text()
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
    assert all(f.cancelled() for f in cancelled)
    # Only the two requests that waited for their answer ran (the first may have started one
    # more before its own run; none of the 16 given-up requests reached the model).
    assert stats.execution_count == len(busy)
    assert stats.inference_stats.success.count == len(busy)
    noise = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert noise == [] and "Traceback" not in log


def test_a_bad_token_file_is_a_clear_startup_error(tmp_path, repository):
    token = tmp_path / "token"
    token.write_text("  \n")
    result = subprocess.run(
        [sys.executable, "-m", "bnmodel", "serve", "--model-repository", str(repository)]
        + ["--port", "0", "--auth-token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"--auth-token-file {token}: the file is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_rpcs_past_the_per_process_cap_are_resource_exhausted_naming_it(slow_repository):
    args = ("--model-repository", str(slow_repository), "--workers", "1")
    with run_server(*args, "--max-concurrent-rpcs", "2") as server:
        channel = grpc.insecure_channel(server.url)
        call = channel.unary_unary(INFER)
        # 16 at once, 64 rows each (runs of a few hundred ms): at most 2 are admitted at a time.
        futures = [call.future(_request(64), timeout=120) for _ in range(16)]
        errors = [f.exception() for f in futures]
        channel.close()
    refused = [e for e in errors if e is not None]
    assert len(refused) >= 10, errors  # 16 arrive well within the first run
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    assert "at most 2 (--max-concurrent-rpcs)" in refused[0].details()
    assert errors.count(None) >= 2  # the admitted ones were answered
