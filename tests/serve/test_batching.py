"""The scheduler in front of each model version: batching, bounded queue, cancel, drain.

In-process with a row-wise fake model on a real thread pool; gates (threading.Event) hold the
model so queue states are reached deterministically, never by sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from bnmodel.serve.batching import (
    BatchingOptions,
    BatchPolicy,
    NextBatch,
    Queued,
    Scheduler,
    batch_policy,
    calibrate_run_times,
    next_batch,
    rows_within,
    set_request_deadline,
)
from bnmodel.serve.errors import (
    DeadlineExceededError,
    ModelNotReadyError,
    ResourceExhaustedError,
)
from bnmodel.serve.proto import model_config_pb2
from bnmodel.serve.settings import DEFAULT_MAX_QUEUE_SIZE
from bnmodel.serve.statistics import VersionStats
from google.protobuf import text_format


class FakeModel:
    """y = 3x + 1 row by row; records the batch sizes it ran; can be held at a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.runs: list[int] = []
        self.threads: list[int] = []  # where each run happened
        self.started = threading.Event()

    def __call__(self, inputs):
        self.threads.append(threading.get_ident())
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        x = inputs["x"]
        self.runs.append(x.shape[0])
        return {"y": 3 * x + 1}


def _scheduler(model, max_rows=64, delay_us=0, max_queue=100, slots=1, inline_rows=0, **kw):
    policy = BatchPolicy(max_rows, delay_us * 1000, max_queue, slots, inline_rows, 50_000, **kw)
    executor = ThreadPoolExecutor(2)
    return Scheduler(model, executor, policy, VersionStats()), executor


async def _until(predicate) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.001)


def _x(rows: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)}


async def _held_first(scheduler, model) -> asyncio.Task:
    """A first request that holds the model until model.gate is set."""
    first = asyncio.create_task(scheduler.submit(_x(1, 99), 1))
    await asyncio.to_thread(model.started.wait, 10)
    return first


def test_concurrent_mixed_batches_each_get_their_own_rows_and_share_runs():
    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model, max_rows=16, delay_us=1_000_000)
        first = await _held_first(scheduler, model)
        rows = [1, 3, 2, 5, 1, 4, 6, 2, 7, 1]
        inputs = [_x(n, seed) for seed, n in enumerate(rows)]
        tasks = [asyncio.create_task(scheduler.submit(x, x["x"].shape[0])) for x in inputs]
        await _until(lambda: scheduler.pending == len(rows) + 1)
        model.gate.set()
        results = await asyncio.gather(*tasks)
        await first
        executor.shutdown()
        return model, scheduler, inputs, results

    model, scheduler, inputs, results = asyncio.run(main())
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(out["y"], 3 * x["x"] + 1)
    # Queued behind the held run, 32 rows leave as batches of at most 16 rows.
    assert model.runs[0] == 1 and sum(model.runs[1:]) == 32
    assert all(n <= 16 for n in model.runs) and len(model.runs) < 1 + len(inputs)
    stats = scheduler.stats
    assert stats.execution_count == len(model.runs) and stats.inference_count == 33
    assert stats.queue.count == 11 and stats.compute_infer.count == 11
    assert sorted(stats.batches) == sorted(set(model.runs))


def test_a_request_to_an_idle_scheduler_never_waits_for_the_window():
    async def main():
        model = FakeModel()
        # A one-hour window: waiting for it would hit the 10 s timeout below.
        scheduler, executor = _scheduler(model, delay_us=3_600_000_000)
        async with asyncio.timeout(10):
            for seed in range(3):
                await scheduler.submit(_x(2, seed), 2)
        executor.shutdown()
        return model

    assert asyncio.run(main()).runs == [2, 2, 2]


