"""``--workers N``: N server processes sharing one port through SO_REUSEPORT.

One Python process tops out near one core (the GIL: gRPC's Python half, decoding, the event loop).
To use more cores the parent forks N children *before* any gRPC server or channel exists (the
pattern gRPC documents for multiprocessing; importing grpc first is fine); each child builds its
own servers and ONNX Runtime sessions, and the kernel spreads incoming TCP connections over the
children. The parent prints the one ready line, forwards signals, and restarts a worker that
dies while serving (docs/deployment.md, "Workers").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable

from .errors import ServeError
from .ready import ServerInfo, ready_line
from .settings import ServerSettings, cpu_count
from .shutdown import SHUTDOWN_SIGNALS, early_signals

__all__ = ["default_workers", "run", "serve_workers", "hold_port"]

log = logging.getLogger("bnmodel.serve")

_READY_TIMEOUT_S = 300.0  # model loading included
# A worker that dies while serving is started again after a backoff that doubles with each
# recent restart; more than _MAX_RESTARTS within _RESTART_WINDOW_S is a crash loop: stop.
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 60.0


def default_workers(cores: int | None = None, model_control: bool = False) -> int:
    """Server processes for ``--workers 0``: one per core, or one with model control (a load
    reaches only the process holding the caller's connection). Measured on 2 cores, client on
    the same machine, 4 connections: 2 processes served 12-15% more rows/s at batch 1 and 23-40%
    more at batch 64 than 1 (benchmarks/README.md, "workers")."""
    if model_control:
        return 1
    return max(1, cores or cpu_count())


def hold_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on ``host:port`` (port 0: a free one).

    It reserves the port for the workers, which bind it with SO_REUSEPORT too. A fixed port is
    first bound without SO_REUSEPORT, so a port held by someone else is refused, not shared.
    """
    from .server import check_port_free

    try:
        check_port_free(host, port)
    except ServeError as exc:
        raise OSError(str(exc)) from None
    held = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR too: SO_REUSEPORT alone is refused while the last server's accepted
    # connections sit in TIME_WAIT (up to 60 s after a stop). The probe above still refuses a
    # port that another live server listens on.
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((host, port))
    return held


def run(settings: ServerSettings, on_ready: Callable[[str], None]) -> int:
    """Serve with ``settings.workers`` processes (0: :func:`default_workers`); the exit code.
    ``on_ready`` gets the ready line once, when every worker is ready."""
    count = settings.workers or default_workers(model_control=settings.allow_model_control)
    if count == 1:
        from .server import serve

        return serve(settings, on_ready=lambda info: on_ready(ready_line(info)))
    return serve_workers(settings, count, on_ready)


def serve_workers(settings: ServerSettings, count: int, on_ready: Callable[[str], None]) -> int:
    """Fork ``count`` workers on one port, print one ready line, forward signals, reap them."""
    from .server import configure_logging

    configure_logging(settings.log_level)
    try:
        # HTTP (serve/http.py) is shared the same way; a closed socket stands in for a side off.
        held = hold_port(settings.host, settings.port) if settings.grpc else socket.socket()
    except OSError as exc:
        log.error("%s: the gRPC port (--port, or --no-grpc)", exc)
        return 1
    try:
        http_held = (
            hold_port(settings.host, settings.http_port) if settings.http else socket.socket()
        )
    except OSError as exc:
        held.close()
        log.error("%s: the HTTP port (--http-port, or --no-http)", exc)
        return 1
    port = held.getsockname()[1]
    if settings.http:
        settings = dataclasses.replace(settings, http_port=http_held.getsockname()[1])
    with held, http_held, _Supervisor(count) as supervisor:
        if supervisor.signals:  # signalled while Python was still importing
            log.info("stopped before serving")
            return 0
        for index in range(count):
            supervisor.fork(index, lambda fd, i=index: _worker(settings, i, count, port, fd))
        return supervisor.wait(on_ready, held)


def _worker(settings: ServerSettings, index: int, count: int, port: int, ready_fd: int) -> int:
    """In the child: one ordinary server on the shared port; reports its ready info on a pipe."""
    from .server import serve

    metrics = settings.metrics_port + index if settings.metrics_port else 0
    mine = dataclasses.replace(
        settings,
        port=port,
        workers=1,
        processes=count,
        worker_index=index,
        reuse_port=True,
        metrics_port=metrics,
    )
    return serve(mine, on_ready=lambda info: os.write(ready_fd, (info.to_json() + "\n").encode()))


class _Supervisor:
    """The parent: children by pid, their ready pipes, and signals as events on one selector."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.children: dict[int, int] = {}  # pid -> worker index
        self.codes: dict[int, int] = {}  # worker index -> exit code
        self.bodies: dict[int, Callable[[int], int]] = {}  # worker index -> what it runs
        self.pids: dict[int, int] = {}  # worker index -> its latest pid
        self.restarts: list[float] = []  # time.monotonic() of each restart, recent ones
        self.due: dict[int, float] = {}  # worker index -> when to start it again
        self.selector = selectors.DefaultSelector()
        self.signals: list[int] = []
        self.signalled = False  # a shutdown signal came: workers stopping early is no failure
        self._wake_r, self._wake_w = socket.socketpair()
        self._previous: dict[int, object] = {}
        self._watched = (*SHUTDOWN_SIGNALS, signal.SIGCHLD)

    def __enter__(self) -> _Supervisor:
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in self._watched:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        # Caught before these handlers: ours to forward, and never inherited by a worker.
        self.signals.extend(early_signals())
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        return self

    def __exit__(self, *exc) -> None:
        self._kill_all(signal.SIGKILL)  # only children still alive: an exception got here
        self._reap(block=True)
        signal.set_wakeup_fd(-1)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _on_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)

    def fork(self, index: int, body: Callable[[int], int]) -> None:
        self.bodies[index] = body
        read_fd, write_fd = os.pipe()
        # Blocked across the fork: a signal in between reaches the child's own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                os.close(read_fd)
                _detach_from_parent_group()
                signal.set_wakeup_fd(-1)
                for signum, handler in self._previous.items():
                    signal.signal(signum, handler)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self._watched)
                code = body(write_fd)
            except BaseException:  # noqa: BLE001 -- a child must never unwind into the parent
                logging.getLogger("bnmodel.serve").exception("worker failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self._watched)
        os.close(write_fd)
        self.children[pid] = index
        self.pids[index] = pid
        self.selector.register(os.fdopen(read_fd, "rb", buffering=0), selectors.EVENT_READ, index)
        log.info("worker %d: pid %d", index, pid)

    def wait(self, on_ready: Callable[[str], None], held: socket.socket) -> int:
        """Until every worker has exited: ready line, forwarded signals; 0 if all exited 0."""
        lines: dict[int, ServerInfo] = {}
        deadline = time.monotonic() + _READY_TIMEOUT_S
        stopping = announced = False
        while self.children or (self.due and not stopping):
            for key, _ in self.selector.select(timeout=self._select_timeout()):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                else:
                    self._read_ready(key, lines, announced)
            if len(lines) == self.count and not stopping and not announced:
                announced = True
                held.close()  # every worker listens now: the port needs no guard
                on_ready(ready_line(dataclasses.replace(lines[0], workers=self.count)))
            stopping = self._handle_signals(stopping)
            exited = self._reap(block=False)
            if exited and not stopping and not announced:  # a failed start: stop them all
                for index in exited:
                    log.error(
                        "worker %d: %s before it was ready (see above); stopping the others",
                        index,
                        _exit_status(self.codes[index]),
                    )
                self._kill_all(signal.SIGTERM)
                stopping = True
            elif exited and not stopping:  # the others keep serving; this one starts again
                stopping = not self._plan_restarts(exited)
            if not stopping:
                self._start_due()
            if not stopping and len(lines) < self.count and time.monotonic() > deadline:
                log.error("workers not ready after %.0f s; stopping", _READY_TIMEOUT_S)
                self._kill_all(signal.SIGTERM)
                stopping = True
        failed = {i: c for i, c in self.codes.items() if c != 0}
        if failed and announced:  # a failed start was reported above
            log.error("workers exited with %s", failed)
        return 0 if not failed and (len(lines) == self.count or self.signalled) else 1

    def _read_ready(
        self, key: selectors.SelectorKey, lines: dict[int, ServerInfo], announced: bool
    ) -> None:
        data = key.fileobj.read(65536)
        if not data:  # the child closed its end (exited)
            self.selector.unregister(key.fileobj)
            key.fileobj.close()
            return
        for raw in data.decode().splitlines():
            lines[key.data] = ServerInfo.from_json(raw)
            if announced:
                log.info("worker %d: restarted and serving again", key.data)

    def _plan_restarts(self, exited: list[int]) -> bool:
        """Schedule a restart of each worker in ``exited``; False: a crash loop, stopping."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < _RESTART_WINDOW_S]
        for index in exited:
            if len(self.restarts) >= _MAX_RESTARTS:
                log.error(
                    "worker %d: %s while serving, after %d restarts within %.0f s; stopping "
                    "the server (see the log above for why workers die)",
                    index,
                    _exit_status(self.codes[index]),
                    len(self.restarts),
                    _RESTART_WINDOW_S,
                )
                self._kill_all(signal.SIGTERM)
                self.due.clear()
                return False
            backoff = min(_FIRST_BACKOFF_S * 2 ** len(self.restarts), _MAX_BACKOFF_S)
            self.restarts.append(now)
            self.due[index] = now + backoff
            log.error(
                "worker %d (pid %d): %s while serving; the others go on, restarting it in %.1f s",
                index,
                self.pids[index],
                _exit_status(self.codes.pop(index)),  # logged here; the new process's counts
                backoff,
            )
        return True

    def _start_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self.due.items()):
            if when <= now:
                del self.due[index]
                self.fork(index, self.bodies[index])

    def _select_timeout(self) -> float:
        if not self.due:
            return 1.0
        return max(0.0, min(1.0, min(self.due.values()) - time.monotonic()))

    def _handle_signals(self, stopping: bool) -> bool:
        while self.signals:
            signum = self.signals.pop(0)
            if signum in SHUTDOWN_SIGNALS:
                self.signalled = True
                log.info("%s: forwarding to %d workers", signal.Signals(signum).name, self.count)
                self._kill_all(signum)
                stopping = True
        return stopping

    def _kill_all(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self, block: bool) -> list[int]:
        """Collect exited children; the index of each (its exit code in ``self.codes``)."""
        gone = []
        while self.children:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            if pid == 0:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue
            self.codes[index] = os.waitstatus_to_exitcode(status)
            gone.append(index)
        return gone


def _detach_from_parent_group() -> None:
    """Own process group: a terminal's Ctrl-C (or ``timeout``'s group kill) reaches only the
    parent, which forwards it once; a worker that got it twice would take it as the second,
    cancel-everything signal. And die with the parent (SIGTERM, so it still drains) even if the
    parent is SIGKILLed, so no orphan keeps the port."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _exit_status(code: int) -> str:
    """'exit 1', or 'killed by SIGKILL (exit -9)' for a worker ended by a signal."""
    if code >= 0:
        return f"exit {code}"
    with contextlib.suppress(ValueError):
        return f"killed by {signal.Signals(-code).name} (exit {code})"
    return f"exit {code}"
