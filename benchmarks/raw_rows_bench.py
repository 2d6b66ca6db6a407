"""Raw rows vs numeric rows: served rows/s of a model taking strings beside one taking floats.

Run by hand from the repository root with the project venv active:
    python benchmarks/raw_rows_bench.py                        # 10 s points, medians of 3 runs
    python benchmarks/raw_rows_bench.py --duration 3 --runs 1  # quick look
The speed goal: at batch 64 and concurrency 16, a raw-row model (6 numeric columns with
missing values, 3 categorical columns as BYTES inputs, each LabelEncoder + Gather in the graph)
serves at least 0.8x the rows/s of an all-numeric model of the same first-layer width (the
64-256-256-256-10 MLP of benchmarks/bench_model.py: 6 numeric + 58 one-hot columns = 64). Both
models are in one repository behind one `bnmodel serve` (same command as serve_bench.py); the
points alternate between the models run after run, so drift hits both alike, and the ratio is
taken per run (the two points of a run are a minute apart at most) before the median. In-process
ONNX Runtime on the same tensors in one thread (what local predict pays per batch) is measured
beside them. Load comes from benchmarks/loadgen.py (tritonclient.grpc.aio) in its own process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_model import IN_FEATURES, LAYERS, MODEL_NAME, NUM_CLASSES, write_repository
from serve_bench import DEFAULT_OURS_CMD
from servers import Context, running, server_specs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "serve"))
from models import raw_config_text, raw_model  # noqa: E402 -- the test suite's raw-row builder

RAW_NAME = "raw"
NUMERIC = [f"n{i}" for i in range(6)]
# One-hot widths (vocabulary + the "other" slot) 10 + 18 + 30 = 58; with 6 numeric: 64 = the
# numeric model's first-layer input width.
VOCABULARIES = {
    "city": [f"city-{i}" for i in range(9)],
    "product": [f"product-{i}" for i in range(17)],
    "channel": [f"channel-{i}" for i in range(29)],
}
assert len(NUMERIC) + sum(len(v) + 1 for v in VOCABULARIES.values()) == IN_FEATURES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="rows per request")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each point")
    p.add_argument("--runs", type=int, default=3, help="repeat everything; tables show medians")
    p.add_argument("--queue-delay-us", type=int, default=500, help="batching window")
    p.add_argument("--ours-cmd", default=DEFAULT_OURS_CMD, help="as in serve_bench.py")
    p.add_argument("--ours-args", default="", help="extra arguments for our server")
    p.add_argument("--target", type=float, default=0.8, help="raw/numeric rows/s at least")
    return p.parse_args(argv)


def requests(batch: int, seed: int = 0) -> tuple[dict, dict]:
    """(numeric request, raw request) of ``batch`` rows: the raw one has 10% blanks among the
    numbers and known, unseen and empty strings in every categorical column."""
    rng = np.random.default_rng(seed)
    numeric = {"features": rng.standard_normal((batch, IN_FEATURES)).astype(np.float32)}
    x = rng.standard_normal((batch, len(NUMERIC))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    raw = {"features": x}
    for column, vocabulary in VOCABULARIES.items():
        words = [*vocabulary, "", "never-seen"]
        raw[column] = np.array([[words[i]] for i in rng.integers(0, len(words), batch)])
    return numeric, raw


def write_models(root: Path, queue_delay_us: int) -> dict[str, Path]:
    """The numeric MLP (bench_model.py) and the raw-row model of the same widths, one repository."""
    numeric = write_repository(root, max_queue_delay_us=queue_delay_us)
    model = raw_model(
        numeric=NUMERIC,
        vocabularies=VOCABULARIES,
        hidden=LAYERS[1],
        layers=len(LAYERS) - 2,
        classes=NUM_CLASSES,
    )
    config = raw_config_text(
        RAW_NAME,
        numeric=NUMERIC,
        vocabularies=VOCABULARIES,
        max_batch_size=1024,
        classes=NUM_CLASSES,
        queue_delay_us=queue_delay_us,
    )
    import onnx

    (root / RAW_NAME / "1").mkdir(parents=True)
    (root / RAW_NAME / "config.pbtxt").write_text(config)
    onnx.save(model, root / RAW_NAME / "1" / "model.onnx")
    return {MODEL_NAME: numeric, RAW_NAME: root / RAW_NAME / "1" / "model.onnx"}


def measure(
    args, target: list[str], inputs: Path, model: str, pgid: int | None, concurrency: int
) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "loadgen.py"),
        *target,
        f"--model={model}",
        f"--inputs={inputs}",
        f"--concurrency={concurrency}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        *([f"--server-pgid={pgid}"] if pgid else []),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.warmup + args.duration + 60
    )
    if done.returncode != 0:
        raise SystemExit(f"load generator failed: {(done.stderr or done.stdout)[-500:]}")
    point = json.loads(done.stdout.strip().splitlines()[-1])
    if point["errors"]:
        raise SystemExit(f"{model}: {point['errors']} errors: {point['error_sample']}")
    return point


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="raw_rows_bench-") as tmp:
        repo = Path(tmp) / "repository"
        paths = write_models(repo, args.queue_delay_us)
        files = {}
        for name, request in zip((MODEL_NAME, RAW_NAME), requests(args.batch), strict=True):
            files[name] = Path(tmp) / f"{name}.npz"
            np.savez(files[name], **request)
        ctx = Context(repo, paths[MODEL_NAME], Path(tmp), args.queue_delay_us, args.ours_cmd,
                      "", args.ours_args, 120.0)  # fmt: skip
        for run in range(args.runs):
            for name in (MODEL_NAME, RAW_NAME):
                point = measure(args, [f"--inproc={paths[name]}"], files[name], name, None, 1)
                results.setdefault(("inproc", name), []).append(point)
            with running(server_specs()["ours_on"], ctx, run) as server:
                for name in (MODEL_NAME, RAW_NAME):
                    verify = [f"--url={server.url}", f"--verify={paths[name]}"]
                    point = measure(args, verify, files[name], name, server.pgid, args.concurrency)
                    results.setdefault(("served", name), []).append(point)
                    print(
                        f"[run {run}] served {name:<4} rows/s={point['rows_per_s']:>9,.0f} "
                        f"p50={point['p50_ms']:.2f} ms server CPU={point['server_cpu_cores']:.2f} "
                        f"machine CPU={point['machine_cpu_cores']:.2f}",
                        flush=True,
                    )
    print(report(args, results))
    return 0 if _ratio(results, "served") >= args.target else 1


def _median(points: list[dict], key: str = "rows_per_s") -> float:
    return statistics.median(p[key] for p in points)


def _ratio(results, where: str, per_cpu: bool = False) -> float:
    """Median over runs of raw rows/s / numeric rows/s of the same run (``per_cpu``: rows per
    second of server CPU, which CPU taken by other processes on the machine does not move)."""
    pairs = zip(results[(where, RAW_NAME)], results[(where, MODEL_NAME)], strict=True)
    return statistics.median(_rate(raw, per_cpu) / _rate(num, per_cpu) for raw, num in pairs)


def _rate(point: dict, per_cpu: bool) -> float:
    return point["rows_per_s"] / (point["server_cpu_cores"] if per_cpu else 1.0)


def report(args, results) -> str:
    lines = [
        f"\nMedians of {args.runs} run(s), {args.duration:g} s per point, batch {args.batch}; "
        f"served: concurrency {args.concurrency}, one connection; in-process: one thread. "
        "raw / numeric: the median of the per-run ratios. Machine CPU: cores busy on the whole "
        "machine (client + server + anything else running)\n",
        "| where | model | rows/s | p50 ms | server CPU | machine CPU | raw / numeric |",
        "|---|---|---|---|---|---|---|",
    ]
    for where in ("served", "inproc"):
        for name, label in ((MODEL_NAME, "numeric 64"), (RAW_NAME, "raw 6 num + 3 cat")):
            points = results[(where, name)]
            ratio = f"{_ratio(results, where):.2f}" if name == RAW_NAME else ""
            cpu = f"{_median(points, 'server_cpu_cores'):.2f}" if where == "served" else ""
            lines.append(
                f"| {where} | {label} | {_median(points):,.0f} | {_median(points, 'p50_ms'):.2f} "
                f"| {cpu} | {_median(points, 'machine_cpu_cores'):.2f} | {ratio} |"
            )
    served = _ratio(results, "served")
    verdict = "PASS" if served >= args.target else "FAIL"
    per_cpu = {name: statistics.median(_rate(p, True) for p in results[("served", name)])
               for name in (MODEL_NAME, RAW_NAME)}  # fmt: skip
    lines += [
        f"\nserved rows per server CPU-second: numeric {per_cpu[MODEL_NAME]:,.0f}, raw "
        f"{per_cpu[RAW_NAME]:,.0f}; raw / numeric {_ratio(results, 'served', True):.2f}",
        f"served raw/numeric = {served:.2f} (target >= {args.target}): {verdict}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
