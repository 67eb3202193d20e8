"""The objects read model in Redis, for the resource API's lists.

Keys (under ``vp:``, so ``make rebuild`` drops and replays them):
  vp:obj:<kind>:<namespace>/<name>   msgpack of the object with its resourceVersion
  vp:objs:<kind>                      set of that kind's object keys
"""

from __future__ import annotations

from typing import Any

from volplane import codec
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op

from volplane.resources.kinds import RESOURCE_EVENTS, Kind, Ref, ref_of_subject
from volplane.resources.store import object_of

__all__ = ["ObjectsProjection", "object_key", "index_key"]


def object_key(ref: Ref) -> str:
    return f"{PREFIX}obj:{ref.kind.token}:{ref.key}"


def index_key(kind: Kind) -> str:
    return f"{PREFIX}objs:{kind.token}"


class ObjectsProjection:
    name = "objects"
    filter_subject = RESOURCE_EVENTS
    totals_key = None

    def key_for(self, record: Record) -> str | None:
        return object_key(ref_of_subject(record.subject))

    def evolve(self, state: dict[str, Any] | None, record: Record) -> dict[str, Any] | None:
        kind, obj = object_of(record)
        return None if kind == "ObjectDeleted" else obj

    def dump(self, state: dict[str, Any]) -> bytes:
        return codec.pack(state)

    def load(self, raw: bytes) -> dict[str, Any]:
        return codec.unpack(raw)

    def ops(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Op]:
        index = f"{PREFIX}objs:{key.split(':')[2]}"
        if new is not None and old is None:
            return [("SADD", index, key)]
        if new is None and old is not None:
            return [("SREM", index, key)]
        return []

    def restore(self, totals: dict[bytes, bytes]) -> None:
        pass

    def observe(self, old: Any, new: Any) -> None:
        pass
