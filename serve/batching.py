"""Queue orchestration of model runs: dynamic batching, a bounded queue, drain before unload.

Every request of a model version goes through its :class:`Scheduler`: queued (bounded), then run
alone or merged with the requests queued beside it (serve/batch_merge.py). All queue state lives
on the event loop; only the model run may go to a thread. A thread hand-off costs about 80 us of
CPU, five times this MLP's batch-1 run, so batches that :func:`calibrate_run_times` timed within
``max_inline_us`` at load run on the loop, and an idle scheduler runs a small request inside its
own handler, which then never suspends: resuming a suspended grpc.aio handler costs about 100 us
of CPU (measured: 628 -> 518 us of server CPU per batch-1 request).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .batch_merge import merge_inputs, split_outputs
from .errors import DeadlineExceededError, ModelNotReadyError, ResourceExhaustedError
from .proto import model_config_pb2
from .settings import DEFAULT_MAX_INLINE_US, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_SIZE
from .statistics import VersionStats

__all__ = [
    "BatchingOptions",
    "BatchPolicy",
    "batch_policy",
    "Queued",
    "NextBatch",
    "next_batch",
    "calibrate_run_times",
    "rows_within",
    "with_inline_runs",
    "set_request_deadline",
    "set_request_timeout",
    "Scheduler",
]

log = logging.getLogger("bnmodel.serve")

_INLINE_OVERRUN = 4  # inline runs this many times over budget ...
_INLINE_OVERRUNS_IN_A_ROW = 3  # ... this many times in a row halve the inline limit

# perf_counter_ns() after which the current request's client has given up (None: no deadline).
# Set per RPC by the servicer (each gRPC call is its own asyncio task, so its own context).
_deadline_ns: ContextVar[int | None] = ContextVar("bnmodel_request_deadline", default=None)

Run = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchingOptions:
    """Server-wide batching choices (command line); None/0 defer to each model's config.pbtxt."""

    enabled: bool = True  # False: every request runs alone (--no-batching)
    max_queue_delay_us: int | None = None  # overrides dynamic_batching's delay, turns it on
    max_queue_size: int = 0  # 0: the config's default_queue_policy, else DEFAULT_MAX_QUEUE_SIZE
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES  # input bytes queued per version at most
    runs: int = 1  # model runs in flight per version when batching is off
    max_inline_us: int = DEFAULT_MAX_INLINE_US  # 0: every run on the executor


@dataclass(frozen=True)
class BatchPolicy:
    """How one model version's requests are scheduled."""

    max_rows: int  # rows per run; 0: no batching, each request runs alone
    delay_ns: int  # longest wait of a queued request for a fuller batch
    max_queue: int  # requests queued at most (running ones excluded)
    slots: int  # model runs in flight at most
    inline_rows: int = 0  # batches of at most this many rows run on the event loop
    inline_budget_ns: int = 0  # what those runs were calibrated against
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES  # input bytes queued at most


def batch_policy(config: model_config_pb2.ModelConfig, options: BatchingOptions) -> BatchPolicy:
    """Resolve the policy of a model from its config.pbtxt and the server's options.

    Batching is on when the model has a batch axis, the server allows it, and either config.pbtxt
    has a ``dynamic_batching`` block or ``--max-queue-delay-us`` is given (Triton's rule).
    """
    dynamic = config.HasField("dynamic_batching")
    queue_size = options.max_queue_size or (
        config.dynamic_batching.default_queue_policy.max_queue_size if dynamic else 0
    )
    enabled = (
        options.enabled
        and config.max_batch_size > 0
        and (dynamic or options.max_queue_delay_us is not None)
    )
    alone = BatchPolicy(
        0,
        0,
        queue_size or DEFAULT_MAX_QUEUE_SIZE,
        max(options.runs, 1),
        max_queue_bytes=options.max_queue_bytes,
    )
    if not enabled:
        return alone
    delay_us = options.max_queue_delay_us
    if delay_us is None:
        delay_us = config.dynamic_batching.max_queue_delay_microseconds
    # One run at a time: requests pile up behind it and leave as one batch.
    return dataclasses.replace(
        alone, max_rows=config.max_batch_size, delay_ns=delay_us * 1000, slots=1
    )


# -- the scheduler's decision, a pure function of what it knows --------------------------------


