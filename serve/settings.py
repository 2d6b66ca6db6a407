"""Server settings: a frozen dataclass validated on construction; messages name the flag.

Each field that is a ``bnmodel serve`` flag carries its help text (and range, choices) in its
metadata; serve/cli.py builds the flags from these, so every default lives here alone.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_INLINE_US",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEVICES",
    "EVENT_LOOPS",
    "MAX_MESSAGE_BYTES",
    "SettingsError",
    "ServerSettings",
    "cpu_count",
    "flag_name",
    "resolve_loop",
]

DEVICES = ("auto", "cpu", "cuda")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's message length limits are signed 32-bit
# Every default that another module needs too (the batch queue, the clients' messages, the
# one-file repository) is here once; ServerSettings' fields and their flags use these.
DEFAULT_GRPC_PORT = 8001  # Triton's ports
DEFAULT_HTTP_PORT = 8000
DEFAULT_MAX_BATCH_SIZE = 1024  # a model served with --model, which has no config.pbtxt
DEFAULT_MAX_QUEUE_SIZE = 1024  # requests waiting per model version, when nothing says otherwise
DEFAULT_MAX_QUEUE_BYTES = 256 * 1024 * 1024  # input bytes waiting per model version
DEFAULT_MAX_INLINE_US = 50  # longest calibrated run allowed on the event loop
DEFAULT_MAX_CONCURRENT_RPCS = 1024
_PORT = (0, 65535)
_COUNT = (0, None)


class SettingsError(ValueError):
    """A server setting (command-line flag) with a value that cannot work."""


def _flag(default: Any, help: str, **options: Any) -> Any:
    """A field that is also a flag: ``help`` (argparse's), and optionally ``flag`` (name, when
    not --FIELD-NAME), ``range`` ((low, high), None: unbounded), ``choices``, ``metavar``."""
    return field(default=default, metadata={"help": help, **options})


@dataclass(frozen=True)
class ServerSettings:
    model_repository: Path | None = _flag(
        None,
        "Triton-layout repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx",
        metavar="DIR",
    )
    model_path: Path | None = _flag(
        None, "serve one ONNX file", flag="--model", metavar="FILE.onnx"
    )
    model_name: str | None = _flag(None, "name for --model (default: the file's stem)")
    host: str = _flag("127.0.0.1", "address to bind")
    port: int = _flag(
        DEFAULT_GRPC_PORT, "0 picks a free port (the ready line says which)", range=_PORT
    )
    device: str = _flag("auto", "auto: CUDA when it really works, else CPU", choices=DEVICES)
    max_batch_size: int = _flag(
        DEFAULT_MAX_BATCH_SIZE, "for --model, which has no config.pbtxt", range=(1, None)
    )
    max_message_bytes: int = _flag(
        0, "gRPC message limit; 0: what max_batch_size rows need", range=(0, MAX_MESSAGE_BYTES)
    )
    intra_op_threads: int = _flag(
        0, "ONNX Runtime threads per run; 0: suited to the machine", range=_COUNT
    )
    workers: int = _flag(
        0,
        "server processes sharing the port (SO_REUSEPORT; clients are balanced per "
        "connection); 0: one per core, or 1 with --allow-model-control",
        range=_COUNT,
    )
    reuse_port: bool = False  # set for each worker process: bind with SO_REUSEPORT
    processes: int = 1  # set for each worker process: how many share the machine's cores
    worker_index: int = 0  # set for each worker process: which one it is
    grace_seconds: float = _flag(
        30.0, "on SIGTERM, wait this long for requests in flight", range=_COUNT
    )
    batching: bool = _flag(
        True,
        "run every request alone (no dynamic batching, whatever config.pbtxt says)",
        flag="--no-batching",
    )
    max_queue_delay_us: int | None = _flag(
        None,
        "batching window: overrides config.pbtxt's dynamic_batching "
        "max_queue_delay_microseconds and turns batching on for every batchable model",
        range=_COUNT,
        metavar="US",
    )
    max_queue_size: int = _flag(
        0,
        "requests queued per model version before RESOURCE_EXHAUSTED; "
        f"0: config.pbtxt's default_queue_policy, else {DEFAULT_MAX_QUEUE_SIZE}",
        range=_COUNT,
    )
    max_queue_bytes: int = _flag(
        DEFAULT_MAX_QUEUE_BYTES,
        "input bytes queued per model version before RESOURCE_EXHAUSTED",
        range=(1, None),
    )
    max_concurrent_rpcs: int = _flag(
        DEFAULT_MAX_CONCURRENT_RPCS,
        "inference requests in flight per server process before RESOURCE_EXHAUSTED; 0: no limit",
        range=_COUNT,
    )
    max_inline_us: int = _flag(
        DEFAULT_MAX_INLINE_US,
        "run batches that take at most US microseconds (timed at load) on the event loop, "
        "saving a thread hand-off; larger ones run on a thread; 0: always a thread",
        range=_COUNT,
        metavar="US",
    )
    metrics_port: int = _flag(
        0, "serve Prometheus metrics on HOST:PORT/metrics; 0: off", range=_PORT
    )
    event_loop: str = _flag(
        "auto",
        "event loop: uvloop (faster per request) or the standard asyncio one; auto: uvloop "
        "when installed",
        flag="--loop",
        choices=EVENT_LOOPS,
    )
    log_level: str = _flag("INFO", "log lines at this level and above", choices=LOG_LEVELS)
    tls_cert: Path | None = _flag(None, "the server's TLS certificate chain", metavar="PEM")
    tls_key: Path | None = _flag(None, "the server's TLS private key", metavar="PEM")
    tls_ca: Path | None = _flag(
        None, "require client certificates signed by this CA (mutual TLS)", metavar="PEM"
    )
    auth_token_file: Path | None = _flag(
        None, "every RPC but health needs 'authorization: Bearer <token in FILE>'", metavar="FILE"
    )
    allow_model_control: bool = _flag(
        False, "allow RepositoryModelLoad/Unload over gRPC (default: PERMISSION_DENIED)"
    )
    reject_non_finite: bool = _flag(
        False, "refuse NaN/inf inputs with INVALID_ARGUMENT (default: run them as sent)"
    )
    exit_on_error: bool = _flag(
        False,
        "exit 1 when any model fails to load (default: serve the others, report it "
        "UNAVAILABLE in RepositoryIndex and on the ready line)",
    )
    http_port: int = _flag(
        DEFAULT_HTTP_PORT,
        "HTTP/REST port; 0 picks a free port (the ready line says which)",
        range=_PORT,
    )
    http: bool = _flag(True, "serve gRPC only", flag="--no-http")
    grpc: bool = _flag(True, "serve HTTP/REST only", flag="--no-grpc")

    def __post_init__(self) -> None:
        if (self.model_repository is None) == (self.model_path is None):
            raise SettingsError("give exactly one of --model-repository DIR and --model FILE.onnx")
        if self.model_repository is not None and not Path(self.model_repository).is_dir():
            raise SettingsError(f"--model-repository {self.model_repository}: no such folder")
        if self.model_path is not None and not Path(self.model_path).is_file():
            raise SettingsError(f"--model {self.model_path}: no such file")
        for f in fields(self):
            self._check_range(f)
        if not (self.http or self.grpc):
            raise SettingsError("--no-http and --no-grpc together leave nothing to serve")
        self._check_access_files()
        if self.allow_model_control and self.workers > 1:
            raise SettingsError(
                "--allow-model-control needs --workers 1: every worker process has its own "
                "models, and a load or unload would reach only the one holding the connection"
            )
        resolve_loop(self.event_loop)

    def _check_range(self, f) -> None:
        value, flag = getattr(self, f.name), flag_name(f)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise SettingsError(f"{flag} must be one of {', '.join(choices)}, got {value}")
        low, high = f.metadata.get("range", (None, None))
        if value is None or (low is None or value >= low) and (high is None or value <= high):
            return
        if high is None:
            raise SettingsError(f"{flag} must be >= {low}, got {value}")
        raise SettingsError(f"{flag} must be in {low}..{high}, got {value}")

    def _check_access_files(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise SettingsError("--tls-ca (require client certificates) needs --tls-cert/--tls-key")
        for name in ("tls_cert", "tls_key", "tls_ca", "auth_token_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"--{name.replace('_', '-')} {path}: no such file")


def flag_name(f) -> str:
    """The command-line flag of a settings field: its ``flag`` metadata, else --FIELD-NAME."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cpu_count() -> int:
    """How many CPUs this process may use (its affinity mask where supported), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def resolve_loop(choice: str) -> str:
    """ "auto" -> "uvloop" when installed, else "asyncio"; an explicit name is checked.

    uvloop (libuv, in C) does the loop's own work per request for less than asyncio: on the
    2-core benchmark machine it raised batch-1 throughput by 5-10% (benchmarks/README.md). It
    is a dependency wherever it installs (not on Windows); ``--loop asyncio`` opts out.
    """
    if choice not in EVENT_LOOPS:
        raise SettingsError(f"--loop must be one of {', '.join(EVENT_LOOPS)}, got {choice}")
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise SettingsError("--loop uvloop: uvloop is not installed (pip install uvloop)")
    if choice == "auto":
        return "uvloop" if installed else "asyncio"
    return choice
