"""Start-to-ready time of `bnmodel serve` and single-client batch-1 latency with our client.

Run by hand: ``python benchmarks/serve_latency.py [--requests 2000] [--runs 3]``. Builds a
64-256-256-256-10 classifier with onnx.helper in a temp repository, starts the server process
(``--port 0``), measures wall time from process start to its ready line, then the median and p99
round trip of ``InferenceClient.infer`` at batch 1 over ``--requests`` sequential requests.
Prints a table; medians of ``--runs`` server starts. Extra server flags after ``--``.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_repository(root: Path, sizes=(64, 256, 256, 256, 10)) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "features"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}"),
        ]
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [out]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"]))
            out = f"a{i}"
        last = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    io = lambda name, n: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n])  # noqa: E731
    graph = helper.make_graph(
        nodes,
        "mlp",
        [io("features", sizes[0])],
        [io("logits", sizes[-1]), io("probabilities", sizes[-1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (root / "mlp" / "1").mkdir(parents=True)
    onnx.save(model, root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 1024\n'
        f'input [{{ name: "features" data_type: TYPE_FP32 dims: [ {sizes[0]} ] }}]\n'
        f'output [{{ name: "logits" data_type: TYPE_FP32 dims: [ {sizes[-1]} ] }},'
        f' {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {sizes[-1]} ] }}]\n'
    )


def one_run(command: list[str], requests: int) -> tuple[float, float, float]:
    from bnmodel.serve.client import InferenceClient
    from bnmodel.serve.ready import parse_ready_line

    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        for line in process.stdout:
            if endpoints := parse_ready_line(line):
                break
        ready_s = time.perf_counter() - start
        x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
        with InferenceClient(endpoints.grpc) as client:
            inputs = {"features": x}
            for _ in range(200):  # warm-up
                client.infer("mlp", inputs)
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                client.infer("mlp", inputs)
                times.append(time.perf_counter() - t)
        times.sort()
        return ready_s, statistics.median(times), times[int(0.99 * len(times))]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--server",
        default=f"{sys.executable} -m bnmodel serve",
        help="command that starts the server (default: %(default)s)",
    )
    parser.add_argument("extra", nargs="*", help="extra server flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_repository(Path(tmp))
        command = [*args.server.split(), "--model-repository", tmp, "--port", "0", *args.extra]
        runs = [one_run(command, args.requests) for _ in range(args.runs)]
    ready, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
    print(f"{'server start -> ready':<28}{ready * 1000:>10.0f} ms")
    print(f"{'batch-1 latency p50':<28}{p50 * 1e6:>10.0f} us")
    print(f"{'batch-1 latency p99':<28}{p99 * 1e6:>10.0f} us")
    print(f"({args.runs} runs x {args.requests} sequential requests, medians of runs)")


if __name__ == "__main__":
    main()