class Queued(NamedTuple):
    """What the decision needs to know of one queued request."""

    rows: int
    enqueued_ns: int
    deadline_ns: int | None  # perf_counter_ns() after which its client has given up
    done: bool  # answered already (cancelled): it leaves without running


class NextBatch(NamedTuple):
    """What leaves the queue now; ``wait_ns`` > 0: nothing yet, ask again that much later."""

    wait_ns: int = 0
    taken: int = 0  # leading requests that leave the queue
    run: tuple[int, ...] = ()  # indices of those that run together, in order
    expired: tuple[int, ...] = ()  # indices of those whose deadline passed: they fail unrun


def next_batch(
    queue: Sequence[Queued], queued_rows: int, policy: BatchPolicy, now_ns: int, idle: bool
) -> NextBatch:
    """The next batch of a queue (oldest first) holding ``queued_rows`` rows.

    It leaves at once when the request found the scheduler idle (a lone request never waits for
    a window nobody else will fill), when batching is off, or when the queue fills a batch, else
    once the oldest request has waited the policy's delay. The first request always fits (one
    over ``max_rows`` was refused by validation).
    """
    if not queue:
        return NextBatch()
    max_rows = policy.max_rows
    if not (idle or max_rows == 0 or queued_rows >= max_rows):
        wait_ns = queue[0].enqueued_ns + policy.delay_ns - now_ns
        if wait_ns > 0:
            return NextBatch(wait_ns)
    run: list[int] = []
    expired: list[int] = []
    rows = taken = 0
    for index, item in enumerate(queue):
        if item.deadline_ns is not None and item.deadline_ns <= now_ns:
            expired.append(index)
        elif not item.done:
            if run and (max_rows == 0 or rows + item.rows > max_rows):
                break
            run.append(index)
            rows += item.rows
        taken = index + 1
    return NextBatch(0, taken, tuple(run), tuple(expired))


def set_request_deadline(seconds_left: float | None) -> None:
    """Record the current request's deadline for the scheduler: gRPC's
    ``context.time_remaining()``, or a ``timeout`` parameter (HTTP and gRPC alike); the
    earlier one wins when both are given."""
    if seconds_left is None:
        return
    deadline = time.perf_counter_ns() + int(seconds_left * 1e9)
    current = _deadline_ns.get()
    _deadline_ns.set(deadline if current is None else min(current, deadline))


def set_request_timeout(parameters) -> None:
    """Triton's ``timeout`` request parameter (microseconds; 0 or absent: none) as the
    request's deadline. ``parameters``: the request's, checked already (an int >= 0)."""
    for param in parameters:
        if param.name == "timeout" and param.value:
            set_request_deadline(param.value / 1e6)


def calibrate_run_times(
    run: Run,
    example: Callable[[int], Mapping[str, np.ndarray]],
    max_rows: int,
    up_to_us: int,
) -> dict[int, int]:
    """Median run time (ns) of each power-of-two batch (<= ``max_rows``) of ``example(rows)``,
    stopping after the first one over ``up_to_us``. Blocking: it runs the model."""
    times: dict[int, int] = {}
    rows = 1
    while up_to_us > 0 and rows <= max(max_rows, 1):
        inputs = example(rows)
        run(inputs)  # the first run of a shape allocates; do not time it
        samples = []
        for _ in range(5):
            start = time.perf_counter_ns()
            run(inputs)
            samples.append(time.perf_counter_ns() - start)
        times[rows] = int(statistics.median(samples))
        if times[rows] > up_to_us * 1000:
            break
        rows *= 2
    return times


def rows_within(times: Mapping[int, int], budget_us: int) -> int:
    """The largest batch of ``times`` (from :func:`calibrate_run_times`) that ran within
    ``budget_us``, counting only up to the first one that did not; 0: none."""
    best = 0
    for rows, ns in sorted(times.items()):
        if ns > budget_us * 1000:
            break
        best = rows
    return best


def with_inline_runs(
    policy: BatchPolicy,
    run: Run,
    example: Callable[[int], Mapping[str, np.ndarray]] | None,
    max_rows: int,
    budget_us: int,
) -> BatchPolicy:
    """``policy`` with the batches that may run on the loop (none when ``example`` is None:
    a model whose cost cannot be measured ahead, such as variable non-batch dimensions)."""
    if example is None or budget_us <= 0:
        return policy
    times = calibrate_run_times(run, example, max_rows, budget_us)
    return dataclasses.replace(
        policy, inline_rows=rows_within(times, budget_us), inline_budget_ns=budget_us * 1000
    )


