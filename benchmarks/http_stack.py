"""The HTTP layer alone: server CPU per request of GET /v2/health/ready, ours against uvicorn.

    python benchmarks/http_stack.py                 # 3 rounds x 3 s, concurrency 1 and 16

Both servers run one process on 127.0.0.1: `bnmodel serve --workers 1` (asyncio.Protocol +
httptools on uvloop, serve/http.py) and peers/http_floor.py (uvicorn + httptools + uvloop with a
raw ASGI app). A closed loop of aiohttp coroutines with keep-alive sends the probes; the
server's CPU seconds (/proc) over the window divided by the answers is the figure that
matters on a 2-core box shared with the client. Prints medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import write_repository  # noqa: E402
from servers import HERE, free_port  # noqa: E402

from bnmodel.launcher import spawn_server  # noqa: E402

PATH = "/v2/health/ready"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def probe(url: str, pid: int, concurrency: int, seconds: float) -> tuple[float, float]:
    """(requests/s, server CPU us per request) over ``seconds`` after 0.5 s of warm-up."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter() + 0.5
        end, answered, cpu = start + seconds, 0, []

        async def worker() -> None:
            nonlocal answered
            while (t0 := time.perf_counter()) < end:
                async with session.get(url + PATH) as response:
                    await response.read()
                if t0 >= start:
                    if not cpu:
                        cpu.append(cpu_seconds(pid))
                    answered += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        used = cpu_seconds(pid) - cpu[0]
    return answered / seconds, 1e6 * used / max(answered, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args(argv)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_repository(Path(tmp) / "repo")
        port = free_port()
        floor = subprocess.Popen(
            [sys.executable, str(HERE / "peers" / "http_floor.py"), f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ours_args = ["--model-repository", str(Path(tmp) / "repo"), "--workers", "1"]
            with spawn_server([*ours_args, "--log-level", "WARNING"]) as ours:
                time.sleep(1.0)  # the floor's start
                targets = {
                    "bnmodel serve (asyncio.Protocol + httptools)": (
                        ours.http_url,
                        ours.process.pid,
                    ),
                    "uvicorn + httptools, raw ASGI": (f"http://127.0.0.1:{port}", floor.pid),
                }
                for _ in range(args.rounds):
                    for c in map(int, args.concurrency.split(",")):
                        for name, (url, pid) in targets.items():
                            point = asyncio.run(probe(url, pid, c, args.seconds))
                            results.setdefault((name, c), []).append(point)
        finally:
            floor.terminate()
            floor.wait(timeout=10)
    print(f"GET {PATH}, medians of {args.rounds} rounds x {args.seconds:g} s")
    print(f"{'server':<46} {'conc':>4} {'req/s':>8} {'server CPU us/req':>18}")
    for (name, c), points in results.items():
        rps = statistics.median(p[0] for p in points)
        us = statistics.median(p[1] for p in points)
        print(f"{name:<46} {c:>4} {rps:>8,.0f} {us:>18.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
