"""HTTP/1.1 for serve/http_app.py's routes, on the gRPC server's event loop.

An :class:`asyncio.Protocol` fed by httptools (uvicorn's C parser): keep-alive and pipelining,
answers in order, and a drain that closes each connection after its last answer.

Limits: a request must arrive whole within ``request_timeout`` s of its first byte (408), an idle
keep-alive connection closes after ``idle_timeout``, bodies over ``body_limit`` bytes (413) and
headers past 64 KiB (431) are refused before they are read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable
from http import HTTPStatus

import httptools

from .errors import ServeError
from .http_app import HttpApp, HttpRequest, HttpResponse, error_response
from .http_codec import HEADER_LENGTH
from .security import LogLimiter, SecurityError, TLSFiles

__all__ = ["JSON_EXPANSION", "HttpServer", "ssl_context"]

log = logging.getLogger("bnmodel.serve")
_rejections = LogLimiter(log)

# A JSON body may be this many times the gRPC message limit: a float written as JSON text takes
# up to ~24 bytes ("-0.0001234567890123456,") where raw FP32 takes 4.
JSON_EXPANSION = 6
MAX_HEADER_BYTES = 64 * 1024  # request line and headers together
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Connection(asyncio.Protocol):
    """One client connection: parse with httptools, answer requests in order (keep-alive and
    pipelining), time out slow or idle clients."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.request: HttpRequest | None = None  # the one being received
        self.header_bytes = 0
        self.pending: collections.deque[HttpRequest] = collections.deque()
        self.busy = False  # a response is being computed
        self.write_paused = False  # the client does not read its answers: stop answering
        self.closing = False
        self.close_after = False  # upgrade asked for, or the client half-closed
        self.timer: asyncio.TimerHandle | None = None
        self.answered = 0  # responses sent

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        self._arm(self.server.idle_timeout, 0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._arm(self.server.request_timeout, 0)  # closed if it stays paused this long

    def resume_writing(self) -> None:
        self.write_paused = False
        self._disarm()
        if not self.busy:
            self._next()

    def eof_received(self) -> bool:
        """The client closed its sending side: a request cut short gets a 400; answers to whole
        requests still go out, then the connection closes."""
        if self.request is not None and not self.closing:
            got = len(self.request.body)
            expected = self.request.headers.get("content-length", "?")
            self._fail(
                400,
                f"request truncated: the client closed its side after {got} of {expected} "
                "body bytes",
            )
            return False
        if self.busy or self.pending:
            self.close_after = True
            return True
        return False

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Ignored, as HTTP allows: the request is answered over HTTP/1.1, then the connection
            # closes, since the parser reads nothing after an upgrade request.
            self.close_after = True
            if not self.busy and not self.pending:
                self._close()
        except httptools.HttpParserError as exc:
            if not self.closing:  # not a limit our callbacks already answered
                self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = HttpRequest()
        self.header_bytes = 0
        self._arm(self.server.request_timeout, 408)

    def on_url(self, url: bytes) -> None:
        self.request.url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        key = name.decode("latin-1").lower()
        if key in self.request.headers and key in (
            "content-length",
            "authorization",
            HEADER_LENGTH,
        ):
            self._fail(400, f"header {key!r} is given more than once")
            return
        self.request.headers[key] = value.decode("latin-1")

    def _count_header_bytes(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_HEADER_BYTES:
            self._fail(431, f"request line and headers exceed {MAX_HEADER_BYTES} bytes")
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        request = self.request
        request.method = self.parser.get_method().decode("latin-1")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.body_limit:
            self._too_large(f" of {length} bytes")
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            self._fail(
                415,
                f"Content-Encoding {encoding[:32]!r} is not supported; send the body uncompressed",
            )
            raise httptools.HttpParserError("encoded body")
        if request.headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.request
        if not request.body:
            request.body = body
        else:
            if isinstance(request.body, bytes):
                request.body = bytearray(request.body)
            request.body += body
        if len(request.body) > self.server.body_limit:
            self._too_large("")

    def _too_large(self, size: str) -> None:
        self._fail(
            413,
            f"request body{size} exceeds this server's limit of {self.server.body_limit} bytes "
            "(sized for max_batch_size rows of the largest model)",
        )
        raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        request, self.request = self.request, None
        request.keep_alive = self.parser.should_keep_alive()
        if not request.url.startswith(b"/"):
            request.url = _origin_form(request.url)
        if isinstance(request.body, bytearray):
            request.body = bytes(request.body)
        self._disarm()
        self.pending.append(request)
        if len(self.pending) > 16:  # a pipelining client waits for answers before more reads
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    # -- answering ----------------------------------------------------------------------------

    def _next(self) -> None:
        while self.pending and not self.closing and not self.write_paused:
            request = self.pending.popleft()
            result = self.server.app.handle(request)
            if isinstance(result, HttpResponse):
                self._send(request, result)
                continue
            self.busy = True
            self.loop.create_task(self._finish(request, result))
            return
        if not self.closing and not self.write_paused:
            self.transport.resume_reading()
            if self.request is None:
                self._arm(self.server.idle_timeout, 0)

    async def _finish(self, request: HttpRequest, result: Awaitable[HttpResponse]) -> None:
        try:
            response = await result
        finally:
            self.busy = False
        if not self.closing:
            self._send(request, response)
            self._next()

    def _send(self, request: HttpRequest, response: HttpResponse) -> None:
        # Draining: each answer closes its connection once nothing received is left to answer,
        # so a keep-alive client reconnects (and is refused) instead of sending its next request
        # into a connection that the end of the drain closes unanswered.
        last = not self.pending
        keep_alive = request.keep_alive and not (
            last and (self.server.draining or self.close_after)
        )
        head = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
            f"content-type: {response.content_type}\r\ncontent-length: {len(response.body)}\r\n"
        ]
        head += [f"{name}: {value}\r\n" for name, value in response.headers]
        if not keep_alive:
            head.append("connection: close\r\n")
        head.append("\r\n")
        body = b"" if request.method == "HEAD" else response.body
        self.transport.writelines(("".join(head).encode("latin-1"), body))
        self.answered += 1
        if not keep_alive:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        """Answer ``status`` at once (even with requests pending) and close: the stream can no
        longer be trusted to frame the next request."""
        if self.closing:
            return
        _rejections.warning("HTTP request refused: %d: %s", status, message)
        self._send(HttpRequest(keep_alive=False), error_response(status, message))

    def _close(self) -> None:
        self.closing = True
        self._disarm()
        self.transport.close()

    # -- timers -------------------------------------------------------------------------------

    def _arm(self, seconds: float, status: int) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._expired, status)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self, status: int) -> None:
        self.timer = None
        if self.write_paused:
            self._close()  # a client that stopped reading its answers
        elif status and not self.busy:
            timeout = self.server.request_timeout
            self._fail(status, f"request not received in full within {timeout:g} s")
        elif not self.busy and not self.pending:
            self._close()  # idle keep-alive connection

    def close_if_idle(self) -> None:
        if not self.busy and not self.pending and self.request is None:
            self._close()


