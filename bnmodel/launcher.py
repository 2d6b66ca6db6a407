"""Run ``bnmodel serve`` as a child process: start it, wait for its ready line, always stop it.

Used by the demo, the tests and the benchmarks, which all need a real server in its own process
(the protobuf descriptor pool of a process holding tritonclient clashes with ours).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bnmodel.serve.ready import parse_ready_line

__all__ = [
    "ServerProcess",
    "ServerStartError",
    "spawn_server",
    "stop_server",
]


class ServerStartError(RuntimeError):
    """The server exited or stayed silent before printing its ready line."""


class _Collector:
    """Reads a child's stream to the end on a thread, so the child never blocks on a full pipe."""

    def __init__(self, stream: IO[str] | None, keep: bool) -> None:
        self.lines: list[str] = []
        self._keep = keep
        self._thread = None
        if stream is not None:
            self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
            self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if self._keep:
                self.lines.append(line)

    def text(self, wait: float = 0.0) -> str:
        if wait and self._thread is not None:
            self._thread.join(wait)
        return "".join(self.lines)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str  # HOST:PORT
    ready_line: str
    _stderr: _Collector
    log_path: Path | None = None  # stderr went to this file instead of a pipe
    http_url: str = ""  # http(s)://HOST:PORT, "" with --no-http

    def stderr_text(self) -> str:
        """What the server logged so far; all of it once the process has exited."""
        if self.log_path is not None:
            return self.log_path.read_text()
        return self._stderr.text(wait=5.0 if self.process.poll() is not None else 0.0)


def _wait_ready(
    process: subprocess.Popen, timeout: float, stderr: _Collector, log_path: Path | None
) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            line = process.stdout.readline()
            if parse_ready_line(line) is not None:
                return line.strip()
            if not line and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    if process.poll() is not None:
        errors = log_path.read_text() if log_path is not None else stderr.text(wait=5.0)
        raise ServerStartError(f"bnmodel serve exited with {process.returncode}: {errors.strip()}")
    raise ServerStartError(f"bnmodel serve printed no ready line within {timeout:.0f} s")


def stop_server(process: subprocess.Popen, grace: float = 10.0) -> int:
    """SIGTERM (the server drains requests in flight), then SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def spawn_server(
    args: Sequence[str],
    *,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
    capture_stderr: bool = True,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``python -m bnmodel serve ARGS --host HOST --port 0``, yielded once ready, stopped on exit.

    The server's log (stderr) is kept in memory, or written to ``log_path``, or with
    ``capture_stderr=False`` passed through to this process's stderr.
    """
    # A free HTTP port too, never Triton's fixed 8000: tests and benchmarks run side by side.
    http = [] if "--http-port" in args else ["--http-port", "0"]
    command = [sys.executable, "-m", "bnmodel", "serve", "--host", host, "--port", "0", *http]
    command += args
    log_file = None if log_path is None else open(log_path, "w")  # noqa: SIM115
    if log_file is not None:
        stderr_target = log_file
    else:
        stderr_target = subprocess.PIPE if capture_stderr else None
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr_target,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    stderr = _Collector(process.stderr, keep=True)
    try:
        line = _wait_ready(process, timeout, stderr, log_path)
        _Collector(process.stdout, keep=False)
        endpoints = parse_ready_line(line)
        yield ServerProcess(process, endpoints.address, line, stderr, log_path, endpoints.http_url)
    finally:
        stop_server(process)
        if log_file is not None:
            log_file.close()