def test_the_window_sends_a_partial_batch_once_the_oldest_request_has_waited():
    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model, max_rows=64, delay_us=20_000)
        first = await _held_first(scheduler, model)
        queued = [asyncio.create_task(scheduler.submit(_x(1, s), 1)) for s in range(3)]
        await _until(lambda: scheduler.pending == 4)
        model.gate.set()
        await asyncio.gather(first, *queued)
        executor.shutdown()
        return model

    assert asyncio.run(main()).runs == [1, 3]


def test_full_queue_answers_resource_exhausted():
    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model, max_queue=2)
        first = await _held_first(scheduler, model)
        queued = [asyncio.create_task(scheduler.submit(_x(1, s), 1)) for s in range(2)]
        await _until(lambda: scheduler.pending == 3)
        with pytest.raises(ResourceExhaustedError, match="queue full: 2 requests waiting"):
            await scheduler.submit(_x(1, 5), 1)
        model.gate.set()
        await asyncio.gather(first, *queued)
        executor.shutdown()

    asyncio.run(main())


def test_a_queue_full_in_bytes_answers_resource_exhausted_naming_that_limit():
    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model, max_queue_bytes=40)  # 2.5 one-row requests
        first = await _held_first(scheduler, model)
        queued = [asyncio.create_task(scheduler.submit(_x(1, s), 1)) for s in range(2)]
        await _until(lambda: scheduler.pending == 3)
        with pytest.raises(
            ResourceExhaustedError, match="32 input bytes waiting.*--max-queue-bytes"
        ):
            await scheduler.submit(_x(1, 5), 1)
        model.gate.set()
        await asyncio.gather(first, *queued)
        assert scheduler._queued_bytes == 0  # nothing left counted once the queue is empty
        executor.shutdown()

    asyncio.run(main())


def test_a_request_cancelled_in_the_queue_never_runs():
    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model)
        first = await _held_first(scheduler, model)
        doomed = asyncio.create_task(scheduler.submit(_x(5, 1), 5))
        kept = asyncio.create_task(scheduler.submit(_x(2, 2), 2))
        await _until(lambda: scheduler.pending == 3)
        doomed.cancel()  # what grpc does when the client's deadline passes
        await asyncio.gather(doomed, return_exceptions=True)
        assert scheduler.pending == 2
        model.gate.set()
        await asyncio.gather(first, kept)
        executor.shutdown()
        return model, scheduler

    model, scheduler = asyncio.run(main())
    assert model.runs == [1, 2]
    assert scheduler.stats.inference_count == 3


def test_drain_waits_for_queued_and_running_requests_then_refuses_new_ones():
    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model)
        first = await _held_first(scheduler, model)
        queued = asyncio.create_task(scheduler.submit(_x(3, 1), 3))
        await _until(lambda: scheduler.pending == 2)
        drain = asyncio.create_task(scheduler.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()
        with pytest.raises(ModelNotReadyError, match="being unloaded"):
            await scheduler.submit(_x(1, 2), 1)
        model.gate.set()
        await drain
        assert first.done() and queued.done() and scheduler.pending == 0
        executor.shutdown()
        return (await first)["y"].shape, (await queued)["y"].shape

    assert asyncio.run(main()) == ((1, 4), (3, 4))


def test_a_failing_run_fails_the_requests_of_its_batch_and_the_next_batch_runs():
    calls = []

    def flaky(inputs):
        calls.append(inputs["x"].shape[0])
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return {"y": inputs["x"]}

    async def main():
        scheduler, executor = _scheduler(flaky)
        with pytest.raises(RuntimeError, match="model exploded"):
            await scheduler.submit(_x(1, 1), 1)
        out = await scheduler.submit(_x(2, 2), 2)
        executor.shutdown()
        return out

    assert asyncio.run(main())["y"].shape == (2, 4)


def test_batching_off_runs_every_request_alone_with_several_runs_in_flight():
    async def main():
        model = FakeModel()
        scheduler, executor = _scheduler(model, max_rows=0, slots=2)
        outs = await asyncio.gather(*(scheduler.submit(_x(n, n), n) for n in (1, 2, 3)))
        executor.shutdown()
        return model, outs

    model, outs = asyncio.run(main())
    assert sorted(model.runs) == [1, 2, 3] and [o["y"].shape[0] for o in outs] == [1, 2, 3]


def _config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    ("config", "options", "expected"),
    [
        (
            "max_batch_size: 32 dynamic_batching { max_queue_delay_microseconds: 250 }",
            BatchingOptions(),
            BatchPolicy(32, 250_000, DEFAULT_MAX_QUEUE_SIZE, 1),
        ),
        (
            "max_batch_size: 32 dynamic_batching { default_queue_policy { max_queue_size: 7 } }",
            BatchingOptions(max_queue_delay_us=40),
            BatchPolicy(32, 40_000, 7, 1),
        ),
        ("max_batch_size: 32", BatchingOptions(runs=3), BatchPolicy(0, 0, 1024, 3)),
        ("max_batch_size: 32", BatchingOptions(max_queue_delay_us=0), BatchPolicy(32, 0, 1024, 1)),
        (
            "max_batch_size: 32 dynamic_batching {}",
            BatchingOptions(enabled=False, max_queue_size=5, runs=2),
            BatchPolicy(0, 0, 5, 2),
        ),
        ("max_batch_size: 0 dynamic_batching {}", BatchingOptions(), BatchPolicy(0, 0, 1024, 1)),
    ],
)
def test_policy_follows_config_and_flags(config, options, expected):
    assert batch_policy(_config(config), options) == expected


