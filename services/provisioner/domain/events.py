"""Events of the volume aggregate (subject ``vp.ev.volume.<volume_id>``).

An intent (``VolumeCreating``, ``VolumeDeleting``, ``VolumeModifying``) is recorded before the image file
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


class VolumeModifying(Event):
    """The intent of new I/O limits (ControllerModifyVolume, or CreateVolume's mutable
    parameters): ``limits`` is the whole set the volume has from now on, zeros left out.
    Types of their own, rather than a field on VolumeCreating, so that the stored bytes of
    the events before them stay what an older reader knows."""

    type: Literal["VolumeModifying"] = "VolumeModifying"
    volume_id: str
    limits: dict[str, int] = Field(default_factory=dict)


class VolumeModified(Event):
    """Every node the volume was staged on applied the limits of the last VolumeModifying."""

    type: Literal["VolumeModified"] = "VolumeModified"
    volume_id: str


VolumeEvent = Annotated[
    VolumeCreating
    | VolumeCreated
    | VolumeCreateFailed
    | VolumeExpanding
    | VolumeExpanded
    | VolumeExpandFailed
    | VolumeDeleting
    | VolumeDeleted
    | VolumeModifying
    | VolumeModified,
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


class MemberSnapshotCreating(Event):
    """The intent of a snapshot that belongs to a volume group snapshot: its group takes it in
    the group's cut, and deletes it. A type of its own rather than a field added to
    SnapshotCreating, whose stored bytes stay those an older reader knows."""

    type: Literal["MemberSnapshotCreating"] = "MemberSnapshotCreating"
    snapshot_id: str
    name: str
    source_volume_id: str
    pool: str
    size_bytes: int
    group_snapshot_id: str


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
    SnapshotCreating | MemberSnapshotCreating | SnapshotCreated | SnapshotCreateFailed | SnapshotDeleting | SnapshotDeleted,
    Field(discriminator="type"),
]
SNAPSHOT_EVENTS: TypeAdapter[SnapshotEvent] = TypeAdapter(SnapshotEvent)


# Volume group snapshots: one aggregate per group, subject ``vp.ev.groupsnapshot.<id>``.
# Its members are ordinary snapshots (above) carrying the group's id; the group's intent
# names them all before any is created, so a crash mid-group is finished from the log.


class GroupSnapshotCreating(Event):
    type: Literal["GroupSnapshotCreating"] = "GroupSnapshotCreating"
    group_snapshot_id: str
    name: str
    source_volume_ids: tuple[str, ...]
    snapshot_ids: tuple[str, ...]  # one per source volume, in the same order
    parameters: dict[str, str] = Field(default_factory=dict)


class GroupSnapshotCreated(Event):
    type: Literal["GroupSnapshotCreated"] = "GroupSnapshotCreated"
    group_snapshot_id: str


class GroupSnapshotCreateFailed(Event):
    type: Literal["GroupSnapshotCreateFailed"] = "GroupSnapshotCreateFailed"
    group_snapshot_id: str
    reason: str


class GroupSnapshotDeleting(Event):
    type: Literal["GroupSnapshotDeleting"] = "GroupSnapshotDeleting"
    group_snapshot_id: str


class GroupSnapshotDeleted(Event):
    type: Literal["GroupSnapshotDeleted"] = "GroupSnapshotDeleted"
    group_snapshot_id: str


GroupSnapshotEvent = Annotated[
    GroupSnapshotCreating | GroupSnapshotCreated | GroupSnapshotCreateFailed | GroupSnapshotDeleting | GroupSnapshotDeleted,
    Field(discriminator="type"),
]
GROUP_SNAPSHOT_EVENTS: TypeAdapter[GroupSnapshotEvent] = TypeAdapter(GroupSnapshotEvent)