def _refuse_new_connections(listener: socket.socket) -> None:
    """Drop new connection attempts (SYNs) to a listener about to close, so that none is queued
    between emptying its accept queue and closing it (which would reset it): the client tries
    again a second later and reaches another worker's listener, or is refused. Linux only: a
    socket filter that accepts no packet; elsewhere the window stays (microseconds)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    drop_all = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF "ret #0"
    program = struct.pack("HL", 1, ctypes.addressof(drop_all))  # struct sock_fprog
    with contextlib.suppress(OSError):
        listener.setsockopt(socket.SOL_SOCKET, 26, program)  # SO_ATTACH_FILTER


def _origin_form(url: bytes) -> bytes:
    """``http://host:port/path?query`` -> ``/path?query``: the absolute form of a request
    target, which a server must accept (RFC 9112 3.2.2; proxies send it); other forms as sent."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return url
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    target = rest[cut:]
    return target if target.startswith(b"/") else b"/" + target


# File descriptors running out (EMFILE/ENFILE): the listener cannot accept, and clients see
# refused or reset connections. asyncio logs a traceback per failed accept; uvloop (libuv)
# drops the connection silently. Both get one line, at most once a minute, naming the limit.
try:
    import resource
except ImportError:  # not on Windows: no check there
    resource = None
