"""The only module that touches msgpack.

Models travel as msgpack maps of their fields (``model_dump()``), decoded back by a
pydantic ``TypeAdapter`` — for events, one per aggregate kind over a discriminated union.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, TypeAdapter

T = TypeVar("T")

__all__ = ["pack", "unpack", "encode", "decode"]


def pack(obj: Any) -> bytes:
    """Plain data to bytes: ``pack({"a": 1})``."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(model: BaseModel) -> bytes:
    """A pydantic model to bytes: ``encode(VolumeCreated(...))``."""
    return pack(model.model_dump())


def decode(adapter: TypeAdapter[T], data: bytes) -> T:
    """Bytes back to a model: ``decode(VOLUME_EVENTS, data)``."""
    return adapter.validate_python(unpack(data))
