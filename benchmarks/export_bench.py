"""ONNX Runtime latency and throughput of folded vs unfolded graphs, measured side by side.

    python benchmarks/export_bench.py [--hidden 256 256 256] [--min-time 1.0] [--threads 1]

For each BN placement (pre, post), provider (CPU; CUDA when it really loads, judged by
session.get_providers()), ORT graph optimizations (off, on) and batch size (1, 64, 4096), the
folded and unfolded sessions run in alternating rounds, so both see the same machine state.
Printed: median latency per run, throughput (rows/s) and folded/unfolded latency ratio
(< 1: folded is faster). On CUDA the time includes copying inputs and outputs to the host.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch
from bnmodel.export.fold import fold_model
from bnmodel.export.onnx_export import build_onnx
from torch import nn

from bnmodel.config import ModelConfig
from bnmodel.model import BNMLP


def make_model(placement: str, features: int, hidden: Sequence[int], classes: int) -> BNMLP:
    torch.manual_seed(0)
    model = BNMLP(
        ModelConfig(
            features, tuple(hidden), classes, bn_placement=placement, standardize_input=True
        )
    )
    with torch.no_grad():  # trained-looking statistics: a fresh BN is the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 2)
                m.running_var.uniform_(0.1, 3)
        model.standardize.set_statistics(torch.randn(features), torch.rand(features) + 0.5)
    return model.eval()


def session(
    model_bytes: bytes, provider: str, optimize: bool, threads: int
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    providers = (
        [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    )
    return ort.InferenceSession(model_bytes, options, providers=providers)


def side_by_side(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, min_time: float
) -> dict[str, list[float]]:
    """Alternate one timed run per session until each has run for min_time seconds in total."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():  # warm-up: allocations, kernel selection, CUDA context
        for _ in range(3):
            s.run(None, {"features": x})
    while min(sum(t) for t in times.values()) < min_time or min(map(len, times.values())) < 5:
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"features": x})
            times[name].append(time.perf_counter() - start)
    return times


def providers_that_load(model_bytes: bytes) -> list[str]:
    found = ["CPUExecutionProvider"]
    ort.set_default_logger_severity(4)  # a failed CUDA load is reported below in one line
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            s = session(model_bytes, "CUDAExecutionProvider", True, 0)
            if s.get_providers()[0] == "CUDAExecutionProvider":
                found.append("CUDAExecutionProvider")
            else:
                print(f"CUDA provider listed but not loaded: session runs on {s.get_providers()}")
        except Exception as exc:  # a CUDA build without a usable GPU: say why, go on with CPU
            print(f"CUDA provider does not load: {type(exc).__name__}: {exc}")
    return found


def graphs_for(placement: str, args: argparse.Namespace) -> dict[str, bytes]:
    """Folded and unfolded ONNX of one model, built the way bnmodel export builds them."""
    model = make_model(placement, args.features, args.hidden, args.classes)
    folded, _ = fold_model(model)
    return {
        name: build_onnx(
            list(m.net.named_children()), task="classification", in_features=args.features
        ).SerializeToString()
        for name, m in (("folded", folded), ("unfolded", model))
    }


def bench_placement(placement: str, args: argparse.Namespace, providers: list[str]) -> list[str]:
    """Table rows for one placement: every provider x optimization level x batch size."""
    graphs = graphs_for(placement, args)
    rows = []
    for provider in providers:
        short = provider.removesuffix("ExecutionProvider")
        for optimize in (False, True):
            sessions = {n: session(b, provider, optimize, args.threads) for n, b in graphs.items()}
            for batch in args.batches:
                x = np.random.default_rng(0).standard_normal((batch, args.features))
                times = side_by_side(sessions, x.astype(np.float32), args.min_time)
                f, u = (statistics.median(times[n]) for n in ("folded", "unfolded"))
                rows.append(
                    f"{placement:<10}{short:<9}{'on' if optimize else 'off':<5}{batch:>6}"
                    f"{f * 1e3:>11.4f}{u * 1e3:>13.4f}{batch / f:>15.0f}{batch / u:>17.0f}"
                    f"{f / u:>8.2f}"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 4096])
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT)")
    args = parser.parse_args()
    print(
        f"model: {args.features} -> {args.hidden} -> {args.classes}, ReLU, standardized "
        f"input; onnxruntime {ort.__version__}; ORT intra-op threads {args.threads or 'default'}"
    )
    header = (
        f"{'placement':<10}{'provider':<9}{'opt':<5}{'batch':>6}{'folded ms':>11}"
        f"{'unfolded ms':>13}{'folded rows/s':>15}{'unfolded rows/s':>17}{'ratio':>8}"
    )
    print(header + "\n" + "-" * len(header))
    providers = providers_that_load(graphs_for("pre", args)["folded"])
    for placement in ("pre", "post"):
        print("\n".join(bench_placement(placement, args, providers)))


if __name__ == "__main__":
    main()
