"""What counting unseen categorical text costs the server per request, at batch 1 and 1024.

Run by hand from the repository root with the project venv active:
    python benchmarks/category_count_bench.py                  # 2000 requests x 5 rounds
    python benchmarks/category_count_bench.py --requests 300   # quick look
    python benchmarks/category_count_bench.py --grpc           # through `bnmodel serve`

Two copies of one raw-row model (6 numeric columns, 3 categorical BYTES inputs of 9, 17 and 29
values, 20% of cells unseen) in one in-process data plane: "counted" has vocabularies in its
contract (the server counts its cells for bnmodel_category_*_total), "uncounted" has none (no
counting). Each request is a decoded-from-raw-bytes ModelInfer as gRPC hands it over, run
through ``DataPlane.infer`` (validation, decoding, the count, the model run, no network); both
get the same cells. Rounds alternate which model goes first; the table gives medians over
rounds of the per-request median and of the ratio counted/uncounted, and the time of
``CategoryCounts.add`` alone. No network: the share the count takes of a real request (gRPC or
HTTP around it) is smaller still. ``--grpc`` times
whole requests instead: the same repository behind `bnmodel serve --workers 1`, our gRPC client
sending raw contents on one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "serve"))
from bnmodel.serve.codec import encode_raw  # noqa: E402
from bnmodel.serve.dataplane import DataPlane  # noqa: E402
from bnmodel.serve.repository import ModelRepository  # noqa: E402
from bnmodel.serve.session import SessionFactory  # noqa: E402
from bnmodel.serve.validation import InferInput, InferRequest  # noqa: E402
from models import raw_config_text, raw_model, write_model  # noqa: E402 -- the test builder

NUMERIC = [f"n{i}" for i in range(6)]
VOCABULARIES = {
    "city": [f"city-{i}" for i in range(9)],
    "product": [f"product-{i}" for i in range(17)],
    "channel": [f"channel-{i}" for i in range(29)],
}
UNSEEN = 0.2
MODELS = ("counted", "uncounted")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 1024], help="rows per request")
    p.add_argument("--requests", type=int, default=2000, help="requests per model per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--grpc", action="store_true", help="time requests to a server over gRPC")
    return p.parse_args(argv)


def write_models(root: Path, max_batch: int) -> None:
    for name in MODELS:
        model = raw_model(
            numeric=NUMERIC, vocabularies=VOCABULARIES, preprocessing=name == "counted", seed=1
        )
        config = raw_config_text(
            name, numeric=NUMERIC, vocabularies=VOCABULARIES, max_batch_size=max_batch
        )
        write_model(root, name, model, config)


def request(model: str, rows: int, rng: np.random.Generator) -> InferRequest:
    x = rng.normal(size=(rows, len(NUMERIC))).astype(np.float32)
    inputs = [InferInput("features", "FP32", x.shape, raw=x.tobytes())]
    for column, vocabulary in VOCABULARIES.items():
        values = [
            f"unseen-{rng.integers(100)}" if rng.random() < UNSEEN else rng.choice(vocabulary)
            for _ in range(rows)
        ]
        _, raw = encode_raw(np.array(values, dtype=object).reshape(-1, 1))
        inputs.append(InferInput(column, "BYTES", (rows, 1), raw=raw))
    return InferRequest(model, inputs=tuple(inputs), raw_count=len(inputs))


def time_infer(plane: DataPlane, req: InferRequest, count: int) -> float:
    """Median seconds of ``plane.infer(req)``, each awaited alone."""

    async def run() -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await plane.infer(req)
            times.append(time.perf_counter() - start)
        return times

    return statistics.median(asyncio.run_coroutine_threadsafe(run(), LOOP).result())


def time_count(plane: DataPlane, req: InferRequest, count: int) -> float:
    """Median seconds of CategoryCounts.add on the request's inputs, as the server decodes them."""
    from bnmodel.serve.validation import check_inputs

    model, version = plane.model("counted")
    counts = version.stats.categories
    times = []
    for _ in range(count):
        inputs = check_inputs(model, req)  # freshly decoded: no str hash cached yet
        start = time.perf_counter()
        counts.add(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


LOOP = asyncio.new_event_loop()


def arrays(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The inputs of :func:`request` as a client holds them."""
    req = request("counted", rows, rng)
    from bnmodel.serve.codec import decode_raw

    return {t.name: decode_raw(t.raw, t.datatype, t.shape) for t in req.inputs}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_main(args: argparse.Namespace) -> None:
    from bnmodel.serve.client import InferenceClient

    from bnmodel.launcher import spawn_server

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_models(root, max(args.batches))
        serve = ("--model-repository", str(root), "--workers", "1", "--no-http")
        serve += ("--metrics-port", str(free_port()))  # counting is on with metrics only
        with spawn_server(serve) as server, InferenceClient(server.url) as client:
            print(f"{'batch':>6} {'counted us':>11} {'uncounted us':>13} {'ratio':>6}  (gRPC)")
            for rows in args.batches:
                inputs = arrays(rows, rng)
                medians = {m: [] for m in MODELS}
                ratios = []
                for m in MODELS:  # warm up
                    for _ in range(50):
                        client.infer(m, inputs)
                for i in range(args.rounds):
                    point = {}
                    for m in MODELS if i % 2 == 0 else MODELS[::-1]:
                        times = []
                        for _ in range(args.requests):
                            start = time.perf_counter()
                            client.infer(m, inputs)
                            times.append(time.perf_counter() - start)
                        point[m] = statistics.median(times)
                        medians[m].append(point[m])
                    ratios.append(point["counted"] / point["uncounted"])
                counted, uncounted = (statistics.median(medians[m]) * 1e6 for m in MODELS)
                ratio = statistics.median(ratios)
                print(f"{rows:>6} {counted:>11.1f} {uncounted:>13.1f} {ratio:>6.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.grpc:
        grpc_main(args)
        return
    import threading

    threading.Thread(target=LOOP.run_forever, daemon=True).start()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(2) as executor:
        root = Path(folder)
        write_models(root, max(args.batches))
        plane = DataPlane(ModelRepository(root), SessionFactory("cpu", 1), executor)
        plane.count_categories = True  # as --metrics-port sets it
        asyncio.run_coroutine_threadsafe(plane.load_all(), LOOP).result()
        assert plane.model("counted")[1].stats.categories is not None
        assert plane.model("uncounted")[1].stats.categories is None
        print(
            f"{'batch':>6} {'counted us':>11} {'uncounted us':>13} {'ratio':>6} "
            f"{'add() us':>9} {'add share':>9}"
        )
        for rows in args.batches:
            one = request("counted", rows, rng)  # the same cells for both models
            reqs = {m: dataclasses.replace(one, model_name=m) for m in MODELS}
            for m in MODELS:  # warm up
                time_infer(plane, reqs[m], 50)
            medians = {m: [] for m in MODELS}
            ratios, adds = [], []
            for i in range(args.rounds):
                order = MODELS if i % 2 == 0 else MODELS[::-1]  # neither always goes first
                point = {m: time_infer(plane, reqs[m], args.requests) for m in order}
                for m in MODELS:
                    medians[m].append(point[m])
                ratios.append(point["counted"] / point["uncounted"])
                adds.append(time_count(plane, reqs["counted"], args.requests))
            counted, uncounted = (statistics.median(medians[m]) * 1e6 for m in MODELS)
            add = statistics.median(adds) * 1e6
            print(
                f"{rows:>6} {counted:>11.1f} {uncounted:>13.1f} "
                f"{statistics.median(ratios):>6.3f} {add:>9.1f} {100 * add / uncounted:>8.1f}%"
            )
    LOOP.call_soon_threadsafe(LOOP.stop)


if __name__ == "__main__":
    main()
