"""The only module that touches msgpack.

Models travel as msgpack maps of their fields (``model_dump()``), decoded back by a
pydantic ``TypeAdapter`` — for events, one per aggregate kind over a discriminated union.
``decode`` is the one way stored events come back: it tells them they come from the log,
so that one written in an older schema version is upcast to its class's current shape
(``volplane.events``).

    event = decode(VOLUME_EVENTS, record.data)
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, TypeAdapter

from volplane.events import STORED

T = TypeVar("T")

__all__ = ["decode", "encode", "pack", "unpack"]


def pack(obj: Any) -> bytes:
    """Plain data to bytes: ``pack({"a": 1})``."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(model: BaseModel) -> bytes:
    """A pydantic model to bytes: ``encode(VolumeCreated(...))``; an event keeps its schema version."""
    return pack(model.model_dump())


def decode(adapter: TypeAdapter[T], data: bytes) -> T:
    """Stored bytes back to a model, upcast to the current schema: ``decode(VOLUME_EVENTS, data)``."""
    return adapter.validate_python(unpack(data), context={STORED: True})
