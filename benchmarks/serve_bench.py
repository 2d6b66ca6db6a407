"""Serving benchmark: bnmodel serve against KServe, MLServer, a gRPC echo floor and in-process ORT.

Run by hand from the repository root with the project venv active:
    python benchmarks/serve_bench.py                       # full: 10 s points, medians of 3 runs
    python benchmarks/serve_bench.py --duration 2 --runs 1 --servers echo,kserve   # quick look
Every server loads the same ONNX MLP (64-256-256-256-10) from a temporary Triton-layout
repository, listens on 127.0.0.1, uses one ONNX Runtime thread, and is stopped (its whole process
group) after its points. Load comes from benchmarks/loadgen.py in a separate process
(tritonclient.grpc.aio). Prints the results, rows/s ratios against KServe and the echo floor, the
speed targets (PASS/FAIL), and writes everything to benchmarks/results/serve_bench-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report
from bench_model import write_repository
from servers import Context, ServerError, ensure_venv, running, server_specs

HERE = Path(__file__).resolve().parent
# One ORT thread like the peers; WARNING like the peers' per-request logging, which is off.
DEFAULT_OURS_CMD = (
    "{python} -m bnmodel serve --model-repository {repo} --host {host} --port {port}"
    " --intra-op-threads 1 --log-level WARNING"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    specs = server_specs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default=",".join(specs), help=f"comma list from {list(specs)}")
    p.add_argument("--batches", default="1,64", help="rows per request, comma list")
    p.add_argument("--concurrency", default="1,16,64", help="requests in flight, comma list")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each point")
    p.add_argument("--runs", type=int, default=3, help="repeat everything; tables show medians")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="client TCP connections per point (bnmodel --workers balances connections)",
    )
    p.add_argument(
        "--queue-delay-us",
        type=int,
        default=500,
        help="batching window: config.pbtxt's max_queue_delay_microseconds and "
        "MLServer's max_batch_time",
    )
    p.add_argument(
        "--ours-cmd",
        default=DEFAULT_OURS_CMD,
        help="command template for our server; fields {python} {repo} {model} {port} {host}",
    )
    p.add_argument(
        "--ours-off-args",
        default="--no-batching",
        help="extra arguments for our server with batching off",
    )
    p.add_argument(
        "--ours-on-args",
        default="",
        help="extra arguments with batching on (default: config.pbtxt's window, --queue-delay-us)",
    )
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to become ready")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(specs)
    if unknown:
        p.error(f"--servers: unknown {sorted(unknown)}; choose from {list(specs)}")
    return args


def measure(
    args: argparse.Namespace, target: list[str], batch: int, conc: int, pgid: int | None
) -> dict:
    """One loadgen process for one point; a failed or hung point becomes a row of errors."""
    cmd = [
        sys.executable,
        str(HERE / "loadgen.py"),
        *target,
        f"--batch={batch}",
        f"--concurrency={conc}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        f"--connections={args.connections}",
    ]
    if pgid:
        cmd.append(f"--server-pgid={pgid}")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.warmup + args.duration + 60
        )
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        why = (done.stderr or done.stdout).strip()[-300:]
    except subprocess.TimeoutExpired:  # subprocess.run kills the child first
        why = "load generator timed out"
    nan = float("nan")
    return dict(
        batch=batch,
        concurrency=conc,
        requests=0,
        errors=1,
        window_s=args.duration,
        requests_per_s=nan,
        rows_per_s=nan,
        p50_ms=nan,
        p99_ms=nan,
        client_cpu_cores=nan,
        machine_cpu_cores=nan,
        server_cpu_cores=nan,
        error_sample=why,
    )


def run_server(args, spec, ctx: Context, run: int, points) -> list[dict]:
    """All points for one server in one run; the server is stopped whatever happens."""
    out = []
    if spec.command is None:  # in-process ORT: the load generator is the whole system
        for b, c in points:
            out.append(measure(args, [f"--inproc={ctx.model_path}"], b, c, None))
        return out
    with running(spec, ctx, run) as started:
        if spec.protocol == "grpc":
            target = [f"--url={started.url}"]
        else:
            target = [f"--http={started.url}", f"--body={spec.protocol}"]
        floor = spec.key.startswith("echo") or spec.key == "http_floor"
        verify = target + ([] if floor else [f"--verify={ctx.model_path}"])
        for b, c in points:
            out.append(measure(args, verify, b, c, started.pgid))
    return out


def _progress(key: str, run: int, m: dict) -> None:
    err = f" errors={m['errors']} {m['error_sample'][:120]}" if m["errors"] else ""
    print(
        f"[run {run}] {key:<13} b={m['batch']:<3} c={m['concurrency']:<3} "
        f"rows/s={m['rows_per_s']:>10,.0f} p50={m['p50_ms']:.3f} ms "
        f"client CPU={m['client_cpu_cores']:.2f}{err}",
        flush=True,
    )


def run_all(args: argparse.Namespace, ctx: Context) -> tuple[list[dict], list[str]]:
    """Every server's points, run after run; also the "key run N: why" of servers that failed."""
    specs = server_specs()
    keys = args.servers.split(",")
    for venv in sorted({specs[k].venv for k in keys if specs[k].venv}):
        ensure_venv(venv)
    points = [
        (int(b), int(c)) for b in args.batches.split(",") for c in args.concurrency.split(",")
    ]
    measurements, failures = [], []
    for run in range(args.runs):  # servers interleaved per run, so drift hits all of them alike
        for key in keys:
            try:
                results = run_server(args, specs[key], ctx, run, points)
            except ServerError as exc:
                print(f"[run {run}] {key}: server failed: {exc}", flush=True)
                failures.append(f"{key} run {run}: {str(exc).splitlines()[0]}")
                continue
            for m in results:
                m.update(server=key, run=run)
                _progress(key, run, m)
            measurements += results
    return measurements, failures


