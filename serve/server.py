"""The gRPC server: grpc.aio, health, reflection, graceful drain on SIGTERM/SIGINT.

Start order: read the model configs (to size the message limit), bind and start with health
NOT_SERVING, load the models (ServerReady false meanwhile), then SERVING and the ready line.
A signal sets health NOT_SERVING, stops taking new RPCs and lets the ones in flight finish
(up to ``grace_seconds``); a second signal cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .batching import BatchingOptions
from .dataplane import ONCE, DataPlane
from .errors import ServeError
from .model import message_bytes, signature_from_config
from .ready import ServerInfo
from .repository import DEFAULT_MODEL_FILE, ModelRepository, SingleModelRepository
from .security import SecurityError, TLSFiles, TokenInterceptor, read_token, server_credentials
from .servicer import SERVICE_NAME, InferenceServicer, build_handler
from .session import SessionFactory, default_threads
from .settings import ServerSettings, resolve_loop
from .shutdown import SHUTDOWN_SIGNALS, DrainGate, early_signals

__all__ = [
    "InferenceServer",
    "run_server",
    "serve",
]

log = logging.getLogger("bnmodel.serve")

_GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024


def _open_repository(settings: ServerSettings):
    if settings.model_path is not None:
        return SingleModelRepository(
            settings.model_path, settings.model_name, settings.max_batch_size
        )
    return ModelRepository(settings.model_repository)


class InferenceServer:
    """One grpc.aio server with the inference, health and reflection services."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        threads = default_threads(settings.intra_op_threads, processes=settings.processes)
        self.executor = ThreadPoolExecutor(threads.workers, thread_name_prefix="bnmodel-run")
        self.factory = SessionFactory(settings.device, threads.intra_op)
        batching = BatchingOptions(
            enabled=settings.batching,
            max_queue_delay_us=settings.max_queue_delay_us,
            max_queue_size=settings.max_queue_size,
            max_queue_bytes=settings.max_queue_bytes,
            runs=threads.workers,
            max_inline_us=settings.max_inline_us,
        )
        self.dataplane = DataPlane(
            _open_repository(settings), self.factory, self.executor, batching
        )
        self.metrics = None  # the Prometheus HTTP server, when --metrics-port is set
        self.health = health.aio.HealthServicer()
        self.gate = DrainGate(limit=settings.max_concurrent_rpcs)
        file = settings.auth_token_file  # read once, for gRPC and HTTP alike
        self.token = read_token(file) if file is not None else None
        self.dataplane.reject_non_finite = settings.reject_non_finite
        self.dataplane.count_categories = bool(settings.metrics_port)
        self.http = None  # serve/http.py's HttpServer, unless --no-http
        self.http_port = 0
        self._server: grpc.aio.Server | None = None

    def _message_limit(self) -> int:
        """--max-message-bytes, else what max_batch_size rows of the largest model need, never
        below gRPC's own 4 MiB default. A config that cannot be read, or needs more than gRPC
        accepts, is left out: its load fails and says why, for this model alone."""
        if self.settings.max_message_bytes:
            return self.settings.max_message_bytes
        need = _GRPC_DEFAULT_LIMIT
        repository = self.dataplane.repository
        for name in repository.names():
            with contextlib.suppress(Exception):
                need = max(
                    need, message_bytes(signature_from_config(repository.source(name).config))
                )
        return need

    async def start(self) -> int:
        """Bind and start serving (health NOT_SERVING, no models yet); returns the bound gRPC
        port (0 with --no-grpc). HTTP, unless --no-http, listens on ``self.http_port``."""
        limit = self._message_limit()
        if self.settings.http:
            self.http_port = await self._start_http(limit)
        if not self.settings.grpc:
            return 0
        self._server = grpc.aio.server(
            # Only token auth: the drain gate and model control live in the handlers (servicer.py)
            interceptors=[TokenInterceptor(self.token)] if self.token is not None else [],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Only worker processes (serve/workers.py) share a port; never by accident.
                ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
            ],
        )
        servicer = InferenceServicer(self.dataplane)
        self._server.add_generic_rpc_handlers(
            (build_handler(servicer, self.gate, self.settings.allow_model_control),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        port = self._bind(address)
        await self._server.start()
        log.info(
            "listening on %s:%d (max message %d bytes; %s event loop; %s)",
            self.settings.host,
            port,
            limit,
            type(asyncio.get_running_loop()).__module__.split(".")[0],  # the loop really running
            self._access_summary(),
            extra=ONCE,
        )
        return port

    async def _start_http(self, message_limit: int) -> int:
        """The HTTP side (serve/http.py): same data plane, drain gate, token and TLS files."""
        from .http import JSON_EXPANSION, HttpServer, ssl_context
        from .http_app import HttpApp

        s = self.settings
        app = HttpApp(
            self.dataplane, self.gate, token=self.token, allow_model_control=s.allow_model_control
        )
        self.http = HttpServer(app, JSON_EXPANSION * message_limit)
        tls = ssl_context(self._tls()) if s.tls_cert is not None else None
        port = await self.http.start(s.host, s.http_port, tls=tls, reuse_port=s.reuse_port)
        log.info(
            "HTTP on %s://%s:%d (max body %d bytes)",
            "https" if tls else "http",
            s.host,
            port,
            self.http.body_limit,
        )
        return port

    def _tls(self) -> TLSFiles:
        return TLSFiles(self.settings.tls_cert, self.settings.tls_key, self.settings.tls_ca)

    def _bind(self, address: str) -> int:
        if not self.settings.reuse_port:  # our message, before gRPC's C core logs its own
            check_port_free(self.settings.host, self.settings.port)
        tls = self._tls()
        credentials = server_credentials(tls) if tls.enabled else None
        try:
            if credentials is not None:
                return self._server.add_secure_port(address, credentials)
            return self._server.add_insecure_port(address)
        except RuntimeError:
            raise ServeError(f"cannot listen on {address} (in use, or not local)") from None

    def _access_summary(self) -> str:
        s = self.settings
        transport = "mutual TLS" if s.tls_ca else "TLS" if s.tls_cert else "plaintext"
        if s.auth_token_file and not s.tls_cert and s.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("--auth-token-file without TLS: tokens cross the network in clear text")
        return (
            f"{transport}; token auth {'on' if s.auth_token_file else 'off'}; "
            f"model control {'on' if s.allow_model_control else 'off'}"
        )

    def start_metrics(self) -> None:
        """Serve Prometheus metrics if --metrics-port is set."""
        port = self.settings.metrics_port
        if not port:
            return
        from .metrics import start_metrics_server  # prometheus-client only when asked for

        try:
            self.metrics = start_metrics_server(self.settings.host, port, self.dataplane.statistics)
        except OSError as exc:
            raise ServeError(f"--metrics-port {port}: cannot listen ({exc.strerror})") from None
        log.info("metrics on http://%s:%d/metrics", self.settings.host, port)

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def load_models(self) -> list[str]:
        """Load every model; mark the server ready and SERVING if at least one loaded."""
        loaded = await self.dataplane.load_all()
        if loaded:
            self.dataplane.set_ready(True)
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return loaded

    async def stop(self, grace: float | None) -> bool:
        """NOT_SERVING at once, refuse new RPCs, wait up to ``grace`` s for those in flight.

        The listener stays open while draining, so health checks see NOT_SERVING and new
        requests get UNAVAILABLE instead of a refused connection. True: all were answered.
        """
        self.dataplane.set_ready(False)
        if self.http is not None:
            self.http.drain()
        await self.health.enter_graceful_shutdown()
        drained = await self.gate.drain(grace)
        if self.metrics is not None:  # scraped until the drain ends; shutdown() blocks: a thread
            await asyncio.to_thread(self.metrics.shutdown)
        if self.http is not None:
            await self.http.close()
        if self._server is not None:
            # After a full drain only streams (health Watch) and held refusals remain: gRPC's
            # GOAWAY goes out first, then the refusals are answered, so the clients' next calls
            # go to a new connection (refused) rather than racing this one's end.
            stopping = asyncio.ensure_future(self._server.stop(1.0 if drained else 0))
            await asyncio.sleep(0.05)
            self.gate.release_refusals()
            await stopping
        # Off the loop, so a second signal is still handled while runs finish.
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        return drained

    async def cancel_all(self) -> None:
        """Cancel RPCs still running (the second signal)."""
        if self._server is not None:
            await self._server.stop(None)


def check_port_free(host: str, port: int) -> None:
    """ServeError unless ``host:port`` can be bound (port 0 always can)."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gRPC binds: a port left in TIME_WAIT by a server just stopped is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _install_signal_handlers(server: InferenceServer, stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT: set ``stop`` (drain). Second: cancel what is running and exit.
    Signals caught before the loop existed (serve/shutdown.py) are replayed here."""
    loop = asyncio.get_running_loop()
    seen = []
    tasks = set()  # the loop keeps only weak references to tasks

    def on_signal(signum: int) -> None:
        seen.append(signum)
        name = signal.Signals(signum).name
        if len(seen) == 1:
            log.info(
                "%s: draining %d requests in flight (up to %.0f s)",
                name,
                server.gate.in_flight,
                server.settings.grace_seconds,
            )
            stop.set()
        else:
            log.warning("%s again: exiting now, cancelling requests still in flight", name)
            task = loop.create_task(_force_exit(server, 128 + signum))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    for signum in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    for signum in early_signals():
        on_signal(signum)


async def _force_exit(server: InferenceServer, code: int) -> None:
    """The second signal: cancel RPCs (1 s at most), flush the log, exit without waiting."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.cancel_all(), 1.0)
    for handler in logging.getLogger("bnmodel").handlers:
        handler.flush()
    os._exit(code)


async def run_server(settings: ServerSettings, on_ready: Callable[[ServerInfo], None]) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain, 1 when no model could be loaded (or
    one could not, with --exit-on-error)."""
    start = time.perf_counter()
    server = InferenceServer(settings)
    stop = asyncio.Event()
    # Installed first, so a signal during model loading also ends in an orderly stop.
    _install_signal_handlers(server, stop)
    if stop.is_set():  # signalled while Python was still importing: nothing to drain
        log.info("stopped before serving", extra=ONCE)
        return 0
    port = await server.start()
    server.start_metrics()
    loaded = await server.load_models()
    failed = tuple(sorted(server.dataplane.failures))
    refusal = _refusal(settings, loaded, failed)
    if refusal:
        log.error("%s; stopping", refusal, extra=ONCE)
        await server.stop(0)
        return 1
    if not stop.is_set():
        providers = tuple(server.factory.providers)
        elapsed = time.perf_counter() - start
        on_ready(
            ServerInfo(
                settings.host,
                port,
                tuple(loaded),
                providers,
                elapsed,
                server.http_port,
                settings.tls_cert is not None,
                failed,
            )
        )
    await stop.wait()
    if not await server.stop(settings.grace_seconds):
        log.warning("grace period over: requests still in flight were cancelled")
        return 1
    log.info("stopped (%d new requests refused while draining)", server.gate.refused)
    return 0


def _refusal(settings: ServerSettings, loaded: list[str], failed: tuple[str, ...]) -> str:
    """Why the server must not start serving; "" when it may."""
    if failed and settings.exit_on_error:
        return f"--exit-on-error: {len(failed)} model(s) failed to load ({', '.join(failed)})"
    if loaded:
        return ""
    if failed:
        return f"no model could be loaded ({', '.join(failed)} failed, see above)"
    root = settings.model_repository
    return (
        f"no models in {root}: expected {root}/NAME/config.pbtxt and "
        f"{root}/NAME/1/{DEFAULT_MODEL_FILE} per model (`bnmodel export --repository {root}` "
        "writes this layout)"
    )


def configure_logging(level: str, worker: int | None = None) -> None:
    """One line per event on stderr: time, level, message. ``worker``: a worker process's
    index (``--workers`` > 1): its lines say which worker; events every worker sees alike
    (logged with ``extra=ONCE``) are logged by worker 0 alone."""
    tag = "" if worker is None else f"worker {worker}: "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(message)s"))
    if worker:
        handler.addFilter(lambda record: not getattr(record, "once", False))
    logger = logging.getLogger("bnmodel")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def serve(settings: ServerSettings, on_ready: Callable[[ServerInfo], None] | None = None) -> int:
    """Run the server in this process until a signal; returns the exit code."""
    worker = settings.worker_index if settings.processes > 1 else None
    configure_logging(settings.log_level, worker)
    try:
        main = run_server(settings, on_ready or (lambda info: None))
        if resolve_loop(settings.event_loop) == "uvloop":
            import uvloop

            return uvloop.run(main)
        return asyncio.run(main)
    except (ServeError, SecurityError) as exc:
        log.error("%s", exc)
        return 1
