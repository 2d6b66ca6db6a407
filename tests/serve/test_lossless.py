"""Stops, restarts and worker deaths under load: every request is answered or refused, none lost.

Clients at full load: keep-alive HTTP connections (http.client, reconnecting when an answer says
``connection: close``) and gRPC channels, each sending its next request as soon as the last is
answered. Each request ends one of three ways: answered (200), refused (HTTP 503, gRPC
UNAVAILABLE with the drain's refusal, or a connection that could not be made: the client knows
the request was never taken), or lost (anything else: a connection closed or reset under a
request sent on it, a timeout). The tests assert that nothing is lost where nothing may be.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.proto import grpc_service_pb2_grpc as pb_grpc
from bnmodel.serve.shutdown import DrainGate
from conftest import run_server
from models import FEATURES, config_text, mlp_model, write_model

from bnmodel.launcher import ServerStartError

ROWS = np.random.default_rng(0).normal(size=(4, FEATURES)).astype(np.float32)
BODY = json.dumps(
    {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(ROWS.shape),
             "data": ROWS.ravel().tolist()}
        ]
    }
).encode()  # fmt: skip
MAX_REQUESTS = 20_000  # per client: a bound on every loop, whatever happens
MAX_SECONDS = 90.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("lossless")
    write_model(root, "clf", mlp_model(seed=3), config_text("clf"))
    return root


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Tally:
    answered: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)
    local_ports: set[int] = field(default_factory=set)  # HTTP: the connections it used


class Load:
    """``http`` keep-alive HTTP clients and ``grpc`` gRPC clients, each on its own thread,
    until :meth:`stop` (or, with ``until_gone``, until the server refuses connections)."""

    def __init__(self, grpc_url: str, http_url: str, http: int, grpc: int, until_gone: bool):
        self.grpc_url = grpc_url
        self.http_host, port = http_url.removeprefix("http://").rsplit(":", 1)
        self.http_port = int(port)
        self.until_gone = until_gone
        self.stopped = threading.Event()
        self.tallies = [Tally() for _ in range(http + grpc)]
        targets = [self._http] * http + [self._grpc] * grpc
        self.threads = [
            threading.Thread(target=target, args=(tally,), daemon=True)
            for target, tally in zip(targets, self.tallies, strict=True)
        ]
        for thread in self.threads:
            thread.start()

    def wait_answered(self, each: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while any(t.answered < each for t in self.tallies):
            assert time.monotonic() < deadline, self.tallies
            time.sleep(0.02)

    def stop(self, timeout: float = 60.0) -> list[Tally]:
        self.stopped.set()
        self.join(timeout)
        return self.tallies

    def join(self, timeout: float = 60.0) -> list[Tally]:
        for thread in self.threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self.threads)
        return self.tallies

    def _http(self, tally: Tally) -> None:
        connection = None
        started = time.monotonic()
        for _ in range(MAX_REQUESTS):
            if self.stopped.is_set() or time.monotonic() - started > MAX_SECONDS:
                break
            if connection is None:
                connection = http.client.HTTPConnection(self.http_host, self.http_port, timeout=30)
                try:
                    connection.connect()
                except OSError:  # nothing listens: never sent, the client knows
                    tally.refused += 1
                    connection = None
                    if self.until_gone:
                        break
                    time.sleep(0.01)
                    continue
                tally.local_ports.add(connection.sock.getsockname()[1])
            try:
                connection.request("POST", "/v2/models/clf/infer", BODY)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                tally.lost.append(f"HTTP {type(exc).__name__}: {exc}")
                connection.close()
                connection = None
                continue
            if response.status == 200:
                tally.answered += 1
            elif response.status == 503:
                tally.refused += 1
            else:
                tally.lost.append(f"HTTP {response.status}")
            if response.will_close:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def _grpc(self, tally: Tally) -> None:
        # The raw stub, not InferenceClient: its friendlier messages hide which kind of
        # UNAVAILABLE a failure was (a refusal, no connection, or a connection that broke).
        request = pb.ModelInferRequest(
            model_name="clf",
            inputs=[pb.ModelInferRequest.InferInputTensor(
                name="features", datatype="FP32", shape=list(ROWS.shape))],
            raw_input_contents=[ROWS.tobytes()],
        )  # fmt: skip
        started = time.monotonic()
        with grpc.insecure_channel(self.grpc_url) as channel:
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            for _ in range(MAX_REQUESTS):
                if self.stopped.is_set() or time.monotonic() - started > MAX_SECONDS:
                    break
                try:
                    infer(request, timeout=30)
                    tally.answered += 1
                except grpc.RpcError as exc:
                    details = exc.details() or ""
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        tally.lost.append(f"gRPC {exc.code().name}: {details}")
                    elif DrainGate.REFUSAL in details:
                        tally.refused += 1
                    elif _never_connected(details):
                        tally.refused += 1
                        if self.until_gone:
                            break
                        time.sleep(0.01)
                    else:
                        tally.lost.append(f"gRPC UNAVAILABLE: {details}")


def _never_connected(details: str) -> bool:
    """gRPC's words for a call that found no connection to go out on."""
    words = ("failed to connect", "connection refused", "connections to all backends failing")
    return any(w in details.lower() for w in words)


