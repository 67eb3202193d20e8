"""The resource API: apply, get, list, delete, watch and history of the standalone
control plane's objects, as JSON over gRPC (proto/resources.proto).

Writes and single reads go to the event log (an object's newest event is the object);
lists read the Redis projection after it has applied this process's own writes;
watches follow the log. Every call is authorized by its caller's identity first
(``services.apigw.access``): writes need the admin role, reads the view role.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc
from volplane.errors import InvalidArgument, NotFound
from volplane.eventstore import EventStore
from volplane.quarantine import Quarantined
from volplane.resources.kinds import Kind, Ref, ref, ref_of, resolve
from volplane.resources.projection import ObjectsProjection
from volplane.resources.selectors import LabelSelector, parse_selector
from volplane.resources.store import ObjectStore, object_of

from .access import Access
from .errors import grpc_errors

__all__ = ["Resources"]

# The events the read models quarantined (volplane.quarantine) are listed, read-only, as
# if they were a kind: List is the one call that takes a kind and returns many documents.
QUARANTINED_KINDS = ("quarantinedevents", "quarantinedevent", "quarantined", "qe")
_WATCH_TYPES = {"ObjectCreated": "ADDED", "ObjectChanged": "MODIFIED", "ObjectDeleted": "DELETED"}
# Deeper than any object here; the store and the validation recurse over a document.
_MAX_DEPTH = 100
# What the event log's msgpack encoding holds.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _document(raw: bytes) -> Any:
    """An Apply's JSON document, or InvalidArgument: strict JSON (no NaN or Infinity), at
    most _MAX_DEPTH deep, with integers the event log can hold and strings UTF-8 can encode
    (a JSON escape can spell a lone surrogate)."""
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidArgument(f"not JSON volplane keeps: nested deeper than {_MAX_DEPTH}") from None
    except ValueError as exc:
        raise InvalidArgument(f"not JSON: {exc}") from None
    todo: list[tuple[Any, int]] = [(doc, 0)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict | list):
            if depth >= _MAX_DEPTH:
                raise InvalidArgument(f"not JSON volplane keeps: nested deeper than {_MAX_DEPTH}")
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
            todo.extend((k, depth + 1) for k in (value if isinstance(value, dict) else ()))
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidArgument(f"not JSON volplane keeps: {value[:64]!r} is not valid Unicode") from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument("not JSON volplane keeps: a number is out of range")
        elif isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
            raise InvalidArgument(f"not JSON volplane keeps: the integer {str(value)[:40]} is out of range")
    return doc


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON value")


def _quarantined(q: Quarantined) -> dict[str, Any]:
    """A quarantined event as a read-only object of the list (``volctl get quarantinedevents``)."""
    return {
        "apiVersion": "volplane.io/v1",
        "kind": "QuarantinedEvent",
        "metadata": {"name": f"{q.seq}-{q.reader}"},
        **q.as_dict(),
    }


def _ref(req: pb.ObjectRef) -> Ref:
    if not req.name:
        raise InvalidArgument("name: required")
    return ref(resolve(req.kind), req.namespace, req.name)


class Resources(resources_pb2_grpc.ResourcesServicer):
    def __init__(self, store: EventStore, objects: ObjectsProjection, access: Access) -> None:
        self._store = store
        self._read = objects
        self._access = access

    def _objects(self, manager: str = "") -> ObjectStore:
        return ObjectStore(self._store, manager or "volctl")

    def _noted(self, obj: dict[str, Any] | None, r: Ref, deleted: bool = False) -> None:
        if obj is not None:
            self._read.note(r, obj, deleted=deleted)

    async def Apply(self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext) -> pb.ApplyResponse:
        async with grpc_errors(context):
            self._access.check(context, write=True, what="apply objects")
            doc = _document(request.json)
            obj, action = await self._objects(request.field_manager).apply(doc)
            self._noted(obj, ref_of(obj))
            return pb.ApplyResponse(json=_json(obj), action=action)

    async def Get(self, request: pb.ObjectRef, context: grpc.aio.ServicerContext) -> pb.Object:
        async with grpc_errors(context):
            self._access.check(context, write=False, what="get objects")
            return pb.Object(json=_json(await self._objects().get(_ref(request))))

    async def Delete(self, request: pb.ObjectRef, context: grpc.aio.ServicerContext) -> pb.Object:
        async with grpc_errors(context):
            self._access.check(context, write=True, what="delete objects")
            r = _ref(request)
            obj = await self._objects().delete(r)
            if obj is None:
                raise NotFound(f'{r.kind.plural} "{r.name}" not found')
            self._noted(obj, r, deleted=not obj["metadata"].get("deletionTimestamp"))
            return pb.Object(json=_json(obj))

    async def List(self, request: pb.ListRequest, context: grpc.aio.ServicerContext) -> pb.ListResponse:
        async with grpc_errors(context):
            self._access.check(context, write=False, what="list objects")
            if request.kind.strip().lower() in QUARANTINED_KINDS:
                return pb.ListResponse(items=[pb.Object(json=_json(_quarantined(q))) for q in await self._read.quarantined()])
            kind = resolve(request.kind)
            items, position = await self._list(kind, request.namespace, request.all_namespaces, parse_selector(request.label_selector))
            return pb.ListResponse(items=[pb.Object(json=_json(o)) for o in items], resource_version=position)

    async def _list(self, kind: Kind, namespace: str, everywhere: bool, selector: LabelSelector) -> tuple[list[dict[str, Any]], int]:
        ns = None if everywhere or not kind.namespaced else (namespace or "default")

        def wanted(meta: dict[str, Any]) -> bool:
            return (ns is None or meta.get("namespace") == ns) and selector.matches(meta.get("labels"))

        return await self._read.list_of(kind, wanted)

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEvent]:
        async with grpc_errors(context):
            self._access.check(context, write=False, what="watch objects")
            kind = resolve(request.kind)
            selector = parse_selector(request.label_selector)
            ns = None if request.all_namespaces or not kind.namespaced else (request.namespace or "default")
            after = request.resource_version
            name = request.name

            def wanted(meta: dict[str, Any]) -> bool:
                return (ns is None or meta.get("namespace") == ns) and (not name or meta.get("name") == name) and selector.matches(meta.get("labels"))

            if after <= 0:
                items, after = await self._list(kind, request.namespace, request.all_namespaces, selector)
                for obj in items:
                    if wanted(obj["metadata"]):
                        yield pb.WatchEvent(type="ADDED", object=pb.Object(json=_json(obj)))
            # One object: follow its own subject only, not the whole kind's.
            subject = ref(kind, ns or request.namespace, name).subject if name else kind.events
            async for record in self._store.follow(subject, after):
                try:
                    event, obj = object_of(record)
                except Exception:  # noqa: BLE001 - quarantined by the projections (volplane.quarantine); a watch skips it
                    continue
                if wanted(obj["metadata"]):
                    yield pb.WatchEvent(type=_WATCH_TYPES[event], object=pb.Object(json=_json(obj)))

    async def History(self, request: pb.ObjectRef, context: grpc.aio.ServicerContext) -> pb.HistoryResponse:
        async with grpc_errors(context):
            self._access.check(context, write=False, what="read the history of objects")
            entries = []
            for record, event in await self._objects().history(_ref(request)):
                at = event.pop("at", 0)
                entries.append(pb.HistoryEntry(seq=record.seq, type=record.type, at_ns=at, json=_json(event)))
            return pb.HistoryResponse(entries=entries)
