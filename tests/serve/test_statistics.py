"""Counters -> ModelStatistics (plain data, and the gRPC message parsed from it) and ->
Prometheus samples (no server)."""

from __future__ import annotations

import json

from bnmodel.serve.metrics import COUNTERS, LATENCY_METRIC, StatsCollector
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.statistics import VersionStats, version_statistics
from google.protobuf import json_format
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry


def _stats() -> VersionStats:
    stats = VersionStats()
    # Two runs: 3 requests sharing 7 rows, then 1 request of 2 rows; one failed request.
    stats.record_execution(rows=7, requests=3, input_ns=10, infer_ns=100, output_ns=5)
    stats.record_execution(rows=2, requests=1, input_ns=1, infer_ns=40, output_ns=2)
    for waited in (50, 60, 70, 80):
        stats.record_queue(waited)
    for elapsed in (1_000, 2_000, 3_000, 4_000_000):
        stats.record_success(elapsed)
    stats.record_failure(20_000_000_000)  # beyond the last bucket
    return stats


def test_triton_conventions_in_the_message():
    plain = version_statistics("m", "2", _stats())
    assert json.loads(json.dumps(plain)) == plain  # JSON as it is, for HTTP
    assert plain["inference_stats"]["compute_infer"] == {"count": 4, "ns": 340}
    message = json_format.ParseDict(plain, pb.ModelStatistics())  # what gRPC sends
    infer = message.inference_stats
    assert (message.name, message.version) == ("m", "2")
    assert (message.inference_count, message.execution_count) == (9, 2)
    assert (infer.success.count, infer.success.ns) == (4, 4_006_000)
    assert (infer.fail.count, infer.queue.count, infer.queue.ns) == (1, 4, 260)
    # Each request is charged its batch's durations.
    assert (infer.compute_infer.count, infer.compute_infer.ns) == (4, 3 * 100 + 40)
    assert (infer.compute_input.ns, infer.compute_output.ns) == (3 * 10 + 1, 3 * 5 + 2)
    batches = {b.batch_size: b for b in message.batch_stats}
    assert sorted(batches) == [2, 7]
    assert (batches[7].compute_infer.count, batches[7].compute_infer.ns) == (1, 100)
    assert message.last_inference > 0


def test_collector_exposes_every_triton_name_and_the_latency_histogram():
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: [("m", "2", _stats())]))
    text = generate_latest(registry).decode()
    labels = '{model="m",version="2"}'
    for name, _, _ in COUNTERS:
        assert f"\n{name}{labels} " in text
    assert f"nv_inference_request_success{labels} 4.0" in text
    assert f"nv_inference_count{labels} 9.0" in text
    assert f"nv_inference_compute_infer_duration_us{labels} 0.34" in text
    assert f'{LATENCY_METRIC}_bucket{{le="0.0001",model="m",version="2"}} 3.0' in text
    assert f'{LATENCY_METRIC}_bucket{{le="10.0",model="m",version="2"}} 4.0' in text
    assert f'{LATENCY_METRIC}_bucket{{le="+Inf",model="m",version="2"}} 5.0' in text
    assert f"{LATENCY_METRIC}_count{labels} 5.0" in text
