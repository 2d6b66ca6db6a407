"""INT8 against fp32 for one checkpoint: ONNX Runtime on one CPU thread, and served rows/s.

    python benchmarks/int8_bench.py CHECKPOINT [--repeats 5] [--runs 3] [--duration 8]

Exports the checkpoint twice with ``export_checkpoint`` (fp32, and ``int8=True``, which
must pass its own accuracy check), then:

1. ORT CPU, one intra-op thread, batch 1, 64 and 1024: the fp32 and int8 sessions run in
   alternating rounds (``--repeats``), so both see the same machine state; each round is the
   median of as many calls as fit in --min-time. Printed: median latency, rows/s, and the
   speedup fp32/int8 (> 1: int8 is faster).
2. Served: ``bnmodel serve`` (benchmarks' default settings, bnmodel.launcher) on each
   repository in turn, loaded by benchmarks/loadgen.py (its own process) at batch 64 and
   concurrency 16; ``--runs`` interleaved runs, medians and the int8/fp32 rows/s ratio.

The load average is printed before and after: the machine may be shared.
The model is served as "mlp" (loadgen's name): loadgen sends 64 features and reads
"probabilities", which is the digits classifier's shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bnmodel.export.api import export_checkpoint

from bnmodel.launcher import spawn_server

HERE = Path(__file__).resolve().parent
BATCHES = (1, 64, 1024)
MODEL = "mlp"  # loadgen.MODEL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="training checkpoint (bnmodel train output)")
    p.add_argument("--repeats", type=int, default=5, help="alternating ORT rounds per batch")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per ORT round")
    p.add_argument("--runs", type=int, default=3, help="served runs per precision")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--skip-serve", action="store_true", help="only the ORT comparison")
    return p.parse_args(argv)


def export_both(checkpoint: str, root: Path) -> dict[str, Path]:
    paths = {}
    for precision in ("fp32", "int8"):
        result = export_checkpoint(
            checkpoint,
            repository=root / precision,
            name=MODEL,
            int8=precision == "int8",
            verify=precision == "fp32",
        )
        if result.int8 is not None:
            print(result.int8.format())
            print(*(f"  note: {n}" for n in result.int8.notes), sep="\n")
        paths[precision] = result.repository.model
    return paths


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _round(session: ort.InferenceSession, feed: dict, min_time: float) -> float:
    """Median seconds per call over as many calls as fit in ``min_time``."""
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ort_table(paths: dict[str, Path], args: argparse.Namespace) -> list[str]:
    sessions = {k: _session(p) for k, p in paths.items()}
    width = sessions["fp32"].get_inputs()[0].shape[1]
    lines = [
        "ORT CPU, 1 thread: median latency per call (rows/s)",
        f"{'batch':>6}  {'fp32':>22}  {'int8':>22}  {'speedup fp32/int8':>18}",
    ]
    for batch in BATCHES:
        x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32) * 5 + 5
        feed = {"features": x}
        rounds = {k: [] for k in sessions}
        for s in sessions.values():  # warm-up
            _round(s, feed, 0.1)
        for _ in range(args.repeats):
            for key, s in sessions.items():  # alternating: both see the same machine state
                rounds[key].append(_round(s, feed, args.min_time))
        med = {k: statistics.median(v) for k, v in rounds.items()}
        cells = [f"{med[k] * 1e6:>9.1f} us ({batch / med[k]:>9,.0f})" for k in ("fp32", "int8")]
        ratios = sorted(a / b for a, b in zip(rounds["fp32"], rounds["int8"], strict=True))
        spread = f"[{ratios[0]:.2f}-{ratios[-1]:.2f}]"
        lines.append(
            f"{batch:>6}  {cells[0]:>22}  {cells[1]:>22}  "
            f"{med['fp32'] / med['int8']:>8.2f}x {spread}"
        )
    return lines


def served(repo: Path, model: Path, args: argparse.Namespace) -> float:
    """rows/s of one loadgen run at batch 64, concurrency 16 against a fresh server."""
    with spawn_server(["--model-repository", str(repo)]) as server:
        cmd = [
            sys.executable,
            str(HERE / "loadgen.py"),
            f"--url={server.url}",
            "--batch=64",
            "--concurrency=16",
            f"--duration={args.duration}",
            f"--warmup={args.warmup}",
            f"--verify={model}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    point = json.loads(done.stdout.strip().splitlines()[-1])
    if point["errors"]:
        raise RuntimeError(f"loadgen saw {point['errors']} errors: {point['error_sample']}")
    return float(point["rows_per_s"])


def serve_table(paths: dict[str, Path], args: argparse.Namespace) -> list[str]:
    rates = {k: [] for k in paths}
    for run in range(args.runs):
        for key, model in paths.items():  # interleaved, so drift hits both alike
            rate = served(model.parents[2], model, args)  # ROOT/mlp/1/model.onnx
            rates[key].append(rate)
            print(f"  served run {run} {key}: {rate:,.0f} rows/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return [
        f"served (bnmodel serve defaults, batch 64, concurrency 16, {args.runs} runs): "
        f"median rows/s fp32 {med['fp32']:,.0f}, int8 {med['int8']:,.0f}, "
        f"int8/fp32 {med['int8'] / med['fp32']:.2f}x"
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        paths = export_both(args.checkpoint, Path(tmp))
        lines = ort_table(paths, args)
        print("\n".join(lines), flush=True)
        if not args.skip_serve:
            print("\n".join(serve_table(paths, args)))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
