"""Load generator: one point (batch, concurrency) against one server, or in-process ONNX Runtime.

Run as its own process so the client's CPU is measured apart from the server's:
    python loadgen.py --url 127.0.0.1:PORT --batch 64 --concurrency 16 --duration 10 --warmup 2
    python loadgen.py --inproc model.onnx --batch 1 --concurrency 1 --duration 10
    python loadgen.py --http http://127.0.0.1:PORT --body json|binary --batch 64 --concurrency 16
    python loadgen.py --url 127.0.0.1:PORT --model raw --inputs request.npz --concurrency 16
Prints one JSON object (see `Point`). `concurrency` coroutines (threads for --inproc) each send
a request, wait for its answer, decode it to numpy and send the next. Throughput counts the answers
that arrive inside the measured window, which starts after the warm-up; latencies are theirs.
``--inputs``: the request's tensors by name (numpy str arrays are sent as BYTES; the batch is
their row count) instead of random [batch, 64] features; gRPC and in-process only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["Point", "summarize"]

MODEL = "mlp"
INPUT, OUTPUT, IN_FEATURES, NUM_CLASSES = "features", "probabilities", 64, 10


@dataclass(frozen=True)
class Point:
    batch: int
    concurrency: int
    requests: int
    errors: int
    window_s: float
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_cores: float  # client process CPU seconds per wall second in the window
    server_cpu_cores: float  # the same for the server's process group (nan when not given)
    machine_cpu_cores: float  # all processes on the machine: the rest is other people's noise
    error_sample: str


class Recorder:
    """Latencies (s) of answers and errors that land inside [start, end] (perf_counter times)."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.errors = 0
        self.error_sample = ""
        self.cpu = [0.0, 0.0]
        self.server_cpu = [float("nan")] * 2
        self.machine_cpu = [0.0, 0.0]

    def ok(self, t0: float, t1: float) -> None:
        if self.start <= t1 <= self.end:
            self.latencies.append(t1 - t0)

    def failed(self, t1: float, exc: BaseException) -> None:
        if self.start <= t1 <= self.end:
            self.errors += 1
        self.error_sample = self.error_sample or f"{type(exc).__name__}: {exc}"[:300]


def summarize(rec: Recorder, batch: int, concurrency: int) -> Point:
    window = rec.end - rec.start
    lat_ms = np.asarray(rec.latencies) * 1e3
    p50, p99 = np.percentile(lat_ms, [50, 99]) if lat_ms.size else (float("nan"),) * 2
    return Point(
        batch=batch,
        concurrency=concurrency,
        requests=len(rec.latencies),
        errors=rec.errors,
        window_s=window,
        requests_per_s=len(rec.latencies) / window,
        rows_per_s=len(rec.latencies) * batch / window,
        p50_ms=float(p50),
        p99_ms=float(p99),
        client_cpu_cores=(rec.cpu[1] - rec.cpu[0]) / window,
        server_cpu_cores=(rec.server_cpu[1] - rec.server_cpu[0]) / window,
        machine_cpu_cores=(rec.machine_cpu[1] - rec.machine_cpu[0]) / window,
        error_sample=rec.error_sample,
    )


def decode(response) -> np.ndarray:
    """(batch, 10) float32 from a ModelInferResponse, raw or typed contents."""
    out = response.outputs[0]
    if response.raw_output_contents:
        flat = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    else:
        flat = np.asarray(out.contents.fp32_contents, dtype=np.float32)
    return flat.reshape(tuple(out.shape))


def reference(model_path: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], inputs)[0]


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """{input name: array} from an npz; numpy str arrays become object arrays (BYTES)."""
    with np.load(path) as arrays:
        return {k: arrays[k].astype(object) if arrays[k].dtype.kind == "U" else arrays[k]
                for k in arrays.files}  # fmt: skip


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of the live processes in process group `pgid` and of all their
    descendants (bnmodel's --workers run in process groups of their own) (Linux /proc)."""
    procs = {}  # pid -> (ppid, pgrp, cpu ticks)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # fields after the ")" that closes the command name: state ppid pgrp ... utime stime
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        procs[int(stat.parent.name)] = (
            int(fields[1]),
            int(fields[2]),
            int(fields[11]) + int(fields[12]),
        )
    members = {pid for pid, (_, pgrp, _) in procs.items() if pgrp == pgid}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _, _) in procs.items() if ppid in members} - members
        members |= new
        grew = bool(new)
    return sum(procs[pid][2] for pid in members) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat less idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


async def _sample_cpu(rec: Recorder, server_pgid: int | None) -> None:
    for i, at in enumerate((rec.start, rec.end)):
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        rec.cpu[i] = time.process_time()
        rec.machine_cpu[i] = machine_cpu_seconds()
        if server_pgid:
            rec.server_cpu[i] = group_cpu_seconds(server_pgid)


def _channel_options() -> list[tuple[str, int]]:
    """tritonclient's own defaults (message size, keepalive), so only the pool differs."""
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc.aio import MAX_GRPC_MESSAGE_SIZE

    keep = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keep.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keep.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keep.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keep.http2_max_pings_without_data),
    ]


