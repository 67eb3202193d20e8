"""The messages services send one another: commands and their replies.

These are the contract between apigw (or any other caller) and the services, so they
live in the shared core. Commands are verbs; events, which are each service's own
business, are past tense and live in that service's ``domain`` package.

Commands never travel into the log: a decision converts what it keeps into the stored
value types of ``volplane.volumes`` (``cap.stored()``), and a reply is built back from
them (``Capability.of(stored)``). So a command may change without changing any event.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from volplane.events import Frozen
from volplane.volumes import AccessType, StoredCapability, StoredContentSource, Topology

__all__ = [
    "AccessType",
    "Attachments",
    "Capability",
    "CapacityInfo",
    "ContentSource",
    "ControllerPublish",
    "ControllerUnpublish",
    "CreateGroupSnapshot",
    "CreateSnapshot",
    "CreateVolume",
    "DeleteGroupSnapshot",
    "DeleteSnapshot",
    "DeleteVolume",
    "Done",
    "ExpandResult",
    "ExpandVolume",
    "FreezeVolumes",
    "FrozenVolumes",
    "GetAttachments",
    "GetCapacity",
    "GetGroupSnapshot",
    "GetNodeLimits",
    "GetSnapshot",
    "GetVolume",
    "GetVolumeStats",
    "GroupSnapshotInfo",
    "GrowImage",
    "ImageInfo",
    "ImageSent",
    "ImageSource",
    "IoLimitsApplied",
    "ListSnapshots",
    "ListVolumes",
    "MakeImage",
    "ModifyVolume",
    "NodeExpand",
    "NodeExpanded",
    "NodeLimits",
    "PublishContext",
    "PublishVolume",
    "RemoveImage",
    "SendImage",
    "SetIoLimits",
    "SnapshotImage",
    "SnapshotInfo",
    "SnapshotPage",
    "StageVolume",
    "StatImage",
    "ThawVolumes",
    "Topology",
    "UnpublishVolume",
    "UnstageVolume",
    "VolumeInfo",
    "VolumePage",
    "VolumeStats",
]

class Capability(Frozen):
    """One CSI VolumeCapability: how the volume is accessed and by whom.

    ``access_mode`` holds the CSI AccessMode.Mode number (1 = SINGLE_NODE_WRITER, ...).
    """

    access_type: AccessType = "mount"
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    access_mode: int = 1

    def stored(self) -> StoredCapability:
        """What an event keeps of it: ``VolumeAttached(capability=cmd.capability.stored(), ...)``."""
        return StoredCapability(access_type=self.access_type, fs_type=self.fs_type, mount_flags=self.mount_flags, access_mode=self.access_mode)

    @classmethod
    def of(cls, stored: StoredCapability) -> Capability:
        return cls(access_type=stored.access_type, fs_type=stored.fs_type, mount_flags=stored.mount_flags, access_mode=stored.access_mode)


class ContentSource(Frozen):
    """What a new volume starts from: a snapshot or another volume (a clone)."""

    kind: Literal["snapshot", "volume"]
    id: str

    def stored(self) -> StoredContentSource:
        return StoredContentSource(kind=self.kind, id=self.id)

    @classmethod
    def of(cls, stored: StoredContentSource | None) -> ContentSource | None:
        return None if stored is None else cls(kind=stored.kind, id=stored.id)


class CreateVolume(Frozen):
    name: str
    required_bytes: int = 0
    limit_bytes: int = 0
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str] = Field(default_factory=dict)
    content_source: ContentSource | None = None
    # CSI TopologyRequirement: requisite segments (any of), preferred ones in order.
    requisite: tuple[Topology, ...] = ()
    preferred: tuple[Topology, ...] = ()
    # The I/O limits the volume starts with (volplane.volumes.io_limits).
    mutable_parameters: dict[str, str] = Field(default_factory=dict)


class ModifyVolume(Frozen):
    """ControllerModifyVolume: change only the limits named; "0" takes a limit off."""

    volume_id: str
    mutable_parameters: dict[str, str]


class DeleteVolume(Frozen):
    volume_id: str


class GetVolume(Frozen):
    volume_id: str


class ListVolumes(Frozen):
    max_entries: int = 0
    starting_token: str = ""


class GetCapacity(Frozen):
    parameters: dict[str, str] = Field(default_factory=dict)
    topology: Topology | None = None


class VolumeInfo(Frozen):
    volume_id: str
    name: str
    capacity_bytes: int
    pool: str
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str]
    volume_context: dict[str, str]
    accessible_topology: tuple[Topology, ...] = ()
    content_source: ContentSource | None = None
    # A volume whose image is gone is reported abnormal (ControllerGetVolume, VOLUME_CONDITION).
    abnormal: bool = False
    condition: str = ""
    # The volume's current I/O limits, as parameters (volplane.volumes.format_io_limits).
    mutable_parameters: dict[str, str] = Field(default_factory=dict)


class VolumePage(Frozen):
    volumes: tuple[VolumeInfo, ...]
    next_token: str = ""


class CapacityInfo(Frozen):
    available_bytes: int
    total_bytes: int
    maximum_volume_size: int
    minimum_volume_size: int


class StageVolume(Frozen):
    volume_id: str
    staging_path: str
    capability: Capability
    volume_context: dict[str, str] = Field(default_factory=dict)
    publish_context: dict[str, str] = Field(default_factory=dict)


class UnstageVolume(Frozen):
    volume_id: str
    staging_path: str


class PublishVolume(Frozen):
    volume_id: str
    staging_path: str
    target_path: str
    capability: Capability
    readonly: bool = False
    volume_context: dict[str, str] = Field(default_factory=dict)


class UnpublishVolume(Frozen):
    volume_id: str
    target_path: str


class Done(Frozen):
    """The reply of a command whose success carries no data."""

    ok: bool = True


class ExpandVolume(Frozen):
    volume_id: str
    required_bytes: int = 0
    limit_bytes: int = 0


class ExpandResult(Frozen):
    capacity_bytes: int
    node_expansion_required: bool


class CreateSnapshot(Frozen):
    name: str
    source_volume_id: str
    parameters: dict[str, str] = Field(default_factory=dict)


class DeleteSnapshot(Frozen):
    snapshot_id: str


class ListSnapshots(Frozen):
    max_entries: int = 0
    starting_token: str = ""
    snapshot_id: str = ""
    source_volume_id: str = ""


class GetSnapshot(Frozen):
    snapshot_id: str


class SnapshotInfo(Frozen):
    snapshot_id: str
    name: str
    source_volume_id: str
    size_bytes: int
    creation_time_ns: int
    ready_to_use: bool = True
    group_snapshot_id: str = ""  # set for a member of a volume group snapshot


class SnapshotPage(Frozen):
    snapshots: tuple[SnapshotInfo, ...]
    next_token: str = ""


class CreateGroupSnapshot(Frozen):
    name: str
    source_volume_ids: tuple[str, ...]
    parameters: dict[str, str] = Field(default_factory=dict)


class DeleteGroupSnapshot(Frozen):
    group_snapshot_id: str
    snapshot_ids: tuple[str, ...] = ()  # checked against the group's members when given


class GetGroupSnapshot(Frozen):
    group_snapshot_id: str
    snapshot_ids: tuple[str, ...] = ()


class GroupSnapshotInfo(Frozen):
    group_snapshot_id: str
    snapshots: tuple[SnapshotInfo, ...]
    creation_time_ns: int
    ready_to_use: bool


class FreezeVolumes(Frozen):
    """Hold writes to these volumes where they are staged on the node, for at most ``lease_s``
    seconds (thawed then even if no ThawVolumes comes: a crashed caller never leaves a volume frozen)."""

    volume_ids: tuple[str, ...]
    lease_s: float = 60.0


class FrozenVolumes(Frozen):
    """The reply to FreezeVolumes: which of the volumes were staged here and are now frozen."""

    volume_ids: tuple[str, ...] = ()


class ThawVolumes(Frozen):
    volume_ids: tuple[str, ...]


class SetIoLimits(Frozen):
    """The I/O limits a volume has now, for the node it is staged on to apply to its device
    (every key of volplane.volumes.IO_LIMIT_KEYS: a missing one or 0 is no limit)."""

    volume_id: str
    limits: dict[str, int]


class IoLimitsApplied(Frozen):
    """The reply to SetIoLimits: whether the volume is staged on that node (and so limited there)."""

    staged: bool


class GetNodeLimits(Frozen):
    pass


class NodeLimits(Frozen):
    max_volumes: int  # 0: no limit


class ControllerPublish(Frozen):
    volume_id: str
    node_id: str
    capability: Capability
    readonly: bool = False


class ControllerUnpublish(Frozen):
    volume_id: str
    node_id: str = ""  # empty: from every node


class PublishContext(Frozen):
    """What NodeStage needs to know; returned by ControllerPublish, passed back by the CO."""

    context: dict[str, str]


class GetAttachments(Frozen):
    volume_ids: tuple[str, ...]


class Attachments(Frozen):
    nodes: dict[str, tuple[str, ...]]  # volume id → node ids it is published to


class NodeExpand(Frozen):
    volume_id: str
    volume_path: str
    staging_path: str = ""
    required_bytes: int = 0
    limit_bytes: int = 0


class NodeExpanded(Frozen):
    capacity_bytes: int


class GetVolumeStats(Frozen):
    volume_id: str
    volume_path: str
    staging_path: str = ""


class VolumeStats(Frozen):
    block: bool
    total_bytes: int
    used_bytes: int
    available_bytes: int
    total_inodes: int = 0
    used_inodes: int = 0
    available_inodes: int = 0
    abnormal: bool = False
    condition: str = ""


# -- a pool's images, done by the node that owns the pool (services/nodeagent/csi/pool.py) --
#
# Each carries ``expires_at`` (seconds since the epoch): the moment the provisioner stops
# waiting for the answer. A node that receives a request later does not act on it, so a
# request that sat in a frozen node's queue cannot undo what a retry did since.


class ImageSource(Frozen):
    """Where a new image's data comes from: a snapshot's or a volume's image in ``pool``,
    which ``node`` owns ("" for the shared pool, which every node with it can read)."""

    kind: Literal["snapshot", "volume"]
    id: str
    pool: str
    node: str = ""


class MakeImage(Frozen):
    """Make volume ``volume_id``'s image in ``pool``: ``size`` bytes, empty or a sparse
    copy of ``source`` grown to ``size``. Done already: the same answer."""

    pool: str
    volume_id: str
    size: int
    source: ImageSource | None = None
    expires_at: float = 0.0


class GrowImage(Frozen):
    """Grow volume ``volume_id``'s image to ``size`` bytes (never shrinks it)."""

    pool: str
    volume_id: str
    size: int
    expires_at: float = 0.0


