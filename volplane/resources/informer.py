"""Every object in memory, kept current from the log: what controllers read.

    informer = Informer(store)
    informer.on_change(lambda kind, old, new: queue.add(...))
    await informer.start()                      # returns once caught up with the log
    informer.get(PV, "nfs-pv"); informer.list(PVC)
    informer.observe(written_obj)               # a controller's own write, seen at once

It starts from the newest event of every object subject (``vp.ev.res.>``, JetStream's
last-per-subject delivery: each event carries the whole object, so the newest one is the
object), then follows live events and keeps the newest version of each object; an event
at or below the version it already holds (a write the controller observed itself) is
skipped, so the cache only moves forward. A start costs the number of objects, not the
length of the log's history (docs/performance.md, "Restarts").

An event that is no valid object of its subject (an unknown kind, bytes that do not
decode, an object that does not validate) is quarantined (``volplane.quarantine``): logged,
counted under reader ``informer``, skipped — controllers never see it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from typing import Any

import nats.errors

from volplane.errors import Unavailable
from volplane.eventstore import EventStore, Record
from volplane.quarantine import Quarantined
from volplane.resources.kinds import RESOURCE_EVENTS, Kind, Ref, ref_of, ref_of_subject
from volplane.resources.store import ObjectStore, object_of, version_of
from volplane.telemetry import continued

__all__ = ["Informer"]

log = logging.getLogger(__name__)

# The informer's name in quarantine records and the metric's ``reader`` label.
READER = "informer"

Handler = Callable[[Kind, dict[str, Any] | None, dict[str, Any] | None], None]


class Informer:
    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}
        # Deletions observed ahead of the log (``observe``), by version, so that the log's
        # older events of the object cannot bring it back before the log reaches the
        # deletion. Dropped once the feed has passed them (``_forget_gone``): from then on
        # every event is newer, and ``observe`` ignores versions the feed has passed. So it
        # holds only what is ahead of the log, not one entry per object ever deleted.
        self._gone: dict[tuple[str, str], int] = {}
        self._gone_order: list[tuple[int, tuple[str, str]]] = []  # a heap by version
        self._handlers: list[Handler] = []
        self.position = 0
        self.skipped = 0  # events quarantined since the start
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def on_change(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self, timeout: float = 120.0) -> None:
        target = await self._store.last_seq()
        self._task = asyncio.create_task(self._run(target), name="informer")
        if await self._store.next_seq(RESOURCE_EVENTS, 0) is None:
            self._synced.set()
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def stop(self) -> None:
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        return self._objects.get(kind.name, {}).get(key)

    def list(self, kind: Kind) -> list[dict[str, Any]]:
        return list(self._objects.get(kind.name, {}).values())

    def observe(self, obj: dict[str, Any] | None, ref: Ref | None = None, deleted_at: int = 0) -> None:
        """Take a version this process just wrote (or deleted) ahead of the log. A version the
        feed has passed is ignored: the log delivered that event already, so the cache holds
        it or something newer (a late observation cannot bring back a deleted object)."""
        if (version_of(obj) if obj is not None else deleted_at) <= self.position:
            return
        if obj is not None:
            self._put(ref or ref_of(obj), obj, version_of(obj))
        elif ref is not None:
            self._put(ref, None, deleted_at)

    async def _run(self, target: int) -> None:
        while True:
            try:
                async for record in self._store.follow(RESOURCE_EVENTS, self.position, newest_only=True):
                    try:
                        kind, obj = object_of(record)
                    except Exception as exc:  # noqa: BLE001 - any event the cache cannot use is quarantined, not retried.
                        self._skip(record, exc)
                        if not self._synced.is_set():
                            await self._before_poison(record)
                    else:
                        # A live event wakes the controllers in the trace it was written in (the replay at start, in none).
                        with continued(record.trace if self._synced.is_set() else ()):
                            self._put(ref_of_subject(record.subject), None if kind == "ObjectDeleted" else obj, record.seq)
                    self.position = record.seq
                    if self._gone_order and self._gone_order[0][0] <= record.seq:
                        self._forget_gone()
                    caught_up = record.pending == 0 and not self._synced.is_set()
                    if caught_up and (record.seq >= target or await self._store.next_seq(RESOURCE_EVENTS, record.seq) is None):
                        self._synced.set()
                        if self.skipped:
                            log.warning("informer skipped %d quarantined events while replaying the log (vp:quarantine:objects has them)", self.skipped)
            except asyncio.CancelledError:
                raise
            except (Unavailable, nats.errors.Error) as exc:
                log.warning("informer lost the log at %d (%s); following it again", self.position, exc)
                await asyncio.sleep(0.5)
            except Exception:  # The cache must outlive one failure; it resumes.
                log.exception("informer failed at %d; following the log again", self.position)
                await asyncio.sleep(0.5)

    def _skip(self, record: Record, exc: Exception) -> None:
        """Quarantine an event no object can be made of: log it once, count it, move on.

        The objects projection keeps the durable record of the same event; the cache is
        rebuilt from the log on every start, so it only reports. The event still takes a
        place on its object's subject, so an object the cache holds moves to that version
        unchanged: a controller's next ``update`` writes after it instead of conflicting forever.
        """
        # Each start replays the whole log: what it met before, it says in one line once synced.
        Quarantined.of(READER, record, exc).report(replayed=not self._synced.is_set())
        self.skipped += 1
        try:
            ref = ref_of_subject(record.subject)
        except Exception:  # noqa: BLE001 - a subject of no object: nothing to move
            return
        current = self.get(ref.kind, ref.key)
        if current is not None:
            self._put(ref, {**current, "metadata": {**current["metadata"], "resourceVersion": str(record.seq)}}, record.seq)

    async def _before_poison(self, record: Record) -> None:
        """At start only an object's newest event is read: when that one is poison, the
        object is its newest event that decodes, read back from its subject's history."""
        try:
            ref = ref_of_subject(record.subject)
        except Exception:  # noqa: BLE001 - a subject of no object: nothing to load
            return
        if self.get(ref.kind, ref.key) is None:
            obj, version = ObjectStore.before_poison(await self._store.read(ref.subject))
            if obj is not None:
                self._put(ref, obj, version)

    def _forget_gone(self) -> None:
        """Drop the deletions the feed has reached: no event or observation older than them
        can come any more."""
        while self._gone_order and self._gone_order[0][0] <= self.position:
            version, key = heapq.heappop(self._gone_order)
            if self._gone.get(key) == version:
                del self._gone[key]

    def _put(self, ref: Ref, obj: dict[str, Any] | None, version: int) -> None:
        bucket = self._objects.setdefault(ref.kind.name, {})
        old = bucket.get(ref.key)
        known = version_of(old) if old is not None else self._gone.get((ref.kind.name, ref.key), 0)
        if version <= known:
            return
        if obj is None:
            bucket.pop(ref.key, None)
            self._gone[(ref.kind.name, ref.key)] = version
            heapq.heappush(self._gone_order, (version, (ref.kind.name, ref.key)))
        else:
            bucket[ref.key] = obj
            self._gone.pop((ref.kind.name, ref.key), None)
        if old is None and obj is None:
            return
        for handler in self._handlers:
            try:
                handler(ref.kind, old, obj)
            except Exception:  # One handler's bug must not stop the cache.
                log.exception("informer handler failed for %s", ref)
