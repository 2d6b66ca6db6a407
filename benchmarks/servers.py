"""Start and stop the servers under test: own process group, 127.0.0.1 only, bounded in time.

A server is a `ServerSpec` (a key, a label, how to build its command and the protocol its load
speaks). `running(spec, ctx)` starts it on a free port, waits until ServerReady and ModelReady
say yes (over gRPC, or HTTP for the REST keys), yields "127.0.0.1:PORT" (or
"http://127.0.0.1:PORT") and always kills the whole process group on the way out. Peers run from
their own virtual environments under benchmarks/.venvs/, created on first use by `ensure_venv`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "Context",
    "ServerError",
    "ServerSpec",
    "Started",
    "ensure_venv",
    "free_port",
    "running",
    "server_specs",
]

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
HOST = "127.0.0.1"
MODEL = "mlp"


class ServerError(RuntimeError):
    """A server did not start or become ready; the message carries its log's tail."""


@dataclass(frozen=True)
class Context:
    repo: Path  # Triton-layout repository holding mlp/config.pbtxt and mlp/1/model.onnx
    model_path: Path
    workdir: Path  # logs and per-server settings go here
    queue_delay_us: int  # the batching window given to every server that batches
    ours_cmd: str  # template with {python} {repo} {model} {port} {host}
    ours_off_args: str
    ours_on_args: str
    startup_timeout_s: float


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    # (ctx, port) -> (argv, extra env); None means in-process ONNX Runtime, no server at all
    command: Callable[[Context, int], tuple[list[str], dict[str, str]]] | None
    venv: str | None = None  # name under benchmarks/.venvs/ that must exist first
    # What the load generator speaks: "grpc", or HTTP with a "json" or "binary" (Triton's binary
    # tensor data extension) body. For HTTP, the port given to `command` is the HTTP one.
    protocol: str = "grpc"


@dataclass(frozen=True)
class Started:
    url: str
    pgid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ort_pin() -> str:
    """Peers get the CPU build of the same ONNX Runtime version as ours."""
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"onnxruntime=={metadata.version(dist)}"
    return "onnxruntime"


VENV_REQUIREMENTS = {
    "kserve": ["kserve==0.21.*"],
    "mlserver": ["mlserver==1.7.*", "uvloop<0.22"],
}


def ensure_venv(name: str) -> Path:
    """Create benchmarks/.venvs/NAME with its pinned packages unless it already has them.

    Returns the venv's python."""
    root = VENVS / name
    python = root / "bin" / "python"
    wanted = "\n".join([*VENV_REQUIREMENTS[name], _ort_pin()])
    marker = root / ".requirements"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"[venv] installing {name}: {wanted.splitlines()} (one-time, a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *wanted.splitlines()], check=True, timeout=1800
    )
    marker.write_text(wanted)
    return python


def _kserve(rest: bool) -> Callable[[Context, int], tuple[list[str], dict[str, str]]]:
    def build(ctx: Context, port: int) -> tuple[list[str], dict[str, str]]:
        grpc_port, http_port = (free_port(), port) if rest else (port, free_port())
        argv = [
            str(VENVS / "kserve" / "bin" / "python"),
            str(HERE / "peers" / "kserve_model.py"),
            f"--model_path={ctx.model_path}",
            f"--model_name={MODEL}",
            f"--grpc_port={grpc_port}",
            f"--http_port={http_port}",
            # One log line per request is a debugging aid, not a serving default anyone benchmarks.
            "--enable_latency_logging=false",
        ]
        return argv, {}

    return build


def _mlserver(
    batching: bool, rest: bool = False
) -> Callable[[Context, int], tuple[list[str], dict[str, str]]]:
    def build(ctx: Context, port: int) -> tuple[list[str], dict[str, str]]:
        name = ("mlserver_on" if batching else "mlserver_off") + ("_rest" if rest else "")
        root = ctx.workdir / name
        (root / MODEL).mkdir(parents=True, exist_ok=True)
        grpc_port, http_port = (free_port(), port) if rest else (port, free_port())
        settings = {
            "debug": False,  # no access log line per request
            "host": HOST,
            "grpc_port": grpc_port,
            "http_port": http_port,
            "metrics_endpoint": None,  # no metrics server (and no metrics interceptor)
            "parallel_workers": 0,  # the model runs in the server process
            "model_repository_root": str(root),
        }
        model = {
            "name": MODEL,
            "implementation": "mlserver_runtime.OnnxRuntime",
            "parameters": {"uri": str(ctx.model_path)},
            "max_batch_size": 64 if batching else 0,
            "max_batch_time": ctx.queue_delay_us / 1e6 if batching else 0.0,
        }
        (root / "settings.json").write_text(json.dumps(settings, indent=1))
        (root / MODEL / "model-settings.json").write_text(json.dumps(model, indent=1))
        argv = [str(VENVS / "mlserver" / "bin" / "mlserver"), "start", str(root)]
        return argv, {"PYTHONPATH": str(HERE / "peers")}

    return build


