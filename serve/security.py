"""Who may talk to the server: TLS / mutual TLS, bearer tokens, model control; bounded logging.

With ``--auth-token-file`` every RPC but the gRPC health service (load balancers probe without
the secret) needs ``authorization: Bearer <token>``. :class:`TokenInterceptor` checks it before
any handler runs and is installed only when a token is set, so a server without tokens pays
nothing per RPC. The model-control switch is applied where the inference handlers are
registered (serve/servicer.py), with :func:`model_control_refusal`'s message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = [
    "HEALTH_SERVICE",
    "MODEL_CONTROL_METHODS",
    "SecurityError",
    "TLSFiles",
    "server_credentials",
    "channel_credentials",
    "read_token",
    "bearer_metadata",
    "token_matches",
    "TokenInterceptor",
    "model_control_refusal",
    "LogLimiter",
]

log = logging.getLogger("bnmodel.serve")

HEALTH_SERVICE = "grpc.health.v1.Health"
MODEL_CONTROL_METHODS = ("RepositoryModelLoad", "RepositoryModelUnload")
_MAX_TOKEN_BYTES = 4096


class SecurityError(ValueError):
    """A TLS or token file (named by its flag) that cannot be used."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files. Server: cert/key to serve TLS, ca to require client certificates.
    Client: ca to trust the server (default: system roots), cert/key to present for mTLS."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SecurityError("--tls-cert and --tls-key go together: give both or neither")

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None


def _read_pem(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{flag} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


def server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    """TLS credentials for the server; mutual TLS (client certificate required) when ``ca``."""
    if tls.cert is None:
        raise SecurityError("--tls-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
    pair = (_read_pem(tls.key, "--tls-key"), _read_pem(tls.cert, "--tls-cert"))
    ca = _read_pem(tls.ca, "--tls-ca")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=bool(ca))


def channel_credentials(tls: TLSFiles) -> grpc.ChannelCredentials:
    """TLS credentials for a client: trust ``ca`` (or the system roots), present cert/key."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.ca, "--tls-ca"),
        private_key=_read_pem(tls.key, "--tls-key"),
        certificate_chain=_read_pem(tls.cert, "--tls-cert"),
    )


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace removed): printable ASCII, no spaces."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"--auth-token-file {path}: cannot read it ({exc.strerror})") from None
    token = data.strip()
    if not token:
        raise SecurityError(f"--auth-token-file {path}: the file is empty")
    if len(token) > _MAX_TOKEN_BYTES or not all(0x21 <= b <= 0x7E for b in token):
        raise SecurityError(
            f"--auth-token-file {path}: expected one token of printable ASCII without spaces "
            f"(at most {_MAX_TOKEN_BYTES} bytes), got {len(token)} bytes that are not"
        )
    if Path(path).stat().st_mode & 0o077:
        log.warning("--auth-token-file %s is readable by other users (chmod 600 it)", path)
    return token.decode("ascii")


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (empty when there is none)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def token_matches(metadata: Sequence[tuple[str, str | bytes]], token: str) -> bool:
    """Whether ``metadata`` holds exactly one ``authorization: Bearer <token>``.

    Both sides are hashed first, so compare_digest sees equal lengths and the time taken says
    nothing about the token's length or content.
    """
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return False
    scheme, _, given = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    expected = hashlib.sha256(token.encode()).digest()
    received = hashlib.sha256(given.strip().encode("utf-8", "replace")).digest()
    return hmac.compare_digest(expected, received)


class LogLimiter:
    """At most ``per_second`` lines per second (burst ``burst``); the rest are counted and the
    count is added to the next line written, so a flood of bad requests cannot fill the disk."""

    def __init__(self, logger: logging.Logger, per_second: float = 10.0, burst: int = 20):
        self.logger = logger
        self.per_second = per_second
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._suppressed = 0
        self._lock = threading.Lock()

    def _allow(self) -> int | None:
        """None: suppress this line; otherwise how many were suppressed before it."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
            self._last = now
            if self._tokens < 1:
                self._suppressed += 1
                return None
            self._tokens -= 1
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed

    def warning(self, message: str, *args: object) -> None:
        suppressed = self._allow()
        if suppressed is None:
            return
        if suppressed:
            message += " (%d similar lines suppressed)"
            args = (*args, suppressed)
        self.logger.warning(message, *args)


_HANDLERS = {  # (request streaming, response streaming) -> the kind of handler
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as ``handler`` that answers ``code`` and does nothing else."""

    async def abort(request, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return _HANDLERS[handler.request_streaming, handler.response_streaming](abort)


def model_control_refusal(method: str) -> str:
    """PERMISSION_DENIED's message for RepositoryModelLoad/Unload without --allow-model-control."""
    return (
        f"{method} is disabled on this server; start it with --allow-model-control "
        "to load and unload models"
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token check for every RPC but health, before any handler runs."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.limiter = LogLimiter(log)

    def _refusal(self, details: grpc.HandlerCallDetails) -> str | None:
        # "/inference.GRPCInferenceService/ModelInfer" -> ("inference.GRPCInferenceService", ...)
        _, service, method = (details.method.split("/") + ["", ""])[:3]
        if service == HEALTH_SERVICE or token_matches(
            details.invocation_metadata or (), self.token
        ):
            return None
        return (
            f"{method or details.method} needs the metadata 'authorization: Bearer <token>' "
            "with this server's token"
        )

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        refusal = self._refusal(handler_call_details) if handler is not None else None
        if refusal is None:
            return handler
        code = grpc.StatusCode.UNAUTHENTICATED
        self.limiter.warning("%s refused: %s: %s", handler_call_details.method, code.name, refusal)
        return _deny(handler, code, refusal)
