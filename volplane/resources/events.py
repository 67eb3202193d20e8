"""What happens to an object: created, changed, deleted — and what is recorded about it.

Each event carries the whole object as it is after the event (and, for a change, the
merge patch that made it), so an object's current state is its newest event: loading
one for a write is a single read however long its history, and ``volctl history``
shows both what changed and what resulted. resourceVersion is the event's stream
sequence and is filled in by readers, never stored.

Like every event they have a schema version and come back from the log through
``volplane.codec.decode``, which upcasts an older stored shape (``volplane.events``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from volplane.events import Event

__all__ = ["OBJECT_EVENTS", "RECORDED", "EventRecorded", "ObjectChanged", "ObjectCreated", "ObjectDeleted", "ObjectEvent"]


class ObjectCreated(Event):
    type: Literal["ObjectCreated"] = "ObjectCreated"
    object: dict[str, Any]
    manager: str


class ObjectChanged(Event):
    type: Literal["ObjectChanged"] = "ObjectChanged"
    object: dict[str, Any]
    patch: dict[str, Any]  # RFC 7386 merge patch from the previous object
    manager: str
    reason: str = ""


class ObjectDeleted(Event):
    type: Literal["ObjectDeleted"] = "ObjectDeleted"
    object: dict[str, Any]  # the last state, for watchers' DELETED
    manager: str


class EventRecorded(Event):
    """Kubernetes' Event: a line on an object's timeline (``FailedAttachVolume`` …)."""

    type: Literal["EventRecorded"] = "EventRecorded"
    event_type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str
    source: str


ObjectEvent = Annotated[ObjectCreated | ObjectChanged | ObjectDeleted, Field(discriminator="type")]
OBJECT_EVENTS: TypeAdapter[ObjectCreated | ObjectChanged | ObjectDeleted] = TypeAdapter(ObjectEvent)
RECORDED: TypeAdapter[EventRecorded] = TypeAdapter(EventRecorded)
