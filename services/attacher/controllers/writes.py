"""Writes of the attach loops, seen by their informer at once, and timeline lines said once.

    writes = Writes(ObjectStore(store, manager="external-attacher"), informer)
    va = await writes.update(va, {"status": {"attached": True}}, reason="attach")
    await writes.delete(va)                         # marks it, or deletes it
    await writes.say(pod, "Normal", "SuccessfulAttachVolume", msg, about="pvc-1")

Every write hands the resulting object to ``informer.observe`` so the next sync of any
key already reads it, not the version before it.

``say`` records a line on an object's timeline unless the newest line this manager
wrote about the same volume already says exactly that: a sync that finds nothing new
to report records nothing, even after a restart (the first check per object and volume
reads the object's timeline once; later checks are answered from memory).
"""

from __future__ import annotations

from volplane.resources.informer import Informer
from volplane.resources.kinds import Ref, ref_of
from volplane.resources.objects import Obj, Object
from volplane.resources.store import ObjectStore, version_of

__all__ = ["Writes"]


def _gone(obj: Obj) -> bool:
    """A write's result that is the object's last state: it was deleted by that write."""
    o = Object(obj)
    return o.deleting and not o.finalizers


class Writes:
    def __init__(self, objects: ObjectStore, informer: Informer) -> None:
        self.objects = objects
        self._informer = informer
        # (object uid, volume) → (reason, message) of the newest line said about it.
        self._said: dict[tuple[str, str], tuple[str, str]] = {}

    @property
    def manager(self) -> str:
        return self.objects.manager

    def _observe(self, obj: Obj | None, ref: Ref | None = None) -> Obj | None:
        if obj is None:
            return None
        if _gone(obj):
            self._informer.observe(None, ref or ref_of(obj), deleted_at=version_of(obj))
            return None
        self._informer.observe(obj)
        return obj

    async def create(self, obj: Obj) -> Obj:
        created = await self.objects.create(obj)
        self._informer.observe(created)
        return created

    async def update(self, current: Obj, patch: Obj, *, reason: str) -> Obj | None:
        """Merge ``patch`` into ``current`` (which must be the newest version, else
        ConcurrencyConflict and the loop syncs the key again); None if the write deleted it."""
        return self._observe(await self.objects.update(current, patch, reason=reason))

    async def patch(self, ref: Ref, patch: Obj, *, reason: str) -> Obj | None:
        """Merge ``patch`` into the newest version, whatever it is."""
        return self._observe(await self.objects.patch(ref, patch, reason=reason), ref)

    async def delete(self, current: Obj) -> Obj | None:
        """Delete, or with finalizers left mark for deletion; None once it is gone."""
        ref = ref_of(current)
        last = await self.objects.delete(ref, current=current)
        if last is None:
            return None
        if last["metadata"].get("finalizers") and last["metadata"].get("deletionTimestamp"):
            self._informer.observe(last)
            return last
        self._informer.observe(None, ref, deleted_at=version_of(last))
        return None

    async def say(self, obj: Obj, event_type: str, reason: str, message: str, *, about: str) -> bool:
        """Record the line unless it is already the newest one about ``about``; True if recorded."""
        key = (Object(obj).uid or ref_of(obj).key, about)
        line = (reason, message)
        if self._said.get(key) == line:
            return False
        if key not in self._said:
            newest = await self._newest_about(obj, about)
            if newest == line:
                self._said[key] = line
                return False
        await self.objects.record(obj, event_type, reason, message)
        self._said[key] = line
        return True

    def forget(self, uid: str) -> None:
        """Drop what was said about an object that is gone."""
        for key in [k for k in self._said if k[0] == uid]:
            del self._said[key]

    async def _newest_about(self, obj: Obj, about: str) -> tuple[str, str] | None:
        quoted = f'"{about}"'
        newest = None
        for record, event in await self.objects.history(ref_of(obj)):
            if record.type == "ObjectCreated":
                newest = None  # An object of the same name before this one said it, not this one.
            elif record.type == "EventRecorded" and event.get("source") == self.manager and quoted in event.get("message", ""):
                newest = (event["reason"], event["message"])
        return newest