def _echo(loop: str) -> Callable[[Context, int], tuple[list[str], dict[str, str]]]:
    def build(ctx: Context, port: int) -> tuple[list[str], dict[str, str]]:
        script = str(HERE / "peers" / "echo_server.py")
        return [sys.executable, script, f"--port={port}", f"--loop={loop}"], {}

    return build


def _ours(
    batching: bool, http: bool = False
) -> Callable[[Context, int], tuple[list[str], dict[str, str]]]:
    def build(ctx: Context, port: int) -> tuple[list[str], dict[str, str]]:
        grpc_port, http_port = (free_port(), port) if http else (port, free_port())
        cmd = ctx.ours_cmd.format(
            python=sys.executable, repo=ctx.repo, model=ctx.model_path, port=grpc_port, host=HOST
        )
        extra = ctx.ours_on_args if batching else ctx.ours_off_args
        # Never HTTP's default 8000: other servers (and other benchmark runs) may hold it.
        return shlex.split(cmd) + shlex.split(extra) + [f"--http-port={http_port}"], {}

    return build


def _http_floor(ctx: Context, port: int) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, str(HERE / "peers" / "http_floor.py"), f"--port={port}"], {}


def server_specs() -> dict[str, ServerSpec]:
    specs = [
        ServerSpec("inproc", "ORT in-process (no network)", None),
        ServerSpec("echo", "grpc.aio echo (floor)", _echo("asyncio")),
        ServerSpec("echo_uvloop", "grpc.aio echo on uvloop", _echo("uvloop")),
        ServerSpec("kserve", "KServe 0.21", _kserve(False), venv="kserve"),
        ServerSpec("mlserver_off", "MLServer 1.7 batching off", _mlserver(False), venv="mlserver"),
        ServerSpec("mlserver_on", "MLServer 1.7 batching on", _mlserver(True), venv="mlserver"),
        ServerSpec("ours_off", "bnmodel serve batching off", _ours(False)),
        ServerSpec("ours_on", "bnmodel serve batching on", _ours(True)),
        # HTTP/REST: JSON bodies unless the key says binary (the binary tensor data extension).
        ServerSpec("http_floor", "HTTP floor uvicorn+httptools", _http_floor, protocol="json"),
        ServerSpec("kserve_rest", "KServe 0.21 REST JSON", _kserve(True), "kserve", "json"),
        ServerSpec("kserve_rest_bin", "KServe 0.21 REST binary", _kserve(True), "kserve", "binary"),
        ServerSpec(
            "mlserver_rest", "MLServer 1.7 REST JSON", _mlserver(False, True), "mlserver", "json"
        ),
        ServerSpec("ours_http", "bnmodel serve HTTP JSON", _ours(True, True), protocol="json"),
        ServerSpec(
            "ours_http_bin", "bnmodel serve HTTP binary", _ours(True, True), protocol="binary"
        ),
    ]
    return {s.key: s for s in specs}


def _log_tail(path: Path, n: int = 25) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


def _http_ready(url: str) -> bool:
    import urllib.request

    for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        with urllib.request.urlopen(url + path, timeout=1) as answer:
            if answer.status != 200:
                return False
    return True


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    if url.startswith("http://"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerError(f"exited with {proc.returncode} before ready:\n{_log_tail(log)}")
            with contextlib.suppress(Exception):
                if _http_ready(url):
                    return
            time.sleep(0.2)
        raise ServerError(f"not ready on {url} after {timeout_s:.0f} s:\n{_log_tail(log)}")
    import tritonclient.grpc as tc

    with tc.InferenceServerClient(url) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerError(f"exited with {proc.returncode} before ready:\n{_log_tail(log)}")
            with contextlib.suppress(Exception):
                if client.is_server_ready(client_timeout=1) and client.is_model_ready(
                    MODEL, client_timeout=1
                ):
                    return
            time.sleep(0.2)
    raise ServerError(f"not ready on {url} after {timeout_s:.0f} s:\n{_log_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def running(spec: ServerSpec, ctx: Context, run: int) -> Iterator[Started]:
    port = free_port()
    argv, env = spec.command(ctx, port)
    log = ctx.workdir / f"{spec.key}.run{run}.log"
    with log.open("w") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=ctx.workdir,
            start_new_session=True,  # its own process group, so we can kill all of it
        )
    url = f"{HOST}:{port}" if spec.protocol == "grpc" else f"http://{HOST}:{port}"
    try:
        _wait_ready(proc, url, log, ctx.startup_timeout_s)
        yield Started(url, proc.pid)
    finally:
        _stop(proc)
