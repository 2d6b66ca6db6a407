"""Run ``bnmodel serve`` as a child process: start it, wait for its ready line, always stop it.

Used by the demo, the tests and the benchmarks, which all need a real server in its own process
(the protobuf descriptor pool of a process holding tritonclient clashes with ours).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

__all__ = ["READY_PATTERN", "ServerProcess", "ServerStartError", "spawn_server", "stop_server"]

READY_PATTERN = re.compile(r"ready on (\S+):(\d+)")


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

    def stderr_text(self, wait: float = 0.0) -> str:
        """What the server logged so far (after it exits, pass ``wait`` to read to the end)."""
        return self._stderr.text(wait)


def _wait_ready(process: subprocess.Popen, timeout: float, stderr: _Collector) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            line = process.stdout.readline()
            if READY_PATTERN.search(line):
                return line.strip()
            if not line and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    if process.poll() is not None:
        errors = stderr.text(wait=5.0)
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
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``python -m bnmodel serve ARGS --host HOST --port 0``, yielded once ready, stopped on exit.

    With ``capture_stderr=False`` the server's log lines go to this process's stderr.
    """
    command = [sys.executable, "-m", "bnmodel", "serve", "--host", host, "--port", "0", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    stderr = _Collector(process.stderr, keep=True)
    try:
        line = _wait_ready(process, timeout, stderr)
        _Collector(process.stdout, keep=False)
        bound_host, port = READY_PATTERN.search(line).groups()
        yield ServerProcess(process, f"{bound_host}:{port}", line, stderr)
    finally:
        stop_server(process)