@dataclass(eq=False, slots=True)
class _Pending:
    """A queued request; what :func:`next_batch` reads of it are :class:`Queued`'s fields."""

    inputs: Mapping[str, np.ndarray]
    rows: int
    nbytes: int
    future: asyncio.Future
    enqueued_ns: int
    deadline_ns: int | None = dataclasses.field(default_factory=_deadline_ns.get)

    @property
    def done(self) -> bool:
        return self.future.done()


def _run_batch(run: Run, inputs: list[Mapping[str, np.ndarray]], batched: bool = True):
    """On a worker thread: merge, run, split; returns (per-request outputs, rows, stage ns).

    A model without a batch axis runs its one request as sent: nothing to merge or split."""
    if not batched:
        t0 = time.perf_counter_ns()
        outputs = run(inputs[0])
        return [outputs], 1, 0, time.perf_counter_ns() - t0, 0
    t0 = time.perf_counter_ns()
    merged, offsets = merge_inputs(inputs)
    t1 = time.perf_counter_ns()
    outputs = run(merged)
    t2 = time.perf_counter_ns()
    parts = split_outputs(outputs, offsets)
    t3 = time.perf_counter_ns()
    return parts, offsets[-1], t1 - t0, t2 - t1, t3 - t2


class Scheduler:
    """The queue in front of one model version; all methods run on the event loop."""

    def __init__(
        self,
        run: Run,
        executor: Executor,
        policy: BatchPolicy,
        stats: VersionStats,
        batched: bool = True,  # False: the model has no batch axis; each request runs alone
    ) -> None:
        self.run = run
        self.batched = batched
        self.executor = executor
        self.policy = policy
        self.stats = stats
        self.inline_rows = policy.inline_rows  # lowered if inline runs overrun their budget
        self._overruns = 0  # inline runs over budget in a row
        self._inline_limit_ns = _INLINE_OVERRUN * policy.inline_budget_ns
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._queued_bytes = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return len(self._queue) + self._running

    async def submit(self, inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Queue one validated request of ``rows`` rows; its outputs once its batch has run."""
        if self._closed:
            raise ModelNotReadyError("model is being unloaded; retry once it is loaded again")
        if len(self._queue) >= self.policy.max_queue:
            raise ResourceExhaustedError(
                f"queue full: {len(self._queue)} requests waiting (at most "
                f"{self.policy.max_queue}, --max-queue-size); retry later"
            )
        nbytes = sum(array.nbytes for array in inputs.values())
        if self._queue and self._queued_bytes + nbytes > self.policy.max_queue_bytes:
            raise ResourceExhaustedError(
                f"queue full: {self._queued_bytes:,} input bytes waiting, and this request's "
                f"{nbytes:,} would pass the limit of {self.policy.max_queue_bytes:,} "
                "(--max-queue-bytes); retry later"
            )
        deadline = _deadline_ns.get()
        if deadline is not None and deadline <= time.perf_counter_ns():
            raise DeadlineExceededError("the request's deadline passed before it could run")
        idle = self._running == 0 and not self._queue
        if idle and rows <= self.inline_rows:
            return self._run_now(inputs, rows)
        loop = self._loop = self._loop or asyncio.get_running_loop()
        item = _Pending(inputs, rows, nbytes, loop.create_future(), time.perf_counter_ns())
        self._queue.append(item)
        self._queued_rows += rows
        self._queued_bytes += nbytes
        self._schedule(idle)
        try:
            return await item.future
        except asyncio.CancelledError:
            self._forget(item)
            raise

    def _run_now(self, inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """The fast path: no queue, no future, and the handler never suspends. Synchronous, so
        nothing else on the loop can see the scheduler busy meanwhile."""
        self.stats.record_queue(0)
        parts, _, input_ns, infer_ns, output_ns = _run_batch(self.run, [inputs], self.batched)
        self._after_inline(infer_ns, rows)
        self.stats.record_execution(rows, 1, input_ns, infer_ns, output_ns)
        return parts[0]

    def _after_inline(self, infer_ns: int, rows: int) -> None:
        """Several inline runs in a row far over budget: this size leaves the loop for good.

        One overrun proves nothing (the loop thread waited for the GIL, or was preempted);
        a model that is really slower than calibrated overruns every time.
        """
        if infer_ns <= self._inline_limit_ns:
            self._overruns = 0
            return
        self._overruns += 1
        if self._overruns < _INLINE_OVERRUNS_IN_A_ROW:
            return
        self._overruns = 0
        self.inline_rows = min(self.inline_rows, rows // 2)
        log.info(
            "inline runs of %d rows took %.0f us, over %d x the %d us budget; batches "
            "above %d rows now run on a thread",
            rows,
            infer_ns / 1000,
            _INLINE_OVERRUN,
            self.policy.inline_budget_ns // 1000,
            self.inline_rows,
        )

    def _forget(self, item: _Pending) -> None:
        """A cancelled request leaves the queue (no-op when its batch already left)."""
        with contextlib.suppress(ValueError):
            self._queue.remove(item)
            self._queued_rows -= item.rows
            self._queued_bytes -= item.nbytes
            self._check_drained()

    def _schedule(self, idle: bool = False) -> None:
        """Start batches while a run slot is free and one is due (:func:`next_batch`), else arm
        the timer; expired requests fail with DEADLINE_EXCEEDED, cancelled ones just leave."""
        queue = self._queue
        while queue and self._running < self.policy.slots:
            now = time.perf_counter_ns()
            decision = next_batch(queue, self._queued_rows, self.policy, now, idle)
            if decision.wait_ns > 0:
                if self._timer is None:
                    self._timer = self._loop.call_later(decision.wait_ns / 1e9, self._on_timer)
                return
            items = [queue.popleft() for _ in range(decision.taken)]
            for item in items:
                self._queued_rows -= item.rows
                self._queued_bytes -= item.nbytes
            for index in decision.expired:
                _expire(items[index], now)
            if decision.run:
                self._dispatch([items[index] for index in decision.run], now)
        self._check_drained()

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _dispatch(self, batch: list[_Pending], now: int) -> None:
        rows = 0
        for item in batch:
            self.stats.record_queue(now - item.enqueued_ns)
            rows += item.rows
        inputs = [item.inputs for item in batch]
        if rows <= self.inline_rows:  # calibrated short: on the loop, no thread hand-off
            try:
                result = _run_batch(self.run, inputs, self.batched)
            except Exception as exc:  # noqa: BLE001 -- the model's error goes to its requests
                result = exc
            else:
                self._after_inline(result[3], rows)
            self._deliver(batch, result)
            return
        self._running += 1
        future = self.executor.submit(_run_batch, self.run, inputs, self.batched)
        loop = self._loop
        future.add_done_callback(lambda f: _call_soon(loop, self._finish, batch, f))

    def _finish(self, batch: list[_Pending], done: Future) -> None:
        """Back on the loop from a worker thread: deliver, then start the next batch."""
        self._running -= 1
        if done.cancelled():  # executor shut down under us
            for item in batch:
                item.future.cancel()
        else:
            error = done.exception()
            self._deliver(batch, error if error is not None else done.result())
        self._schedule()

    def _deliver(self, batch: list[_Pending], result) -> None:
        """Hand every request of ``batch`` its rows, or the run's exception."""
        if isinstance(result, BaseException):
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(result)
            return
        parts, rows, input_ns, infer_ns, output_ns = result
        self.stats.record_execution(rows, len(batch), input_ns, infer_ns, output_ns)
        for item, outputs in zip(batch, parts, strict=True):
            if not item.future.done():
                item.future.set_result(outputs)

    async def drain(self) -> None:
        """Refuse new requests and wait until every queued and running one has finished."""
        self._closed = True
        if self.pending:
            self._drained = self._drained or asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def _check_drained(self) -> None:
        if self._drained is not None and not self.pending and not self._drained.done():
            self._drained.set_result(None)


def _expire(item: _Pending, now_ns: int) -> None:
    if not item.future.done():
        late_ms = (now_ns - item.deadline_ns) / 1e6
        item.future.set_exception(
            DeadlineExceededError(
                f"the request's deadline passed {late_ms:.1f} ms before its batch could run; "
                "it was not run"
            )
        )


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    """From a worker thread; a loop already closed (server stopped) has nobody left to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