class SnapshotImage(Frozen):
    """Copy volume ``volume_id``'s image to snapshot ``snapshot_id``'s, in the same pool."""

    pool: str
    volume_id: str
    snapshot_id: str
    expires_at: float = 0.0


class RemoveImage(Frozen):
    """Remove a volume's or a snapshot's image from ``pool``; gone already is done."""

    pool: str
    kind: Literal["volume", "snapshot"]
    id: str
    expires_at: float = 0.0


class StatImage(Frozen):
    pool: str
    volume_id: str


class ImageInfo(Frozen):
    """The reply about one image: whether it exists, and its size."""

    exists: bool
    size_bytes: int = 0


class SendImage(Frozen):
    """Node to node: send a snapshot's or a volume's image in ``pool`` (the receiving node's
    pool it is not) into the transfer store, under the key the answer names. Answered when the
    transfer is complete (its manifest stored); asked again, only what is missing is sent."""

    pool: str
    kind: Literal["snapshot", "volume"]
    id: str
    expires_at: float = 0.0


class ImageSent(Frozen):
    """The transfer ``SendImage`` completed: its key, the image's size, and how many chunks
    went over the wire this time and how many an earlier send had stored already."""

    key: str
    size_bytes: int
    chunks: int
    transferred: int = 0
    skipped: int = 0
