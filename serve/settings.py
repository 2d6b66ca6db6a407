"""Server settings: a frozen dataclass validated on construction; messages name the flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .affinity import PIN_CHOICES
from .eventloop import EventLoopError, resolve_loop

__all__ = ["DEVICES", "MAX_MESSAGE_BYTES", "SettingsError", "ServerSettings"]

DEVICES = ("auto", "cpu", "cuda")
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's message length limits are signed 32-bit


class SettingsError(ValueError):
    """A server setting (command-line flag) with a value that cannot work."""


@dataclass(frozen=True)
class ServerSettings:
    model_repository: Path | None = None  # Triton-layout folder, or
    model_path: Path | None = None  # one ONNX file served as one model
    model_name: str | None = None  # name for model_path (default: the file's stem)
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8001  # 0: any free port (the ready line says which)
    device: str = "auto"
    max_batch_size: int = 1024  # for model_path, which has no config.pbtxt
    max_message_bytes: int = 0  # 0: what max_batch_size rows of the largest model need
    intra_op_threads: int = 0  # 0: suited to the machine (serve/session.py)
    workers: int = 0  # server processes sharing the port (serve/workers.py); 0: suited
    reuse_port: bool = False  # set for each worker process: bind with SO_REUSEPORT
    processes: int = 1  # set for each worker process: how many share the machine's cores
    worker_index: int = 0  # set for each worker process: which one it is (its core when pinned)
    pin_loop: str = "off"  # "on": pin the event loop and gRPC threads to a core (affinity.py)
    grace_seconds: float = 30.0  # how long SIGTERM waits for requests in flight
    # Dynamic batching (serve/batching.py); None/0 defer to each model's config.pbtxt.
    batching: bool = True  # False (--no-batching): every request runs alone
    max_queue_delay_us: int | None = None  # overrides dynamic_batching's delay (and turns it on)
    max_queue_size: int = 0  # requests queued per model version; 0: config's, else 1024
    max_queue_bytes: int = 256 * 1024 * 1024  # input bytes queued per model version
    max_concurrent_rpcs: int = 1024  # inference RPCs in flight per server process; 0: no limit
    max_inline_us: int = 50  # batches calibrated to run this fast run on the loop; 0: never
    metrics_port: int = 0  # Prometheus /metrics on host:metrics_port; 0: off
    event_loop: str = "auto"  # auto: uvloop when installed, else asyncio (serve/eventloop.py)
    log_level: str = "INFO"
    # Access control (serve/security.py): TLS when cert+key, mutual TLS when also ca.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    auth_token_file: Path | None = None  # every RPC but health needs "Bearer <token>"
    allow_model_control: bool = False  # RepositoryModelLoad/Unload: PERMISSION_DENIED when off
    reject_non_finite: bool = False  # NaN/inf inputs: INVALID_ARGUMENT instead of computed
    exit_on_error: bool = False  # a model that fails to load stops the server (exit 1)

    def __post_init__(self) -> None:
        if (self.model_repository is None) == (self.model_path is None):
            raise SettingsError("give exactly one of --model-repository DIR and --model FILE.onnx")
        if self.model_repository is not None and not Path(self.model_repository).is_dir():
            raise SettingsError(f"--model-repository {self.model_repository}: no such folder")
        if self.model_path is not None and not Path(self.model_path).is_file():
            raise SettingsError(f"--model {self.model_path}: no such file")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port must be in 0..65535, got {self.port}")
        if self.device not in DEVICES:
            raise SettingsError(f"--device must be one of {', '.join(DEVICES)}, got {self.device}")
        self._check_non_negative()
        self._check_access_files()
        if self.pin_loop not in PIN_CHOICES:
            raise SettingsError(
                f"--pin-loop must be one of {', '.join(PIN_CHOICES)}, got {self.pin_loop}"
            )
        if self.allow_model_control and self.workers > 1:
            raise SettingsError(
                "--allow-model-control needs --workers 1: every worker process has its own "
                "models, and a load or unload would reach only the one holding the connection"
            )
        try:
            resolve_loop(self.event_loop)
        except EventLoopError as exc:
            raise SettingsError(str(exc)) from None

    def _check_non_negative(self) -> None:
        for flag, value in (
            ("--max-message-bytes", self.max_message_bytes),
            ("--intra-op-threads", self.intra_op_threads),
            ("--workers", self.workers),
            ("--grace-seconds", self.grace_seconds),
            ("--max-queue-delay-us", self.max_queue_delay_us or 0),
            ("--max-queue-size", self.max_queue_size),
            ("--max-inline-us", self.max_inline_us),
            ("--max-queue-bytes", self.max_queue_bytes),
            ("--max-concurrent-rpcs", self.max_concurrent_rpcs),
        ):
            if value < 0:
                raise SettingsError(f"{flag} must be >= 0, got {value}")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        if self.max_message_bytes > MAX_MESSAGE_BYTES:
            raise SettingsError(
                f"--max-message-bytes must be at most {MAX_MESSAGE_BYTES} (gRPC's largest), "
                f"got {self.max_message_bytes}"
            )
        if self.max_batch_size < 1:
            raise SettingsError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")

    def _check_access_files(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise SettingsError("--tls-ca (require client certificates) needs --tls-cert/--tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-ca", self.tls_ca),
            ("--auth-token-file", self.auth_token_file),
        ):
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"{flag} {path}: no such file")
