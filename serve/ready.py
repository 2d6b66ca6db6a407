"""The ready line: the one line ``bnmodel serve`` prints on stdout once it serves, built and
read here alone.

    bnmodel serve: ready on 127.0.0.1:8001 (gRPC), 127.0.0.1:8000 (HTTP) (models: clf;
    CPU; started in 812 ms; 2 workers)

Whoever starts a server as a child process (bnmodel/launcher.py: the demo, tests, benchmarks)
waits for it and reads the bound ports from it with :func:`parse_ready_line`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

__all__ = ["Endpoints", "ServerInfo", "parse_ready_line", "ready_line"]


@dataclass(frozen=True)
class ServerInfo:
    """What the ready line reports."""

    host: str
    port: int  # 0: no gRPC
    models: tuple[str, ...]
    providers: tuple[str, ...]
    startup_seconds: float
    http_port: int = 0  # 0: no HTTP
    http_tls: bool = False  # HTTPS
    failed: tuple[str, ...] = ()  # models that could not be loaded
    workers: int = 1  # server processes sharing the ports

    def to_json(self) -> str:
        """For a worker process to hand its info to the parent (serve/workers.py)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerInfo:
        fields = json.loads(text).items()  # JSON arrays back to the tuples they were
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields})


def ready_line(info: ServerInfo) -> str:
    providers = ",".join(p.removesuffix("ExecutionProvider") for p in info.providers)
    endpoints = [f"{info.host}:{info.port} (gRPC)"] if info.port else []
    if info.http_port:
        endpoints.append(f"{info.host}:{info.http_port} ({'HTTPS' if info.http_tls else 'HTTP'})")
    failed = f"; NOT loaded: {', '.join(info.failed)} (see the log)" if info.failed else ""
    workers = f"; {info.workers} workers" if info.workers > 1 else ""
    return (
        f"bnmodel serve: ready on {', '.join(endpoints)} "
        f"(models: {', '.join(info.models)}{failed}; {providers}; "
        f"started in {1000 * info.startup_seconds:.0f} ms{workers})"
    )


@dataclass(frozen=True)
class Endpoints:
    """Where a server listens, as its ready line says."""

    address: str  # HOST:PORT of gRPC, or of HTTP with --no-grpc
    grpc: str  # HOST:PORT, "" with --no-grpc
    http_url: str  # http(s)://HOST:PORT, "" with --no-http


_ENDPOINT = re.compile(r"(\S+):(\d+) \((gRPC|HTTPS?)\)")
_READY = re.compile(r"^bnmodel serve: ready on (.+?) \(models: ")


def parse_ready_line(line: str) -> Endpoints | None:
    """The endpoints of a ready line; None for any other line."""
    match = _READY.match(line.strip())
    if match is None:
        return None
    found = {kind: f"{host}:{port}" for host, port, kind in _ENDPOINT.findall(match[1])}
    http = next((f"{k.lower()}://{found[k]}" for k in ("HTTP", "HTTPS") if k in found), "")
    grpc = found.get("gRPC", "")
    return Endpoints(grpc or http.split("://")[-1], grpc, http)