def _lost(tallies: list[Tally]) -> list[str]:
    return [entry for tally in tallies for entry in tally.lost]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_keep_alive_http_and_grpc_load_loses_nothing(repo, tmp_path, workers):
    args = ("--model-repository", str(repo), "--workers", str(workers))
    with run_server(*args, log_path=tmp_path / "log") as server:
        load = Load(server.url, server.http_url, http=4, grpc=4, until_gone=True)
        load.wait_answered(20)
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
        tallies = load.join()
        log = server.stderr_text()
    assert code == 0, log
    assert _lost(tallies) == [], (_lost(tallies), log)
    assert all(t.answered >= 20 for t in tallies), tallies
    assert sum(t.refused for t in tallies[:4]) > 0, tallies  # HTTP clients met the drain


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 2), (2, 1)])
def test_a_server_stopped_under_load_restarts_at_once_on_the_same_ports(
    repo, tmp_path, before, after
):
    grpc_port, http_port = _free_port(), _free_port()

    def args(workers: int) -> tuple[str, ...]:
        return (
            "--model-repository", str(repo), "--workers", str(workers),
            "--port", str(grpc_port), "--http-port", str(http_port),
        )  # fmt: skip

    with run_server(*args(before), log_path=tmp_path / "first") as server:
        load = Load(server.url, server.http_url, http=4, grpc=4, until_gone=True)
        load.wait_answered(20)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.stderr_text()
        load.join()
    # The old server's connections are in TIME_WAIT now: the new one must bind regardless.
    with run_server(*args(after), log_path=tmp_path / "second") as again:
        assert again.url == f"127.0.0.1:{grpc_port}"
        assert again.http_url == f"http://127.0.0.1:{http_port}"
        load = Load(again.url, again.http_url, http=2, grpc=2, until_gone=False)
        load.wait_answered(5)
        assert _lost(load.stop()) == []


def test_a_port_a_live_server_listens_on_is_still_refused(repo, tmp_path):
    with run_server("--model-repository", str(repo), "--workers", "2") as server:
        port = server.url.rsplit(":", 1)[1]
        second = run_server("--model-repository", str(repo), "--workers", "2", "--port", port)
        with pytest.raises(ServerStartError, match=f"cannot listen on 127.0.0.1:{port}"), second:
            pass


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _server_side_inodes(server_port: int) -> dict[int, str]:
    """Client port -> inode of the server's end of each loopback connection to ``server_port``."""
    found = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if int(local.split(":")[1], 16) == server_port:
                found[int(remote.split(":")[1], 16)] = inode
    return found


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc/net/tcp")
def test_a_worker_killed_under_load_is_restarted_and_the_others_lose_nothing(repo, tmp_path):
    args = ("--model-repository", str(repo), "--workers", "2", "--no-grpc")
    with run_server(*args, log_path=tmp_path / "log") as server:
        victim, survivor = _children(server.process.pid)
        load = Load("", server.http_url, http=8, grpc=0, until_gone=False)
        load.wait_answered(20)
        # Which worker holds each client's connection (the kernel spread them).
        ends = _server_side_inodes(load.http_port)
        on_victim = _socket_inodes(victim)
        victims = [
            i for i, t in enumerate(load.tallies)
            if any(ends.get(p) in on_victim for p in t.local_ports)
        ]  # fmt: skip
        assert 0 < len(victims) < len(load.tallies), "all 8 connections on one worker: rerun"
        before = [t.answered for t in load.tallies]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "restarted and serving again" not in server.stderr_text():
            assert time.monotonic() < deadline, server.stderr_text()
            time.sleep(0.1)
        after_restart = [t.answered for t in load.tallies]
        time.sleep(0.5)
        tallies = load.stop()
        workers = _children(server.process.pid)
        log = server.stderr_text()
    for i, tally in enumerate(tallies):
        if i not in victims:  # connections on the surviving worker: nothing lost at all
            assert tally.lost == [], (i, tally, log)
        # A victim's request in flight at the kill, and a reconnect or two that the kernel
        # still queued on the dying worker's socket before its exit closed it.
        assert len(tally.lost) <= 3, (i, tally)
        assert tally.answered > after_restart[i] > before[i], (i, tally)  # served throughout
    assert re.search(rf"worker \d \(pid {victim}\): killed by SIGKILL \(exit -9\)", log), log
    assert survivor in workers and victim not in workers and len(workers) == 2, workers
