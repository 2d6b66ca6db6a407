"""Soak, then drain: a server under mixed valid/invalid load for a while, then SIGTERM under load.

    python benchmarks/soak.py                          # 60 s at concurrency 64, then the drain
    python benchmarks/soak.py --seconds 10 --concurrency 16

Run by hand, never in CI. The benchmark MLP (bench_model.py, 64-256-256-256-10) is served by
``bnmodel serve``; ``--concurrency`` coroutines send requests back to back, ``--http-share`` of
them over HTTP (aiohttp, JSON or binary bodies) and the rest as raw gRPC ModelInfer requests of
one grpc.aio client, ``--invalid`` of them malformed (eight gRPC kinds, six HTTP ones). Checked
for every answer: valid requests are OK with ONNX Runtime's probabilities for their rows; invalid
ones get their status (never OK, INTERNAL or UNKNOWN, never a 5xx). Resident memory of the
server is sampled every 5 s; growth is measured from the sample after ``--warmup`` seconds to the
last one.

Then, with every coroutine's request in flight, SIGTERM: health must say NOT_SERVING at once,
every request sent before the signal must be answered, and the server must exit 0 within its
grace period. Exit status 1 if any of these, or the <10% memory growth, fails.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import IN_FEATURES, MODEL_NAME, NUM_CLASSES, write_repository  # noqa: E402
from bnmodel.serve.proto import grpc_service_pb2 as pb  # noqa: E402
from loadgen import http_decode, http_request  # noqa: E402

from bnmodel.launcher import spawn_server  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"
OK = grpc.StatusCode.OK


def _request(x: np.ndarray, **edits) -> bytes:
    r = pb.ModelInferRequest(model_name=edits.pop("model", MODEL_NAME))
    shape = edits.pop("shape", x.shape)
    r.inputs.add(name=edits.pop("name", "features"), datatype=edits.pop("datatype", "FP32"))
    r.inputs[0].shape.extend(shape)
    r.raw_input_contents.append(edits.pop("raw", x.tobytes()))
    r.outputs.add(name="probabilities")
    return r.SerializeToString()


def invalid_requests(x: np.ndarray) -> dict[str, tuple[bytes, grpc.StatusCode]]:
    """Eight kinds of malformed request and the status each must get."""
    bad = grpc.StatusCode.INVALID_ARGUMENT
    return {
        "unknown model": (_request(x, model="nope"), grpc.StatusCode.NOT_FOUND),
        "wrong input name": (_request(x, name="feature"), bad),
        "wrong datatype": (_request(x, datatype="FP64"), bad),
        "wrong feature count": (_request(x, shape=(2, 32)), bad),
        "raw size": (_request(x, raw=x.tobytes()[:-4]), bad),
        "negative dims": (_request(x, shape=(-1, IN_FEATURES)), bad),
        "truncated protobuf": (_request(x)[:-9], bad),
        "garbage bytes": (bytes(random.Random(0).randrange(256) for _ in range(300)), bad),
    }


def invalid_http_requests(x: np.ndarray) -> dict[str, tuple[str, bytes, dict, int]]:
    """Malformed HTTP infer requests: (path, body, headers, the status each must get)."""
    infer = f"/v2/models/{MODEL_NAME}/infer"
    good, _ = http_request(x, binary=False)
    binary, headers = http_request(x, binary=True)
    return {
        "http unknown model": ("/v2/models/nope/infer", good, {}, 404),
        "http malformed JSON": (infer, good[:-7], {}, 400),
        "http wrong type": (infer, good.replace(b'"FP32"', b"32"), {}, 400),
        "http wrong feature count": (infer, http_request(x[:, :-1], False)[0], {}, 400),
        "http binary size mismatch": (infer, binary[:-4], headers, 400),
        "http header length past body": (
            infer,
            binary,
            {**headers, "inference-header-content-length": "999999"},
            400,
        ),
    }


@dataclass
class Tally:
    valid: Counter = field(default_factory=Counter)  # status name -> count
    invalid: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # what went wrong, first few
    latencies_ms: list[float] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.wrong) < 20:
            self.wrong.append(text)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Load:
    """``concurrency`` coroutines sending back to back until told to stop."""

    def __init__(self, url: str, invalid_share: float, seed: int) -> None:
        self.url, self.invalid_share = url, invalid_share
        rng = np.random.default_rng(seed)
        self.inputs = [rng.normal(size=(n, IN_FEATURES)).astype(np.float32) for n in (1, 2, 4, 8)]
        self.invalid = invalid_requests(self.inputs[1])
        self.http_invalid = invalid_http_requests(self.inputs[1])
        self.tally = Tally()
        self.stop_sending = asyncio.Event()
        self.in_flight = 0

    def expected(self, model_path: Path) -> None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path))
        self.want = [session.run(["probabilities"], {"features": x})[0] for x in self.inputs]

    async def _one(self, call, rng: random.Random) -> None:
        if rng.random() < self.invalid_share:
            kind = rng.choice(list(self.invalid))
            payload, status = self.invalid[kind]
            expect, i = status, None
        else:
            i = rng.randrange(len(self.inputs))
            payload, expect, kind = _request(self.inputs[i]), OK, "valid"
        start = time.perf_counter()
        self.in_flight += 1
        try:
            response, code = await call(payload, timeout=30), OK
        except grpc.aio.AioRpcError as exc:
            response, code, details = b"", exc.code(), exc.details()
        finally:
            self.in_flight -= 1
        tally = self.tally  # read after the answer: the drain swaps in its own tally
        tally.latencies_ms.append(1000 * (time.perf_counter() - start))
        (tally.valid if i is not None else tally.invalid)[code.name] += 1
        if code != expect:
            tally.problem(f"{kind}: {code.name} {details if code != OK else ''}")
        elif i is not None:
            got = pb.ModelInferResponse.FromString(response)
            p = np.frombuffer(got.raw_output_contents[0], np.float32)
            if not np.allclose(p.reshape(-1, NUM_CLASSES), self.want[i], rtol=1e-4, atol=1e-6):
                tally.problem(f"valid request {i}: wrong probabilities")

    async def _one_http(self, session, url: str, rng: random.Random) -> None:
        """One HTTP request (JSON or binary body at random); tallied with gRPC's status names
        for the answers that must be OK ("OK" for 200), "HTTP nnn" for the others."""
        if rng.random() < self.invalid_share:
            kind = rng.choice(list(self.http_invalid))
            path, body, headers, expect = self.http_invalid[kind]
            i = None
        else:
            i = rng.randrange(len(self.inputs))
            body, headers = http_request(self.inputs[i], binary=rng.random() < 0.5)
            path, expect, kind = f"/v2/models/{MODEL_NAME}/infer", 200, "http valid"
        start = time.perf_counter()
        self.in_flight += 1
        try:
            async with session.post(url + path, data=body, headers=headers) as answer:
                status, data = answer.status, await answer.read()
                length = answer.headers.get("inference-header-content-length")
        except Exception as exc:  # noqa: BLE001 -- a dropped connection is a problem to count
            status, data, length = 0, str(exc).encode(), None
        finally:
            self.in_flight -= 1
        tally = self.tally
        tally.latencies_ms.append(1000 * (time.perf_counter() - start))
        (tally.valid if i is not None else tally.invalid)[
            "OK" if status == 200 else f"HTTP {status}"
        ] += 1
        if status != expect:
            tally.problem(f"{kind}: HTTP {status} {data[:200]!r}")
        elif i is not None:
            p = http_decode(data, length)
            if not np.allclose(p, self.want[i], rtol=1e-4, atol=1e-6):
                tally.problem(f"http valid request {i}: wrong probabilities")

    async def http_worker(self, session, url: str, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop_sending.is_set():
            await self._one_http(session, url, rng)

    async def worker(self, channel: grpc.aio.Channel, seed: int) -> None:
        call, rng = channel.unary_unary(INFER), random.Random(seed)
        while not self.stop_sending.is_set():
            await self._one(call, rng)


async def _sample_rss(pid: int, samples: list[tuple[float, int]], every: float) -> None:
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, _rss_kib(pid)))
        await asyncio.sleep(every)


async def _health(url: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


async def soak_and_drain(server, args, model_path: Path) -> dict:
    load = Load(server.url, args.invalid, args.seed)
    load.expected(model_path)
    samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(_sample_rss(server.process.pid, samples, 5.0))
    import aiohttp

    over_http = round(args.concurrency * args.http_share)
    connector = aiohttp.TCPConnector(limit=max(over_http, 1))
    async with (
        grpc.aio.insecure_channel(server.url) as channel,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        workers = [
            asyncio.create_task(
                load.http_worker(session, server.http_url, args.seed + i)
                if i < over_http
                else load.worker(channel, args.seed + i)
            )
            for i in range(args.concurrency)
        ]
        await asyncio.sleep(args.seconds)
        soak = load.tally
        samples.append((args.seconds, _rss_kib(server.process.pid)))
        sampler.cancel()
        # The drain: stop sending new requests, signal with every worker's request in flight.
        load.tally = Tally()
        load.stop_sending.set()
        in_flight = load.in_flight
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        health = await _health(server.url)
        await asyncio.gather(*workers)
        answered = time.monotonic() - signalled
        exit_code = await asyncio.to_thread(server.process.wait, args.grace + 30)
        exited = time.monotonic() - signalled
    return {
        "soak": soak,
        "samples": samples,
        "drain": load.tally,
        "in_flight": in_flight,
        "health": health,
        "answered_s": answered,
        "exit_code": exit_code,
        "exit_s": exited,
    }


def _report(result: dict, args) -> bool:
    soak: Tally = result["soak"]
    total = sum(soak.valid.values()) + sum(soak.invalid.values())
    valid_errors = sum(n for code, n in soak.valid.items() if code != "OK")
    warm = [kib for t, kib in result["samples"] if t >= args.warmup] or [0]
    growth = (warm[-1] - warm[0]) / max(warm[0], 1)
    lat = sorted(soak.latencies_ms)
    print(
        f"soak: {args.seconds:.0f} s, concurrency {args.concurrency}, invalid share "
        f"{args.invalid:.0%}"
    )
    print(
        "| requests | req/s | valid | valid errors | invalid | invalid by status | "
        "wrong answers | p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {total} | {total / args.seconds:.0f} | {sum(soak.valid.values())} | {valid_errors} "
        f"| {sum(soak.invalid.values())} | {dict(soak.invalid)} | {len(soak.wrong)} | "
        f"{statistics.median(lat):.2f} | {lat[int(0.99 * (len(lat) - 1))]:.2f} |"
    )
    series = ", ".join(f"{t:.0f}s {kib / 1024:.1f}" for t, kib in result["samples"])
    print(f"server RSS MiB: {series}")
    print(
        f"RSS after {args.warmup:.0f} s warm-up: {warm[0] / 1024:.1f} MiB -> end "
        f"{warm[-1] / 1024:.1f} MiB ({100 * growth:+.1f}%; limit +10%)"
    )
    drain: Tally = result["drain"]
    drained_bad = sum(n for code, n in drain.valid.items() if code != "OK")
    print(
        f"drain: SIGTERM with {result['in_flight']} requests in flight; health right after: "
        f"{result['health']}; answers {dict(drain.valid)} valid, {dict(drain.invalid)} "
        f"invalid; last answer {result['answered_s']:.2f} s, exit {result['exit_code']} after "
        f"{result['exit_s']:.2f} s (grace {args.grace:.0f} s)"
    )
    for text in soak.wrong + drain.wrong:
        print("  problem:", text)
    return (
        valid_errors == 0
        and not soak.wrong
        and growth < 0.10
        and result["health"] == "NOT_SERVING"
        and drained_bad == 0
        and not drain.wrong
        and result["exit_code"] == 0
        and result["exit_s"] <= args.grace
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--invalid", type=float, default=0.3, help="share of malformed requests")
    parser.add_argument("--warmup", type=float, default=10.0, help="RSS baseline after this")
    parser.add_argument("--grace", type=float, default=30.0, help="server --grace-seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--http-share", type=float, default=0.5, help="share of the coroutines sending over HTTP"
    )
    parser.add_argument("--server-args", default="", help="extra `bnmodel serve` flags")
    args = parser.parse_args(argv)
    with TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        model = write_repository(repo)  # .../mlp/1/model.onnx
        serve_args = ["--model-repository", str(repo), "--grace-seconds", str(args.grace)]
        extra = args.server_args.split()
        if "--workers" not in extra:  # RSS is sampled from one process: the server itself
            extra += ["--workers", "1"]
        with spawn_server([*serve_args, *extra]) as server:
            print(f"server: {server.ready_line}")
            result = asyncio.run(soak_and_drain(server, args, model))
            log = server.stderr_text()  # all of it: the drain phase stopped the server
    print(f"server log: {len(log.splitlines())} lines, {log.count('Traceback')} tracebacks")
    return 0 if _report(result, args) and "Traceback" not in log else 1


if __name__ == "__main__":
    sys.exit(main())