def test_a_request_whose_deadline_passed_in_the_queue_fails_and_never_runs():
    async def late(scheduler):
        set_request_deadline(0.01)  # what the servicer does with the RPC's time_remaining()
        return await scheduler.submit(_x(5, 1), 5)

    async def main():
        model = FakeModel(threading.Event())
        scheduler, executor = _scheduler(model)
        first = await _held_first(scheduler, model)
        doomed = asyncio.create_task(late(scheduler))
        kept = asyncio.create_task(scheduler.submit(_x(2, 2), 2))  # no deadline
        await _until(lambda: scheduler.pending == 3)
        await asyncio.sleep(0.05)  # past the 10 ms deadline, still queued
        model.gate.set()
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            await doomed
        await asyncio.gather(first, kept)
        executor.shutdown()
        return model

    assert asyncio.run(main()).runs == [1, 2]


def test_small_batches_run_on_the_loop_thread_and_larger_ones_on_the_executor():
    async def main():
        model = FakeModel()
        scheduler, executor = _scheduler(model, inline_rows=4)
        small = await scheduler.submit(_x(3, 1), 3)
        large = await scheduler.submit(_x(9, 2), 9)
        executor.shutdown()
        return model, small, large, threading.get_ident(), scheduler

    model, small, large, loop_thread, scheduler = asyncio.run(main())
    assert model.runs == [3, 9]
    assert model.threads[0] == loop_thread and model.threads[1] != loop_thread
    np.testing.assert_array_equal(small["y"], 3 * _x(3, 1)["x"] + 1)
    assert scheduler.stats.execution_count == 2 and scheduler.stats.inference_count == 12


def test_inline_runs_far_over_their_budget_move_that_size_off_the_loop():
    def slow(inputs):
        time.sleep(0.01)  # 10 ms, 200 times the 50 us budget the policy was calibrated for
        return {"y": inputs["x"]}

    async def main():
        scheduler, executor = _scheduler(slow, inline_rows=8)
        limits = []
        for seed in range(3):
            await scheduler.submit(_x(4, seed), 4)
            limits.append(scheduler.inline_rows)
        executor.shutdown()
        return limits

    # One overrun may be a preemption; three in a row are a slow model.
    assert asyncio.run(main()) == [8, 8, 2]