def _meta(args: argparse.Namespace) -> dict:
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels = {k: s.label for k, s in server_specs().items()}
    with tempfile.TemporaryDirectory(prefix="serve_bench-") as tmp:
        repo = Path(tmp) / "repository"
        model_path = write_repository(repo, max_queue_delay_us=args.queue_delay_us)
        ctx = Context(
            repo,
            model_path,
            Path(tmp),
            args.queue_delay_us,
            args.ours_cmd,
            args.ours_off_args,
            args.ours_on_args,
            args.startup_timeout,
        )
        measurements, failures = run_all(args, ctx)
    med = report.medians(measurements)
    keys = set(args.servers.split(","))
    # The gRPC targets need KServe and echo in the run; the HTTP ones check
    # whichever REST peers, floor and our gRPC server ran.
    checks = report.check_targets(med) if {"kserve", "echo"} <= keys else []
    checks += report.check_http_targets(med)
    print(
        f"\nMedians of {args.runs} run(s), {args.duration:g} s per point, on {os.cpu_count()} CPUs"
        " (client / server / other CPU: cores busy during the window; other = the rest of the"
        " machine, noise when above ~0.1)\n"
    )
    print(report.results_table(med, labels) + "\n")
    print(report.ratio_table(med, labels, ("kserve", "echo", "echo_uvloop")))
    print(report.ratio_table(med, labels, ("kserve_rest", "mlserver_rest", "http_floor")))
    if checks:
        print(report.checks_table(checks, labels))
    for failure in failures:
        print(f"FAILED TO START: {failure}")
    out = args.out or HERE / "results" / f"serve_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"server": s, "batch": b, "concurrency": c, **r} for (s, b, c), r in med.items()]
    doc = {
        "meta": _meta(args),
        "medians": rows,
        "checks": checks,
        "failed_servers": failures,
        "measurements": measurements,
    }
    out.write_text(json.dumps(doc, indent=1, default=lambda v: None if math.isnan(v) else v))
    print(f"\nwrote {out}")
    return 0 if all(c["passed"] for c in checks) and not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