async def run_remote(args: argparse.Namespace, x: dict[str, np.ndarray]) -> Recorder:
    import tritonclient.grpc.aio as tc
    from tritonclient.utils import np_to_triton_dtype

    # One client = one channel = one TCP connection (own subchannel pool, or gRPC would share
    # one connection between them); SO_REUSEPORT workers are balanced per connection.
    clients = [
        tc.InferenceServerClient(
            args.url, channel_args=[*_channel_options(), ("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(args.connections)
    ]
    client = clients[0]
    inp = []
    for name, array in x.items():
        inp.append(tc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        inp[-1].set_data_from_numpy(array)
    outputs = [tc.InferRequestedOutput(OUTPUT)]
    model = args.model
    try:
        first = decode((await client.infer(model, inp, outputs=outputs)).get_response())
        if args.verify and not np.allclose(first, reference(args.verify, x), atol=1e-5):
            raise SystemExit(f"{args.url}: answer differs from ONNX Runtime's: {first[:1]}")
        t = time.perf_counter() + args.warmup
        rec = Recorder(t, t + args.duration)

        async def worker(client) -> None:
            while (t0 := time.perf_counter()) < rec.end:
                try:
                    result = await client.infer(
                        model, inp, outputs=outputs, client_timeout=args.timeout
                    )
                    decode(result.get_response())
                    rec.ok(t0, time.perf_counter())
                except Exception as exc:  # noqa: BLE001 -- every failure is counted, none stops
                    rec.failed(time.perf_counter(), exc)
                    await asyncio.sleep(0.001)

        await asyncio.gather(
            _sample_cpu(rec, args.server_pgid),
            *(worker(clients[i % len(clients)]) for i in range(args.concurrency)),
        )
        return rec
    finally:
        for c in clients:
            await c.close()


def http_request(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer request for ``x`` asking for "probabilities" only: JSON
    data, or Triton's binary tensor data extension both ways."""
    import orjson

    tensor = {"name": INPUT, "datatype": "FP32", "shape": list(x.shape)}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        document = {"inputs": [tensor], "outputs": [{"name": OUTPUT}]}
        return orjson.dumps(document), {"content-type": "application/json"}
    raw = x.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    output = {"name": OUTPUT, "parameters": {"binary_data": True}}
    header = orjson.dumps({"inputs": [tensor], "outputs": [output]})
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + raw, headers


def http_decode(body: bytes, header_length: str | None) -> np.ndarray:
    """(batch, 10) float32 from an infer response: JSON data or binary after the JSON header."""
    import orjson

    length = int(header_length) if header_length else len(body)
    (out,) = orjson.loads(body[:length])["outputs"]
    if header_length:
        return np.frombuffer(body, np.float32, offset=length).reshape(out["shape"])
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


async def run_http(args: argparse.Namespace, inputs: dict[str, np.ndarray]) -> Recorder:
    """Closed loop over aiohttp: ``concurrency`` coroutines sharing one keep-alive pool, so each
    holds one connection (HTTP/1.1 has one request in flight per connection)."""
    import aiohttp

    x = inputs[INPUT]
    url = f"{args.http}/v2/models/{MODEL}/infer"
    body, headers = http_request(x, args.body == "binary")
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call() -> np.ndarray:
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                return http_decode(data, response.headers.get("inference-header-content-length"))

        first = await call()
        if args.verify and not np.allclose(first, reference(args.verify, inputs), atol=1e-5):
            raise SystemExit(f"{args.http}: answer differs from ONNX Runtime's: {first[:1]}")
        t = time.perf_counter() + args.warmup
        rec = Recorder(t, t + args.duration)

        async def worker() -> None:
            while (t0 := time.perf_counter()) < rec.end:
                try:
                    await call()
                    rec.ok(t0, time.perf_counter())
                except Exception as exc:  # noqa: BLE001 -- every failure is counted, none stops
                    rec.failed(time.perf_counter(), exc)
                    await asyncio.sleep(0.001)

        await asyncio.gather(
            _sample_cpu(rec, args.server_pgid), *(worker() for _ in range(args.concurrency))
        )
        return rec


def run_inproc(args: argparse.Namespace, x: dict[str, np.ndarray]) -> Recorder:
    """`concurrency` threads sharing one single-threaded session (ORT releases the GIL in run)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(args.inproc, opts, providers=["CPUExecutionProvider"])
    session.run([OUTPUT], x)
    t = time.perf_counter() + args.warmup
    rec = Recorder(t, t + args.duration)
    lock = threading.Lock()

    def worker() -> None:
        while (t0 := time.perf_counter()) < rec.end:
            session.run([OUTPUT], x)
            with lock:
                rec.ok(t0, time.perf_counter())

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for th in threads:
        th.start()
    asyncio.run(_sample_cpu(rec, None))
    for th in threads:
        th.join()
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="host:port of an Open Inference Protocol gRPC server")
    target.add_argument("--inproc", metavar="MODEL.onnx", help="run ONNX Runtime in this process")
    target.add_argument("--http", metavar="URL", help="http://host:port of an HTTP/REST server")
    parser.add_argument("--body", choices=("json", "binary"), default="json", help="with --http")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before measuring"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="per-request client timeout (s)"
    )
    parser.add_argument(
        "--connections", type=int, default=1, help="client channels (TCP connections)"
    )
    parser.add_argument("--server-pgid", type=int, help="process group whose CPU to report")
    parser.add_argument("--verify", metavar="MODEL.onnx", help="check the first answer against ORT")
    parser.add_argument("--model", default=MODEL, help="model name on the server (gRPC)")
    parser.add_argument("--inputs", metavar="FILE.npz", help="the request's tensors by name")
    args = parser.parse_args()
    if args.inputs and args.http:
        parser.error("--inputs: gRPC (--url) and --inproc only")
    if args.inputs:
        x = load_inputs(args.inputs)
        args.batch = len(next(iter(x.values())))
    else:
        rows = np.random.default_rng(0).standard_normal((args.batch, IN_FEATURES))
        x = {INPUT: rows.astype(np.float32)}
    if args.inproc:
        rec = run_inproc(args, x)
    else:
        rec = asyncio.run(run_http(args, x) if args.http else run_remote(args, x))
    print(json.dumps(asdict(summarize(rec, args.batch, args.concurrency))), flush=True)


if __name__ == "__main__":
    main()
