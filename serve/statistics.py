"""Inference statistics per model version, kept as Triton keeps them, and their plain form.

Counters only go up and are updated on the event loop (no locks). Triton's conventions:
``success``/``fail`` count requests and their whole time in the server (queue + compute);
``queue`` and ``compute_*`` count requests, each charged its batch's durations;
``inference_count`` counts rows, ``execution_count`` model runs; ``batch_stats`` counts model
runs per batch size (rows).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .categories import CategoryCounts

__all__ = [
    "LATENCY_BUCKETS_S",
    "Duration",
    "BatchStats",
    "VersionStats",
    "version_statistics",
]

# Upper bounds (seconds) of the request latency histogram: 100 us .. 10 s.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
_BUCKETS_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS_S)
_COMPUTE = ("compute_input", "compute_infer", "compute_output")  # the stages of a model run


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count


@dataclass
class BatchStats:
    """Model runs of one batch size (rows) and their stage durations."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class VersionStats:
    """Cumulative counters of one model version."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows
    execution_count: int = 0  # model runs
    last_inference_ms: int = 0  # wall clock (ms since the epoch) of the last success
    batches: dict[int, BatchStats] = field(default_factory=dict)  # rows -> runs of that size
    # Request latency histogram: counts per LATENCY_BUCKETS_S bucket (+ one for larger).
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS_NS) + 1))
    # Categorical cells received and in the "other" slot (a raw-row model's; else None).
    categories: CategoryCounts | None = None

    def record_success(self, elapsed_ns: int) -> None:
        self.success.add(elapsed_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.latency_counts[bisect.bisect_left(_BUCKETS_NS, elapsed_ns)] += 1

    def record_failure(self, elapsed_ns: int) -> None:
        self.fail.add(elapsed_ns)
        self.latency_counts[bisect.bisect_left(_BUCKETS_NS, elapsed_ns)] += 1

    def record_execution(
        self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One model run of ``rows`` rows serving ``requests`` requests."""
        self.inference_count += rows
        self.execution_count += 1
        batch = self.batches.get(rows) or self.batches.setdefault(rows, BatchStats())
        for stage, ns in zip(_COMPUTE, (input_ns, infer_ns, output_ns), strict=True):
            getattr(self, stage).add(ns, requests)
            getattr(batch, stage).add(ns)

    def record_queue(self, waited_ns: int) -> None:
        self.queue.add(waited_ns)


def version_statistics(name: str, version: str, stats: VersionStats) -> dict[str, Any]:
    """One model version's ModelStatistics as plain data (dicts, lists, ints) with the protocol's
    field names: HTTP writes it as JSON, gRPC parses it into the message."""
    return {
        "name": name,
        "version": version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": _plain(stats, ("success", "fail", "queue", *_COMPUTE)),
        "batch_stats": [
            {"batch_size": rows, **_plain(batch, _COMPUTE)}
            for rows, batch in sorted(stats.batches.items())
        ],
    }


def _plain(stats: VersionStats | BatchStats, durations: tuple[str, ...]) -> dict[str, Any]:
    return {name: dataclasses.asdict(getattr(stats, name)) for name in durations}
