"""The base of every event and state object.

Events are frozen pydantic models named in the past tense, each with a literal
``type`` field so that one ``TypeAdapter`` over a discriminated union decodes a whole
aggregate kind. ``at`` is the wall-clock time the event was decided, in nanoseconds;
projections derive their times from it, never from the clock, so that a replay
rebuilds byte-identical state.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Event", "Frozen", "now_ns"]


def now_ns() -> int:
    return time.time_ns()


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    at: int = Field(default_factory=now_ns)
