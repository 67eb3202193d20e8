"""Writes of the snapshot loops, seen by their own informer at once.

    w = Writes(informer, objects)
    vs = await w.update(vs, {"status": {...}}, "bind")        # None if that write deleted it
    vs = await w.finalizers(vs, add=[FINALIZER], remove=[])  # unchanged object when nothing to do
    await w.error(vs, "SnapshotContentMissing", "VolumeSnapshotContent is missing")
    await w.sync(VS, "default/snap", controller.sync_snapshot)  # a SnapshotError is recorded, then raised

A sync often writes one object several times (a finalizer, then its status): each write
conditions on the version the previous one made, which the informer would only learn a
moment later from the log. The write that removes the last finalizer of an object marked
for deletion deletes it (Kubernetes' rule, ``ObjectStore``): the cache forgets it then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from volplane.errors import AlreadyExists, FailedPrecondition
from volplane.events import now_ns
from volplane.resources.informer import Informer
from volplane.resources.kinds import Kind, ref_of
from volplane.resources.objects import Obj
from volplane.resources.store import ObjectStore, rfc3339, version_of

__all__ = ["SnapshotError", "Writes", "error_status"]


class SnapshotError(FailedPrecondition):
    """A (group) snapshot or content cannot go on yet: recorded on its status and as a Warning
    with ``reason`` (``Writes.sync``), then retried by the loop."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def error_status(message: str) -> Obj:
    """A (group) snapshot's or content's ``status.error`` with readyToUse false, as the
    snapshot controller writes it."""
    return {"error": {"message": message, "time": rfc3339(now_ns())}, "readyToUse": False}


class Writes:
    def __init__(self, informer: Informer, objects: ObjectStore) -> None:
        self.informer = informer
        self.objects = objects

    def _seen(self, written: Obj) -> Obj | None:
        meta = written["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.informer.observe(None, ref_of(written), deleted_at=version_of(written))
            return None
        self.informer.observe(written)
        return written

    async def update(self, obj: Obj, patch: Obj, reason: str) -> Obj | None:
        return self._seen(await self.objects.update(obj, patch, reason=reason))

    async def create(self, obj: Obj) -> Obj:
        """The new object, or the one of that name already there (a retry after a crash)."""
        try:
            created = await self.objects.create(obj)
        except AlreadyExists:
            existing, _ = await self.objects.read(ref_of(obj))
            if existing is None:
                raise
            self.informer.observe(existing)
            return existing
        self.informer.observe(created)
        return created

    async def delete(self, obj: Obj) -> Obj | None:
        """Delete (or, with finalizers, mark for deletion); the object as it is now, or None."""
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        written = await self.objects.delete(ref_of(obj), current=obj)
        if written is None:
            return None
        if not written["metadata"].get("finalizers"):
            self.informer.observe(None, ref_of(written), deleted_at=version_of(written))
            return None
        return self._seen(written)

    async def finalizers(self, obj: Obj, *, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()) -> Obj | None:
        """Add (never to an object being deleted, as Kubernetes refuses) and remove finalizers."""
        have = list(obj["metadata"].get("finalizers") or [])
        want = [f for f in have if f not in remove]
        if not obj["metadata"].get("deletionTimestamp"):
            want += [f for f in add if f not in want]
        if want == have:
            return obj
        return await self.update(obj, {"metadata": {"finalizers": want or None}}, "finalizer")

    async def annotate(self, obj: Obj, key: str, value: str | None) -> Obj | None:
        if (obj["metadata"].get("annotations") or {}).get(key) == value:
            return obj
        return await self.update(obj, {"metadata": {"annotations": {key: value}}}, "annotate")

    async def error(self, obj: Obj, reason: str, message: str) -> Obj | None:
        """``status.error`` and a Warning event, once per message (the snapshot controller's
        updateSnapshotErrorStatusWithEvent)."""
        if ((obj.get("status") or {}).get("error") or {}).get("message") == message:
            return obj
        written = await self.update(obj, {"status": error_status(message)}, "error")
        await self.objects.record(obj, "Warning", reason, message)
        return written

    async def event(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        await self.objects.record(obj, event_type, reason, message)

    async def sync(self, kind: Kind, key: str, sync: Callable[[Obj], Awaitable[None]]) -> None:
        """One loop's sync of ``key``: nothing when the object is gone; a SnapshotError that
        ``sync`` raises goes on the object's status and timeline (``error``) before the loop
        sees it and backs off."""
        obj = self.informer.get(kind, key)
        if obj is None:
            return
        try:
            await sync(obj)
        except SnapshotError as exc:
            current = self.informer.get(kind, key)
            if current is not None:
                await self.error(current, exc.reason, exc.message)
            raise
