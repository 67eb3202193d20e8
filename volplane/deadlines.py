"""How long the caller of the command being handled still waits for its answer.

A command crosses the bus with the time its sender will wait (``Bus.request`` puts it in a
header); the serving side sets it here for the handler's task, and whatever the handler
retries (an append whose acknowledgement was lost, volplane.eventstore) keeps retrying
only while an answer can still reach the caller — and then answers Unavailable in time,
instead of after the caller has given up (a CO would see DEADLINE_EXCEEDED, no reason).

    with within(12.0):              # bus._handle, from the request's header
        ...
        left = time_left()          # 11.9 ... None outside a command (a control loop)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["HEADER", "time_left", "within"]

# The request header that carries the sender's remaining wait, in seconds.
HEADER = "Volplane-Timeout"

_DEADLINE: ContextVar[float | None] = ContextVar("volplane_deadline", default=None)


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Run the block (and the tasks it starts) under a deadline ``seconds`` from now."""
    if seconds is None:
        yield
        return
    token = _DEADLINE.set(asyncio.get_running_loop().time() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds until the current command's caller gives up, or None without one."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time()


def parse(value: str | None) -> float | None:
    """The header's value as seconds, or None when absent or not a positive number."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < 86_400 else None