_FD_DIR = "/proc/self/fd" if resource is not None and os.path.isdir("/proc/self/fd") else ""
_FD_WARN_FRACTION = 0.95
_fd_log = LogLimiter(log, per_second=1 / 60, burst=1)


def _fd_warning(open_files: int | str) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    _fd_log.warning(
        "HTTP cannot accept more connections: %s files open, the limit is %d (ulimit -n; "
        "RLIMIT_NOFILE): new connections are refused or reset until some close. Raise the "
        "limit, or lower the clients' connection count",
        open_files,
        soft,
    )


async def _watch_open_files(every_s: float) -> None:
    """Every ``every_s`` s: warn when open descriptors reach 95% of the soft limit."""
    while True:
        await asyncio.sleep(every_s)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            count = len(os.listdir(_FD_DIR))
        except OSError:  # EMFILE itself: listing needs a descriptor
            count = soft
        if count >= _FD_WARN_FRACTION * soft:
            _fd_warning(count)


def _accept_errors(previous):
    """The loop's exception handler, with asyncio's accept failures as our one line."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
            _fd_warning("all")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handler


def ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """The server's TLS context: its certificate, and client certificates required when ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.ca is not None:
            context.load_verify_locations(tls.ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SecurityError(
            f"--tls-cert/--tls-key/--tls-ca: cannot use them for HTTP ({exc})"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class HttpServer:
    """The listening socket and its connections; :meth:`close` after the drain gate emptied."""

    def __init__(
        self,
        app: HttpApp,
        body_limit: int,
        *,
        request_timeout: float = 30.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self.draining = False  # answers carry "connection: close" (see drain())
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._watch: asyncio.Task | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        fd_check_s: float = 5.0,
    ) -> int:
        """Listen; ``fd_check_s``: how often to check for file descriptors running out."""
        loop = asyncio.get_running_loop()
        self._tls = tls
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self),
                host,
                port,
                ssl=tls,
                reuse_port=reuse_port or None,
                backlog=1024,
            )
        except OSError as exc:
            raise ServeError(
                f"cannot listen for HTTP on {host}:{port} ({exc.strerror}); "
                "choose another --http-port, or --no-http"
            ) from None
        if _FD_DIR and fd_check_s > 0:
            loop.set_exception_handler(_accept_errors(loop.get_exception_handler()))
            self._watch = loop.create_task(_watch_open_files(fd_check_s))
        return self._server.sockets[0].getsockname()[1]

    def drain(self) -> None:
        """From now on every answer closes its connection: the clients of busy connections
        learn to go elsewhere with their answer, and idle ones are closed by :meth:`close`."""
        self.draining = True

    async def close(self, linger: float = 0.2, fresh_wait: float = 1.0) -> None:
        """Stop listening, answer what is already on its way, then close idle connections;
        busy ones close after their answer.

        Closing a listening socket resets the connections still in its accept queue, whose
        clients have often sent their request already; so the queue is emptied first, through
        a second descriptor of the same socket (the kernel queues until the last one closes).
        Requests arriving within ``linger`` s on any open connection get a 503, and so does
        the first request of a connection that has sent none yet, up to ``fresh_wait`` s.
        """
        self.draining = True
        if self._watch is not None:
            self._watch.cancel()
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        listeners = [socket.socket(fileno=os.dup(s.fileno())) for s in self._server.sockets]
        self._server.close()
        for listener in listeners:
            with listener:
                _refuse_new_connections(listener)
                listener.setblocking(False)
                while True:
                    try:
                        accepted, _ = listener.accept()
                    except OSError:  # BlockingIOError: the queue is empty
                        break
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await loop.connect_accepted_socket(
                            lambda: _Connection(self), accepted, ssl=self._tls
                        )
        await asyncio.sleep(linger)
        for connection in list(self.connections):
            if connection.answered:
                connection.close_if_idle()
        # A connection accepted just now gets its first request a moment later, its client
        # thread busy elsewhere: wait for it (bounded), then close what is still idle.
        deadline = loop.time() + fresh_wait
        while loop.time() < deadline and any(not c.answered for c in self.connections):
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close_if_idle()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
