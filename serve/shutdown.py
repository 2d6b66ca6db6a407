"""Orderly shutdown: signals caught from the first moment, and a gate that drains requests.

A SIGTERM that arrives while Python is still importing gRPC and ONNX Runtime (half a second on a
busy machine) used to find the default action in place and killed the process with 143 (-15)
before it could drain. :func:`catch_early_signals` is called by ``bnmodel serve`` before those
imports; :func:`early_signals` hands what it caught to the event loop's handlers.

:class:`DrainGate` counts the unary RPCs in flight. On shutdown the listener stays open while
it drains: health answers NOT_SERVING, new work is refused with UNAVAILABLE (a client retries
elsewhere), and the requests already accepted finish before the server stops.
"""

from __future__ import annotations

import asyncio
import signal

import grpc

__all__ = ["SHUTDOWN_SIGNALS", "catch_early_signals", "early_signals", "DrainGate"]

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_caught: list[int] = []


def _record(signum: int, frame) -> None:
    _caught.append(signum)


def catch_early_signals() -> None:
    """Record SIGTERM/SIGINT instead of dying, until the event loop installs its handlers."""
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, _record)


def early_signals() -> list[int]:
    """Signals recorded by :func:`catch_early_signals` so far, oldest first."""
    return list(_caught)


class DrainGate(grpc.aio.ServerInterceptor):
    """Counts unary RPCs in flight; once draining, refuses new ones (``exempt`` services pass).

    The drain, in order: (1) a settle window in which RPCs are still served, because under
    load many requests sent before the signal are still queued inside gRPC, not yet handed to
    Python; (2) new RPCs refused with UNAVAILABLE while the ones running finish; (3) a quiet
    period: the server only stops once nothing has arrived for a moment, so gRPC's shutdown
    never cancels a request that it had already received.
    """

    def __init__(
        self,
        exempt: tuple[str, ...] = ("grpc.health.v1.Health",),
        settle: float = 0.5,  # s: (1) above
        quiet: float = 0.05,  # s: (3) above
    ) -> None:
        self.exempt = exempt
        self.settle = settle
        self.quiet = quiet
        self.draining = False
        self.in_flight = 0
        self.refused = 0  # RPCs answered UNAVAILABLE while draining
        self._last_arrival = 0.0  # loop time of the latest RPC handed to us
        self._wrapped: dict[str, tuple[object, grpc.RpcMethodHandler]] = {}  # method -> (h, gated)
        self._idle = asyncio.Event()
        self._idle.set()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").split("/")[0]
        if (
            handler is None
            or handler.request_streaming
            or handler.response_streaming
            or service in self.exempt
        ):
            return handler
        cached = self._wrapped.get(handler_call_details.method)
        if cached is None or cached[0] is not handler:  # built once per method, not per RPC
            gated = grpc.unary_unary_rpc_method_handler(
                self._gated(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            cached = self._wrapped[handler_call_details.method] = (handler, gated)
        return cached[1]

    def _gated(self, behaviour):
        async def gated(request, context: grpc.aio.ServicerContext):
            self._last_arrival = asyncio.get_running_loop().time()
            if self.draining:
                self.refused += 1
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down and takes no new requests; retry elsewhere",
                )
            self.in_flight += 1
            self._idle.clear()
            try:
                return await behaviour(request, context)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

        return gated

    async def drain(self, timeout: float | None) -> bool:
        """Settle, refuse new RPCs, wait up to ``timeout`` s in all; True if every one ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else float("inf"))
        await asyncio.sleep(max(0.0, min(self.settle, deadline - loop.time())))
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return self.in_flight == 0
        while loop.time() < min(deadline, self._last_arrival + self.quiet):
            await asyncio.sleep(self.quiet)
        return True
