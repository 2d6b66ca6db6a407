"""Fixtures: a temp model repository and real `bnmodel serve` processes on free local ports."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from models import config_text, mlp_model, write_model  # noqa: E402

READY = re.compile(r"ready on (\S+):(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    ready_line: str
    log_path: Path | None = None  # where stderr goes when run_server(log_path=...) was used

    def stderr_text(self) -> str:
        if self.log_path is not None:
            return self.log_path.read_text()
        return self.process.stderr.read() if self.process.stderr else ""


def _read_ready_line(process: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = process.stderr.read() if process.stderr else "(see its log file)"
            raise RuntimeError(f"server exited with {process.returncode}: {log}")
        if selector.select(timeout=0.1):
            line = process.stdout.readline()
            if READY.search(line):
                return line
    raise RuntimeError("server did not print its ready line in time")


@contextlib.contextmanager
def run_server(
    *args: str, timeout: float = 30.0, log_path: Path | None = None
) -> Iterator[ServerProcess]:
    """`python -m bnmodel serve ARGS --port 0` on 127.0.0.1; always terminated afterwards.

    ``log_path``: stderr goes to that file instead of a pipe (a pipe nobody reads fills up
    and blocks a server that logs a lot).
    """
    command = [sys.executable, "-m", "bnmodel", "serve", "--host", "127.0.0.1", "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stderr = subprocess.PIPE if log_path is None else open(log_path, "w")  # noqa: SIM115
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
    )
    try:
        line = _read_ready_line(process, timeout)
        host, port = READY.search(line).groups()
        yield ServerProcess(process, f"{host}:{port}", line, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr, None if log_path is None else stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """clf (FP32 classifier), reg (regressor), half (FP16 classifier); max_batch_size 64."""
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "clf", mlp_model(), config_text("clf"))
    write_model(root, "reg", mlp_model("regression", seed=1), config_text("reg", "regression"))
    write_model(root, "half", mlp_model(fp16=True, seed=2), config_text("half", fp16=True))
    return root


@pytest.fixture(scope="session")
def server(repository) -> Iterator[ServerProcess]:
    # Model control on: the tritonclient check loads and unloads (off by default in `serve`).
    with run_server("--model-repository", str(repository), "--allow-model-control") as running:
        yield running
