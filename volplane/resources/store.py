"""Reading and writing objects: load → change → append, with optimistic concurrency.

    objects = ObjectStore(event_store, manager="volctl")
    obj, action = await objects.apply(yaml_doc)               # created / configured / unchanged
    obj = await objects.patch(ref, {"status": {"phase": "Bound"}}, reason="bind")
    obj = await objects.update(cached_obj, {"spec": {...}})    # fails with ConcurrencyConflict
                                                               # if cached_obj is not the newest
    await objects.record(obj, "Warning", "FailedAttachVolume", "Multi-Attach error ...")

Every write appends one event after the object's newest (its resourceVersion), so two
writers that read the same version cannot both win; the loser reloads (``patch``) or
lets its controller retry the key (``update``). Deleting an object that still has
finalizers only sets ``metadata.deletionTimestamp``; the write that removes the last
finalizer deletes it, as Kubernetes does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from volplane import codec
from volplane.errors import AlreadyExists, ConcurrencyConflict, FailedPrecondition, InvalidArgument, NotFound
from volplane.events import Event, now_ns
from volplane.eventstore import EventStore, Record
from volplane.quarantine import Undecodable, reason_of
from volplane.resources import patch as patches
from volplane.resources.admission import admit_update
from volplane.resources.events import OBJECT_EVENTS, RECORDED, EventRecorded, ObjectChanged, ObjectCreated, ObjectDeleted
from volplane.resources.kinds import BY_NAME, Ref, ref_of, ref_of_subject
from volplane.resources.schema import validate

__all__ = ["ObjectStore", "object_of", "rfc3339", "version_of"]

_RETRIES = 20
_REPEAT = 60.0  # seconds within which one line about one object is recorded once
# Fields a user's apply may not change once the object exists: Kubernetes' rules.
_IMMUTABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "PersistentVolumeClaim": (
        ("spec", "accessModes"), ("spec", "storageClassName"), ("spec", "volumeMode"), ("spec", "selector"),
        ("spec", "dataSource"), ("spec", "dataSourceRef"),
    ),
    "PersistentVolume": (("spec", "nfs"), ("spec", "hostPath"), ("spec", "local"), ("spec", "csi"), ("spec", "volumeMode")),
    "StorageClass": (("provisioner",), ("parameters",), ("reclaimPolicy",), ("volumeBindingMode",)),
    "VolumeAttachment": (("spec",),),
    "VolumeAttributesClass": (("driverName",), ("parameters",)),
    # external-snapshotter's CRD rules: sources never change; group classes not at all.
    "VolumeSnapshot": (("spec", "source"),),
    "VolumeSnapshotContent": (("spec", "source"), ("spec", "driver"), ("spec", "sourceVolumeMode")),
    "VolumeGroupSnapshotClass": (("driver",), ("parameters",), ("deletionPolicy",)),
    "VolumeGroupSnapshot": (("spec", "source"),),
    "VolumeGroupSnapshotContent": (("spec", "source"), ("spec", "driver")),
}


def rfc3339(at_ns: int) -> str:
    return datetime.fromtimestamp(at_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_of(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


def object_of(record: Record) -> tuple[str, dict[str, Any]]:
    """(event type, object with its resourceVersion) of one stored object event.

    Raises (Undecodable, or the decoder's own error) for an event that is not one: a
    subject of no known kind, bytes that are no object event, or an object that is not a
    valid object of its subject's kind and name — what every write through this store
    checks first, so only an append around it can put one in the log. Readers of the log
    quarantine such an event (``volplane.quarantine``) instead of handing it to
    controllers and lists that index ``metadata.name`` and read typed specs.
    """
    ref = ref_of_subject(record.subject)
    event = codec.decode(OBJECT_EVENTS, record.data)
    obj = event.object
    try:
        validate(obj)
    except InvalidArgument as exc:
        raise Undecodable(f"not a valid object: {exc.message}") from None
    meta = obj["metadata"]
    if not isinstance(obj.get("status", {}), dict):
        raise Undecodable("not a valid object: status: not a mapping")
    if obj["kind"] != ref.kind.name or meta["name"] != ref.name or (ref.kind.namespaced and meta.get("namespace") != ref.namespace):
        raise Undecodable(f"the object {_named(obj)} does not belong on {record.subject}")
    meta["resourceVersion"] = str(record.seq)
    return event.type, obj


def _named(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta.get('namespace') + '/' if meta.get('namespace') else ''}{meta['name']}"[:200]


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _dig(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


# Where a store's writes go: the event log itself (``EventStore.append``), or a writer
# that authorizes them first (a node's, ``volplane.resources.authz.NodeWrites``).
Append = Callable[[str, Event, int | None], Awaitable[int]]


class ObjectStore:
    def __init__(self, store: EventStore, manager: str, *, append: Append | None = None) -> None:
        self._store = store
        self.manager = manager
        self._recent: dict[tuple[str, str, str, str], float] = {}
        self._write: Append = append or (lambda subject, event, expected: store.append(subject, event, expected=expected))

    async def read(self, ref: Ref) -> tuple[dict[str, Any] | None, int]:
        """(the object or None, its subject's newest sequence — the version to write after)."""
        record = await self._store.last(ref.subject)
        if record is None:
            return None, 0
        try:
            kind, obj = object_of(record)
        except Exception:  # noqa: BLE001 - a quarantined event (volplane.quarantine): skipped, as every reader skips it
            return self.before_poison(await self._store.read(ref.subject))
        return (None if kind == "ObjectDeleted" else obj), record.seq

    @staticmethod
    def before_poison(records: list[Record]) -> tuple[dict[str, Any] | None, int]:
        """The object as of its newest event that decodes, at the subject's newest sequence.

        Quarantined events are skipped, but they still take a place on the subject, so the
        next write names the newest sequence; the object carries it as its resourceVersion,
        as the informer's copy does (a controller's ``update`` writes after it)."""
        for record in reversed(records):
            try:
                kind, obj = object_of(record)
            except Exception:  # noqa: BLE001 - quarantined, skipped
                continue
            if kind == "ObjectDeleted":
                break
            return _versioned(obj, records[-1].seq), records[-1].seq
        return None, records[-1].seq if records else 0

    async def get(self, ref: Ref) -> dict[str, Any]:
        obj, _ = await self.read(ref)
        if obj is None:
            raise NotFound(f'{ref.kind.plural} "{ref.name}" not found')
        return obj

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = validate(_strip_none(obj))
        ref = ref_of(obj)
        current, version = await self.read(ref)
        if current is not None:
            raise AlreadyExists(f'{ref.kind.plural} "{ref.name}" already exists')
        return await self._append_created(ref, obj, version)

    async def apply(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Create the object, or merge the given document into the existing one as a
        merge patch: given fields replace, absent fields stay (a controller's
        ``spec.volumeName`` survives a re-apply), ``null`` removes (``claimRef: null``)."""
        if not isinstance(obj, dict):
            raise InvalidArgument(f"an object must be a mapping, not {type(obj).__name__}")
        given = dict(obj)
        status = given.pop("status", None) or {}
        if given.get("kind") == "Pod" and isinstance(status, dict) and status.get("phase"):
            # No kubelet runs containers here: the user stands in for the runtime and may
            # say that a pod has terminated (Succeeded / Failed).
            given["status"] = {"phase": status["phase"]}
        # A whole object to create, or a partial document to merge into an existing one:
        # which one it has to be is known only once the object is read.
        try:
            created: dict[str, Any] | None = validate(_strip_none(given))
            invalid: InvalidArgument | None = None
        except InvalidArgument as exc:
            created, invalid = None, exc
            meta = given.get("metadata")
            if not isinstance(given.get("kind"), str) or given["kind"] not in BY_NAME or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
                raise
        ref = ref_of(created or given)
        for _ in range(_RETRIES):
            current, version = await self.read(ref)
            try:
                if current is None:
                    if created is None:
                        assert invalid is not None  # validate() failed: that failure is the answer
                        raise invalid
                    return await self._append_created(ref, dict(created), version), "created"
                new = self._applied(current, given)
                if not patches.diff(_bare(current), _bare(new)):
                    return current, "unchanged"
                await admit_update(current, new, self.read)  # the API server's update rules (expansion, classes)
                return await self._append_changed(ref, current, new, version, reason="apply"), "configured"
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"{ref} keeps changing; apply again")

    def _applied(self, current: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        meta = dict(given.get("metadata") or {})
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation", "namespace"):
            meta.pop(key, None)
        new = _strip_none(patches.merge(current, {**given, "metadata": meta}))
        for path in _IMMUTABLE.get(current["kind"], ()):
            before, after = _dig(current, path), _dig(new, path)
            if before != after and not (path == ("spec", "storageClassName") and before is None):
                raise InvalidArgument(f'{current["kind"]} "{current["metadata"]["name"]}": {".".join(path)}: field is immutable')
        return validate(new)

    async def patch(self, ref: Ref, patch: dict[str, Any], *, reason: str = "") -> dict[str, Any]:
        """Merge ``patch`` into the newest object, reloading when another writer got there first."""
        for _ in range(_RETRIES):
            current, version = await self.read(ref)
            if current is None:
                raise NotFound(f'{ref.kind.plural} "{ref.name}" not found')
            try:
                return await self.update(current, patch, reason=reason, version=version)
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"{ref} keeps changing")

    async def update(self, current: dict[str, Any], patch: dict[str, Any], *, reason: str = "", version: int | None = None) -> dict[str, Any]:
        """Merge ``patch`` into ``current``, which must be the newest version (else ConcurrencyConflict)."""
        ref = ref_of(current)
        new = validate(_strip_none(patches.merge(current, patch)))
        if not patches.diff(_bare(current), _bare(new)):
            return current
        expected = version if version is not None else version_of(current)
        return await self._append_changed(ref, current, new, expected, reason=reason)

    async def delete(self, ref: Ref, *, current: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Delete (or, with finalizers left, mark for deletion); None if it was already gone.
        Returns the object's last state, whose resourceVersion is the deletion's."""
        for _ in range(_RETRIES):
            if current is None:
                current, version = await self.read(ref)
                if current is None:
                    return None
            else:
                version = version_of(current)
            try:
                if current["metadata"].get("finalizers"):
                    if current["metadata"].get("deletionTimestamp"):
                        return current
                    return await self.update(current, {"metadata": {"deletionTimestamp": rfc3339(now_ns())}}, reason="delete", version=version)
                seq = await self._append(ref, ObjectDeleted(object=_bare(current), manager=self.manager), version)
                return _versioned(current, seq)
            except ConcurrencyConflict:
                current = None
        raise ConcurrencyConflict(f"{ref} keeps changing; delete again")

    async def record(self, obj: dict[str, Any] | Ref, event_type: str, reason: str, message: str) -> None:
        """Add a line to the object's timeline; never conflicts with writes to the object.

        A loop that retries says the same thing each time: the same line about the same
        object within a minute is recorded once (the log's duplicate window would also
        catch it, but only after a round trip)."""
        ref = obj if isinstance(obj, Ref) else ref_of(obj)
        uid = "" if isinstance(obj, Ref) else obj["metadata"].get("uid", "")
        said = (ref.recorded, uid, reason, message)
        now = time.monotonic()
        if now - self._recent.get(said, -_REPEAT) < _REPEAT:
            return
        if len(self._recent) > 50_000:
            self._recent = {k: t for k, t in self._recent.items() if now - t < _REPEAT}
        self._recent[said] = now
        event = EventRecorded(event_type=event_type, reason=reason, message=message, source=self.manager)
        await self._write(ref.recorded, event, None)

    async def history(self, ref: Ref) -> list[tuple[Record, dict[str, Any]]]:
        """Every event of the object and every event recorded about it, oldest first."""
        records = await self._store.read(ref.subject) + await self._store.read(ref.recorded)
        out = []
        for record in sorted(records, key=lambda r: r.seq):
            # Two adapters, two calls: each keeps its own decoded type.
            try:
                event = codec.decode(RECORDED, record.data) if record.type == "EventRecorded" else codec.decode(OBJECT_EVENTS, record.data)
            except Exception as exc:  # noqa: BLE001 - a quarantined event is shown as one, with why
                out.append((record, {"quarantined": reason_of(exc)}))
                continue
            fields = event.model_dump()
            if record.subject == ref.subject:
                try:
                    object_of(record)
                except Exception as exc:  # noqa: BLE001 - it decodes, but readers quarantine it: say so beside it
                    fields["quarantined"] = reason_of(exc)
            out.append((record, fields))
        return out

    async def _append_created(self, ref: Ref, obj: dict[str, Any], version: int) -> dict[str, Any]:
        at = now_ns()
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(at)
        for key in ("resourceVersion", "deletionTimestamp", "generation"):
            meta.pop(key, None)
        obj = _bare(obj)
        seq = await self._append(ref, ObjectCreated(object=obj, manager=self.manager, at=at), version)
        return _versioned(obj, seq)

    async def _append_changed(self, ref: Ref, current: dict[str, Any], new: dict[str, Any], version: int, *, reason: str) -> dict[str, Any]:
        new = _bare(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            # The last finalizer is gone from an object being deleted: now it goes.
            seq = await self._append(ref, ObjectDeleted(object=new, manager=self.manager), version)
            return _versioned(new, seq)
        if (current["metadata"].get("uid")) != new["metadata"].get("uid"):
            raise FailedPrecondition(f"{ref}: metadata.uid cannot change")
        event = ObjectChanged(object=new, patch=patches.diff(_bare(current), new), manager=self.manager, reason=reason)
        seq = await self._append(ref, event, version)
        return _versioned(new, seq)

    async def _append(self, ref: Ref, event: Any, version: int) -> int:
        return await self._write(ref.subject, event, version)


def _bare(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without its resourceVersion, which is the event's position, not content."""
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def _versioned(obj: dict[str, Any], seq: int) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(seq)}}
