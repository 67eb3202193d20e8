"""Events of the volume aggregate (subject ``vp.ev.volume.<volume_id>``).

An intent (``VolumeCreating``, ``VolumeDeleting``) is recorded before the image file
is touched and a result after, so that on restart an intent without its result is
finished (see ``services.provisioner.csi.volumes.ProvisionerApp.recover``).

Events hold the stored value types of ``volplane.volumes``, never a command's types: the
decision converts (``decide_create``), so a command can change without changing the log.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from volplane.events import Event
from volplane.volumes import StoredCapability, StoredContentSource


class VolumeCreating(Event):
    type: Literal["VolumeCreating"] = "VolumeCreating"
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    capabilities: tuple[StoredCapability, ...]
    parameters: dict[str, str] = Field(default_factory=dict)
    content_source: StoredContentSource | None = None


class VolumeCreated(Event):
    type: Literal["VolumeCreated"] = "VolumeCreated"
    volume_id: str


class VolumeCreateFailed(Event):
    type: Literal["VolumeCreateFailed"] = "VolumeCreateFailed"
    volume_id: str
    reason: str


class VolumeExpanding(Event):
    type: Literal["VolumeExpanding"] = "VolumeExpanding"
    volume_id: str
    capacity_bytes: int
    previous_bytes: int = 0  # what the volume goes back to if growing fails


class VolumeExpanded(Event):
    type: Literal["VolumeExpanded"] = "VolumeExpanded"
    volume_id: str
    capacity_bytes: int


class VolumeExpandFailed(Event):
    type: Literal["VolumeExpandFailed"] = "VolumeExpandFailed"
    volume_id: str
    capacity_bytes: int  # the size before the failed expansion
    reason: str


class VolumeDeleting(Event):
    type: Literal["VolumeDeleting"] = "VolumeDeleting"
    volume_id: str


class VolumeDeleted(Event):
    type: Literal["VolumeDeleted"] = "VolumeDeleted"
    volume_id: str


VolumeEvent = Annotated[
    VolumeCreating | VolumeCreated | VolumeCreateFailed | VolumeExpanding | VolumeExpanded | VolumeExpandFailed | VolumeDeleting | VolumeDeleted,
    Field(discriminator="type"),
]
VOLUME_EVENTS: TypeAdapter[VolumeEvent] = TypeAdapter(VolumeEvent)


# Snapshots: one aggregate per snapshot, subject ``vp.ev.snapshot.<snapshot_id>``.


class SnapshotCreating(Event):
    type: Literal["SnapshotCreating"] = "SnapshotCreating"
    snapshot_id: str
    name: str
    source_volume_id: str
    pool: str
    size_bytes: int
    parameters: dict[str, str] = Field(default_factory=dict)


class SnapshotCreated(Event):
    type: Literal["SnapshotCreated"] = "SnapshotCreated"
    snapshot_id: str


class SnapshotCreateFailed(Event):
    type: Literal["SnapshotCreateFailed"] = "SnapshotCreateFailed"
    snapshot_id: str
    reason: str


class SnapshotDeleting(Event):
    type: Literal["SnapshotDeleting"] = "SnapshotDeleting"
    snapshot_id: str


class SnapshotDeleted(Event):
    type: Literal["SnapshotDeleted"] = "SnapshotDeleted"
    snapshot_id: str


SnapshotEvent = Annotated[
    SnapshotCreating | SnapshotCreated | SnapshotCreateFailed | SnapshotDeleting | SnapshotDeleted,
    Field(discriminator="type"),
]
SNAPSHOT_EVENTS: TypeAdapter[SnapshotEvent] = TypeAdapter(SnapshotEvent)