def test_calibration_keeps_the_largest_power_of_two_batch_within_the_budget():
    def model(inputs):  # cheap up to 4 rows, 2 ms beyond: far from any noise
        if inputs["x"].shape[0] > 4:
            time.sleep(0.002)
        return {"y": inputs["x"]}

    def example(rows):
        return {"x": np.zeros((rows, 4), np.float32)}

    times = calibrate_run_times(model, example, max_rows=64, up_to_us=500)
    assert sorted(times) == [1, 2, 4, 8]  # stops at the first size over the budget
    assert rows_within(times, 500) == 4
    assert rows_within(times, 50_000) == 8  # what was timed; nothing beyond it is assumed
    assert rows_within(calibrate_run_times(model, example, max_rows=2, up_to_us=500), 500) == 2
    assert calibrate_run_times(model, example, max_rows=64, up_to_us=0) == {}
    assert rows_within({1: 10_000, 2: 900, 4: 800}, 5) == 0  # a slow first size ends the count


def _queued(rows, deadline_ns=None, done=False, enqueued_ns=100):
    return Queued(rows, enqueued_ns, deadline_ns, done)


def test_the_batch_leaves_at_once_when_idle_off_or_full_else_after_the_oldest_s_window():
    policy = BatchPolicy(max_rows=8, delay_ns=1_000, max_queue=10, slots=1)
    queue = [_queued(2, enqueued_ns=100), _queued(0, enqueued_ns=300)]
    assert next_batch(queue, 2, policy, now_ns=400, idle=False) == NextBatch(wait_ns=700)
    assert next_batch(queue, 2, policy, 1_500, idle=False) == NextBatch(0, 2, (0, 1))  # window over
    assert next_batch(queue, 2, policy, 1_100, idle=False) == NextBatch(0, 2, (0, 1))  # exactly
    assert next_batch(queue, 2, policy, 400, idle=True) == NextBatch(0, 2, (0, 1))
    full = [_queued(5), _queued(3)]
    assert next_batch(full, 8, policy, 400, idle=False) == NextBatch(0, 2, (0, 1))
    off = BatchPolicy(max_rows=0, delay_ns=1_000, max_queue=10, slots=2)
    assert next_batch([_queued(1)], 1, off, 400, idle=False) == NextBatch(0, 1, (0,))
    assert next_batch([], 0, policy, 400, idle=True) == NextBatch()
    # An expired request waits with the others and fails when their batch leaves, unrun.
    expired = [_queued(1, deadline_ns=200), _queued(1)]
    assert next_batch(expired, 2, policy, 400, idle=False) == NextBatch(wait_ns=700)
    assert next_batch(expired, 2, policy, 1_100, idle=False) == NextBatch(0, 2, (1,), (0,))


def test_next_batch_takes_leading_requests_up_to_max_rows_and_drops_expired_and_cancelled():
    now = 1_000
    queue = [
        _queued(3),
        _queued(2, deadline_ns=999),
        _queued(1, done=True),
        _queued(4, deadline_ns=5_000),
        _queued(2),
    ]
    policy = BatchPolicy(max_rows=8, delay_ns=0, max_queue=10, slots=1)
    # 3 rows, an expired one (never runs), a cancelled one, 4 more rows: 7 <= 8; then 2 > 8.
    assert next_batch(queue, 12, policy, now, idle=True) == NextBatch(0, 4, (0, 3), (1,))
    # Batching off: one request per batch; the expired and cancelled ones behind it leave too.
    off = BatchPolicy(max_rows=0, delay_ns=0, max_queue=10, slots=1)
    assert next_batch(queue, 12, off, now, idle=True) == NextBatch(0, 3, (0,), (1,))
    assert next_batch([_queued(9)], 9, policy, now, idle=True) == NextBatch(0, 1, (0,))
    gone = [_queued(1, deadline_ns=5), _queued(1, done=True)]
    assert next_batch(gone, 2, policy, now, idle=True) == NextBatch(0, 2, (), (0,))
    assert next_batch(deque(queue[:1]), 3, policy, now, idle=True) == NextBatch(0, 1, (0,))
