"""The base of every event and state object, and how an event's stored shape evolves.

Events are frozen pydantic models named in the past tense, each with a literal
``type`` field so that one ``TypeAdapter`` over a discriminated union decodes a whole
aggregate kind. ``at`` is the wall-clock time the event was decided, in nanoseconds;
projections derive their times from it, never from the clock, so that a replay
rebuilds byte-identical state.

Schema versions. Every event class has a ``schema_version`` (1 unless it says otherwise).
An event of version 2 or later is stored with its version under ``"v"``; version 1 is
stored without it, so the logs written before versions existed are version 1 as they
are. When a stored shape changes, the class bumps its version and maps each older shape
to the next in ``upcasters``::

    class VolumeResized(Event):
        schema_version: ClassVar[int] = 2
        upcasters: ClassVar[Mapping[int, Upcaster]] = {1: renamed("size", "capacity_bytes")}

``volplane.codec.decode`` is the one place stored bytes become events: it decodes with
``STORED`` in the validation context, and only then does an event bring an older shape
up to its own version. Building an event in code, or re-validating one's ``model_dump()``,
takes the current shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationInfo, model_serializer, model_validator

__all__ = ["STORED", "VERSION_KEY", "Event", "Frozen", "Upcaster", "now_ns", "renamed"]

# Where a stored event keeps its schema version; absent means 1.
VERSION_KEY = "v"
# The validation-context flag that says "these fields come from the log" (set by codec.decode).
STORED = "stored"

# One step of an event's history: the fields of version n in, those of version n + 1 out.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def renamed(old: str, new: str) -> Upcaster:
    """The upcaster of a field renamed from ``old`` to ``new`` (order kept)."""
    return lambda fields: {new if k == old else k: v for k, v in fields.items()}


def now_ns() -> int:
    return time.time_ns()


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    schema_version: ClassVar[int] = 1
    # from version → the function that lifts that version's fields to the next one.
    upcasters: ClassVar[Mapping[int, Upcaster]] = {}

    at: int = Field(default_factory=now_ns)

    @model_validator(mode="before")
    @classmethod
    def _upcast(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        stored = bool(info.context and info.context.get(STORED))
        # Built in code, an event has the current shape; read from the log, a missing version is 1.
        version = data.get(VERSION_KEY, 1 if stored else cls.schema_version)
        if not isinstance(version, int) or not 1 <= version <= cls.schema_version:
            raise ValueError(f"{cls.__name__} has schema versions 1 to {cls.schema_version}, not {version!r}")
        if version != cls.schema_version and not stored:
            raise ValueError(f"{cls.__name__} version {version} must be decoded by volplane.codec.decode, which upcasts it")
        fields = {k: v for k, v in data.items() if k != VERSION_KEY}
        for step in range(version, cls.schema_version):
            if step not in cls.upcasters:
                raise ValueError(f"{cls.__name__} has no upcaster from version {step}")
            fields = cls.upcasters[step](fields)
        return fields

    @model_serializer(mode="wrap")
    def _versioned(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.schema_version != 1:
            data[VERSION_KEY] = self.schema_version
        return data
