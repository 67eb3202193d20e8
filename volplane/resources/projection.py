"""The objects read model in Redis, for the resource API's lists.

Keys (under ``vp:``, so ``make rebuild`` drops and replays them):
  vp:obj:<kind>:<namespace>/<name>   msgpack of the object with its resourceVersion
  vp:objs:<kind>                      set of that kind's object keys

    objects = ObjectsProjection()
    runner = ProjectionRunner(redis, store, objects)
    items, position = await objects.list_of(PVC, lambda meta: meta.get("namespace") == "default")
    objects.note(ref_of(obj), obj)      # an object this process just wrote, listed at once
    await objects.quarantined()         # the events no projection could use (volplane.quarantine)

An event that is no valid object of its subject — a kind that does not exist
(``vp.ev.res.persistentvolume._.x``), bytes that do not decode — is quarantined by the
runner under ``vp:quarantine:objects`` and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from volplane import codec
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op, ProjectionBase
from volplane.quarantine import Quarantined
from volplane.resources.kinds import RESOURCE_EVENTS, Kind, Ref, ref_of_subject
from volplane.resources.store import object_of, version_of

__all__ = ["ObjectsProjection", "index_key", "object_key"]

Object = dict[str, Any]


def object_key(ref: Ref) -> str:
    return f"{PREFIX}obj:{ref.kind.token}:{ref.key}"


def index_key(kind: Kind) -> str:
    return f"{PREFIX}objs:{kind.token}"


class ObjectsProjection(ProjectionBase[Object]):
    name = "objects"
    filter_subject = RESOURCE_EVENTS

    def key_for(self, record: Record) -> str | None:
        return object_key(ref_of_subject(record.subject))

    def evolve(self, state: Object | None, record: Record) -> Object | None:
        kind, obj = object_of(record)
        return None if kind == "ObjectDeleted" else obj

    def skipped(self, state: Object, record: Record) -> Object:
        # An object's version is its resourceVersion: a quarantined event on its subject
        # moves it there, as the informer and ObjectStore.read do, so all three agree.
        return {**state, "metadata": {**state["metadata"], "resourceVersion": str(record.seq)}}

    def dump(self, state: Object) -> bytes:
        return codec.pack(state)

    def load(self, raw: bytes) -> Object:
        obj: Object = codec.unpack(raw)
        return obj

    def ops(self, key: str, old: Object | None, new: Object | None) -> list[Op]:
        index = f"{PREFIX}objs:{key.split(':')[2]}"
        if new is not None and old is None:
            return [("SADD", index, key)]
        if new is None and old is not None:
            return [("SREM", index, key)]
        return []

    # -- queries --------------------------------------------------------------

    async def list_of(self, kind: Kind, where: Callable[[dict[str, Any]], bool]) -> tuple[list[Object], int]:
        """The objects of ``kind`` whose metadata ``where`` holds for, by namespace and name,
        and the log position they are as of (every write of this process included)."""
        await self.runner.settled()
        position = self.runner.position
        objects = await self.runner.states(await self.runner.members(index_key(kind)))
        items = [o for o in objects if o is not None and where(o["metadata"])]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, position

    async def quarantined(self) -> list[Quarantined]:
        """Every event a projection in this Redis quarantined (``volplane.quarantine``), by
        reader and sequence: the events no read model could decode or apply."""
        return await self.runner.quarantined()

    def note(self, ref: Ref, obj: Object, *, deleted: bool = False) -> None:
        """An object this process just wrote (or deleted), so that its next list shows it."""
        self.runner.note(object_key(ref), None if deleted else obj, version_of(obj))
