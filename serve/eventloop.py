"""Which asyncio event loop runs the server: uvloop when it is installed, else the standard one.

The loop's own work per request (epoll, handles, the wake-up socket of grpc.aio's poller) is a
visible share of a small request's cost, and uvloop (libuv, in C) does it for less: on the 2-core
benchmark machine it raised batch-1 throughput by 5-10% (benchmarks/README.md). It is a
dependency wherever it installs (not on Windows); ``--loop asyncio`` opts out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EVENT_LOOPS", "EventLoopError", "resolve_loop", "run_on_loop"]

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


class EventLoopError(ValueError):
    """An event loop that was asked for by name but cannot be used here."""


def resolve_loop(choice: str) -> str:
    """ "auto" -> "uvloop" when installed, else "asyncio"; an explicit name is checked."""
    if choice not in EVENT_LOOPS:
        raise EventLoopError(f"--loop must be one of {', '.join(EVENT_LOOPS)}, got {choice}")
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise EventLoopError("--loop uvloop: uvloop is not installed (pip install uvloop)")
    if choice == "auto":
        return "uvloop" if installed else "asyncio"
    return choice


def run_on_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """``asyncio.run(main)`` on the resolved ``loop`` ("asyncio" or "uvloop")."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    import asyncio  # here, not at the top: `bnmodel --help` imports this module

    return asyncio.run(main)
