"""Prometheus endpoint (``--metrics-port``): Triton's metric names, read from the statistics.

Nothing is counted twice: a collector turns each version's :class:`~.statistics.VersionStats`
into samples when Prometheus scrapes, so the request path pays nothing for metrics. Triton's
names (``nv_inference_count{model="m",version="1"}``) are exposed untyped because
prometheus-client's text format would rename a counter to ``..._total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .statistics import LATENCY_BUCKETS_S, VersionStats

__all__ = [
    "CATEGORY_CELLS_METRIC",
    "CATEGORY_UNSEEN_METRIC",
    "COUNTERS",
    "LATENCY_METRIC",
    "StatsCollector",
    "start_metrics_server",
]

Source = Callable[[], list[tuple[str, str, VersionStats]]]

# Triton name, help text, value from a version's counters.
COUNTERS: tuple[tuple[str, str, Callable[[VersionStats], float]], ...] = (
    ("nv_inference_request_success", "successful inference requests", lambda s: s.success.count),
    ("nv_inference_request_failure", "failed inference requests", lambda s: s.fail.count),
    ("nv_inference_count", "inferences performed (rows)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "model executions (batches)", lambda s: s.execution_count),
    (
        "nv_inference_request_duration_us",
        "cumulative request duration in the server (us)",
        lambda s: (s.success.ns + s.fail.ns) / 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "cumulative queue duration (us)",
        lambda s: s.queue.ns / 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "cumulative batch merge duration (us)",
        lambda s: s.compute_input.ns / 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "cumulative model run duration (us)",
        lambda s: s.compute_infer.ns / 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "cumulative batch split duration (us)",
        lambda s: s.compute_output.ns / 1000,
    ),
)
LATENCY_METRIC = "bnmodel_inference_request_duration_seconds"
CATEGORY_CELLS_METRIC = "bnmodel_category_cells_total"
CATEGORY_UNSEEN_METRIC = "bnmodel_category_unseen_total"


class StatsCollector:
    """A prometheus-client collector over ``source()``: (model, version, counters) triples."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        entries = self.source()
        for name, help_text, value in COUNTERS:
            metric = Metric(name, help_text, "unknown")
            for model, version, stats in entries:
                metric.add_sample(name, {"model": model, "version": version}, float(value(stats)))
            yield metric
        yield self._latency(entries)
        yield from self._categories(entries)

    @staticmethod
    def _latency(entries) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            LATENCY_METRIC,
            "request latency in the server (queue + compute), successes and failures",
            labels=["model", "version"],
        )
        for model, version, stats in entries:
            counts = list(stats.latency_counts)  # a snapshot: the loop keeps counting
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            total_s = (stats.success.ns + stats.fail.ns) / 1e9
            family.add_metric([model, version], buckets, sum_value=total_s)
        return family

    @staticmethod
    def _categories(entries) -> Iterator[CounterMetricFamily]:
        labels = ["model", "version", "column"]
        cells = CounterMetricFamily(
            CATEGORY_CELLS_METRIC, "categorical cells received", labels=labels
        )
        unseen = CounterMetricFamily(
            CATEGORY_UNSEEN_METRIC,
            'categorical cells in the "other" slot: text not in the vocabulary, or blank',
            labels=labels,
        )
        for model, version, stats in entries:
            for column in stats.categories.columns if stats.categories else ():
                cells.add_metric([model, version, column.name], column.cells)
                unseen.add_metric([model, version, column.name], column.unseen)
        if cells.samples:  # no categorical model loaded: not even the HELP lines
            yield cells
            yield unseen


def start_metrics_server(host: str, port: int, source: Source) -> Any:
    """Serve /metrics on ``host:port`` from a daemon thread; returns the server (``shutdown()``).

    Only our collector is registered: no process/GC metrics of prometheus-client's default
    registry, so a scrape costs the loop nothing but reading counters.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
