"""CPU pinning: each worker process's event loop and gRPC threads on a core of their own.

With one worker per core, the kernel still moves a worker's threads from core to core as other
work (the client, ONNX Runtime) comes and goes. A request crosses two of them, gRPC's poller
thread and the event loop, and each hop to another core costs a wake-up there and cold caches.
Pinned, worker ``i``'s loop thread, and the gRPC threads it starts afterwards, stay on the
``i``-th allowed core; ONNX Runtime's runs (the executor threads) keep every allowed core, so a
worker that gets all the connections can still spread its model runs. Measured on 2 cores with
the client on the same box and 4 connections, three interleaved rounds (benchmarks/README.md):
about 10% more rows/s at concurrency 1 (batch 1 and 64), 6% at batch 64 / concurrency 64,
within noise elsewhere. Pinning only the loop thread, leaving gRPC's poller free, gained
nothing measurable. The cost: a worker that gets more work than one core can carry (one client
connection at concurrency 16, its requests all on that worker) can no longer spill its gRPC
poller onto another core: 13% fewer rows/s there (3,028 -> 2,637 at batch 1). So pinning is
opt-in (``--pin-loop on``), for deployments whose load spreads over many connections.

Linux only (``os.sched_setaffinity``); elsewhere nothing is pinned.
"""

from __future__ import annotations

import os

__all__ = ["PIN_CHOICES", "allowed_cpus", "cpu_count", "loop_cpu", "pin_this_thread"]

PIN_CHOICES = ("off", "on")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order; [] where affinity is not supported."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def cpu_count() -> int:
    """How many CPUs this process may use (its affinity mask where supported), at least 1."""
    return len(allowed_cpus()) or os.cpu_count() or 1


def loop_cpu(choice: str, index: int, cpus: list[int]) -> int | None:
    """The CPU for the loop thread of worker ``index`` ("on": the index-th allowed core,
    wrapping around); None: do not pin ("off", or a single allowed core)."""
    if choice != "on" or len(cpus) < 2:
        return None
    return cpus[index % len(cpus)]


def pin_this_thread(cpus: list[int] | set[int]) -> None:
    """Restrict the calling thread (not the process) to ``cpus``; a no-op where unsupported."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
