"""Orderly shutdown: signals caught from the first moment, and a gate that drains requests.

A SIGTERM that arrives while Python is still importing gRPC and ONNX Runtime (half a second on a
busy machine) would find the default action in place and kill the process with 143 (-15)
before it could drain. :func:`catch_early_signals` is called by ``bnmodel serve`` before those
imports; :func:`early_signals` hands what it caught to the event loop's handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

__all__ = ["SHUTDOWN_SIGNALS", "catch_early_signals", "early_signals", "DrainGate"]

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_caught: list[int] = []


def catch_early_signals() -> None:
    """Record SIGTERM/SIGINT instead of dying, until the event loop installs its handlers."""
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, lambda signum, frame: _caught.append(signum))


def early_signals() -> list[int]:
    """Signals recorded by :func:`catch_early_signals` so far, oldest first, forgotten once
    taken: a process that forks afterwards must not hand them to its children too."""
    taken = list(_caught)
    _caught.clear()
    return taken


class DrainGate:
    """Counts the inference RPCs in flight; once draining, they are refused.

    The RPC wrapper (serve/servicer.py) calls :meth:`admit` first and :meth:`done` last. Health
    and reflection are not counted: probes must keep working while the server drains.

    The drain, in order: (1) a settle window in which RPCs are still served, because under
    load many requests sent before the signal are still queued inside gRPC, not yet handed to
    Python; (2) new RPCs refused with UNAVAILABLE while the ones running finish; (3) a quiet
    period: the server only stops once nothing has arrived for a moment, so gRPC's shutdown
    never cancels a request that it had already received.
    """

    REFUSAL = "the server is shutting down and takes no new requests; retry elsewhere"
    # A refused gRPC call is answered once gRPC has told the clients to stop using their
    # connections (:meth:`release_refusals`), or after this many seconds: a client that sends
    # its next call the moment it is refused would otherwise race the final shutdown, which
    # cancels calls it has received but not handed to Python (CANCELLED: lost, not refused).
    REFUSAL_HOLD_S = 1.0

    def __init__(
        self,
        settle: float = 0.5,  # s: (1) above
        quiet: float = 0.05,  # s: (3) above
        limit: int = 0,  # RPCs in flight at most (--max-concurrent-rpcs); 0: no limit
    ) -> None:
        self.limit = limit
        self.settle = settle
        self.quiet = quiet
        self.draining = False
        self.in_flight = 0
        self.refused = 0  # RPCs answered UNAVAILABLE while draining
        self._last_arrival = 0.0  # time.monotonic() of the latest RPC handed to us
        self._idle = asyncio.Event()
        self._idle.set()
        self._released = asyncio.Event()

    def admit(self) -> str:
        """An RPC arrives: why it is refused (while draining: UNAVAILABLE, else at the limit:
        RESOURCE_EXHAUSTED), or "" and it is in flight until :meth:`done`."""
        if self.draining:  # answered at once: no reason to wait for it in the quiet period
            self.refused += 1
            return self.REFUSAL
        if self.limit and self.in_flight >= self.limit:
            return (
                f"this server process has {self.in_flight} requests in flight, at most "
                f"{self.limit} (--max-concurrent-rpcs); retry later"
            )
        self._last_arrival = time.monotonic()
        self.in_flight += 1
        return ""

    async def hold_refusal(self) -> None:
        """Wait before answering a refusal: see :attr:`REFUSAL_HOLD_S`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), self.REFUSAL_HOLD_S)

    def release_refusals(self) -> None:
        self._released.set()

    def done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.draining:  # only drain() waits for it
            self._idle.set()

    async def drain(self, timeout: float | None) -> bool:
        """Settle, refuse new RPCs, wait up to ``timeout`` s in all; True if every one ended."""
        clock = time.monotonic
        deadline = clock() + (timeout if timeout is not None else float("inf"))
        await asyncio.sleep(max(0.0, min(self.settle, deadline - clock())))
        self.draining = True
        if self.in_flight:
            self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - clock()))
        except TimeoutError:
            return self.in_flight == 0
        while clock() < min(deadline, self._last_arrival + self.quiet):
            await asyncio.sleep(self.quiet)
        return True
