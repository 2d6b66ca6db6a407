"""System shared memory against raw contents: what the extension saves at batch 1024.

    python benchmarks/shm_bench.py [--rows 1024] [--requests 200] [--rounds 5]

Serves the benchmark MLP (benchmarks/bench_model.py, FP32 [rows, 64] in, probabilities
[rows, 10] out) with `bnmodel serve --workers 1` and times, with tritonclient's gRPC and HTTP
clients on one connection, requests sending the input as raw contents (gRPC
raw_input_contents, HTTP binary data) against requests whose input and output stay in
registered shared-memory regions. Rounds alternate the ways; the table gives medians over
rounds of the per-request latency and the rows/s it implies, and the ratio raw/shm.
The client runs in a process of its own (tritonclient's protobuf modules clash with ours).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def client(grpc_url: str, http_url: str, rows: int, requests: int, rounds: int) -> dict:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    x = np.random.default_rng(0).normal(size=(rows, 64)).astype(np.float32)
    out_bytes = rows * 10 * 4
    clients = {
        "grpc": (grpcclient, grpcclient.InferenceServerClient(grpc_url)),
        "http": (httpclient, httpclient.InferenceServerClient(http_url.removeprefix("http://"))),
    }
    handles = [
        shm.create_shared_memory_region("bench_in", "/bnmodel_bench_in", x.nbytes),
        shm.create_shared_memory_region("bench_out", "/bnmodel_bench_out", out_bytes),
    ]
    shm.set_shared_memory_region(handles[0], [x])
    times: dict[str, list[float]] = {}
    try:
        for protocol, (module, c) in clients.items():
            c.unregister_system_shared_memory()
            c.register_system_shared_memory("bench_in", "/bnmodel_bench_in", x.nbytes)
            c.register_system_shared_memory("bench_out", "/bnmodel_bench_out", out_bytes)

            def raw(module=module, c=c):
                tensor = module.InferInput("features", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                output = module.InferRequestedOutput("probabilities")
                return c.infer("mlp", [tensor], outputs=[output]).as_numpy("probabilities")

            def shared(module=module, c=c):
                tensor = module.InferInput("features", list(x.shape), "FP32")
                tensor.set_shared_memory("bench_in", x.nbytes)
                output = module.InferRequestedOutput("probabilities")
                output.set_shared_memory("bench_out", out_bytes)
                c.infer("mlp", [tensor], outputs=[output])
                return shm.get_contents_as_numpy(handles[1], np.float32, [rows, 10])

            np.testing.assert_allclose(raw(), shared(), rtol=1e-6)  # same answers both ways
            for _ in range(rounds):
                for way, call in (("raw", raw), ("shm", shared)):
                    for _ in range(10):  # warm-up
                        call()
                    start = time.perf_counter()
                    for _ in range(requests):
                        call()
                    elapsed = (time.perf_counter() - start) / requests
                    times.setdefault(f"{protocol} {way}", []).append(elapsed)
            c.unregister_system_shared_memory()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        json.dump(client(*args.client, args.rows, args.requests, args.rounds), sys.stdout)
        return

    from bench_model import write_repository

    from bnmodel.launcher import spawn_server

    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        write_repository(repository, max_batch_size=max(args.rows, 1024))
        serve = ("--model-repository", str(repository), "--workers", "1", "--device", "cpu")
        with spawn_server(serve, timeout=60) as server:
            command = [sys.executable, __file__, "--client", server.url, server.http_url]
            command += ["--rows", str(args.rows), "--requests", str(args.requests)]
            command += ["--rounds", str(args.rounds)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode:
                sys.exit(result.stderr)
    times = json.loads(result.stdout)
    print(f"batch {args.rows} rows, {args.requests} requests x {args.rounds} rounds, medians")
    print(f"{'way':<10} {'latency ms':>11} {'rows/s':>10}  {'raw/shm':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        protocol, way = name.split()
        ratio = statistics.median(times[f"{protocol} raw"]) / median if way == "shm" else 1.0
        print(f"{name:<10} {1000 * median:>11.3f} {args.rows / median:>10,.0f}  {ratio:>7.2f}")


if __name__ == "__main__":
    main()
