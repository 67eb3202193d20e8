"""Events of the node-volume aggregate (subject ``vp.ev.node.<node>.<volume_id>``).

Each host change has an intent before it and a result after it; on restart the
nodeagent finishes every intent left without a result (all node steps are idempotent
when redone: attach reuses the loop device, a mounted path is not mounted again, a
filesystem already as large as its device does not grow).

Fields added later have defaults, so events written before them still decode.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from volplane.events import Event
from volplane.volumes import AccessType


class VolumeStaging(Event):
    type: Literal["VolumeStaging"] = "VolumeStaging"
    volume_id: str
    staging_path: str
    fs_type: str  # "" for a block volume
    mount_flags: tuple[str, ...] = ()
    # The image the stage resolved (local pool first, then the shared one); every later step
    # uses it. "" in events from before pools: the image is looked up again.
    image: str = ""
    access_type: AccessType = "mount"


class VolumeStaged(Event):
    type: Literal["VolumeStaged"] = "VolumeStaged"
    volume_id: str
    device: str
    formatted: bool
    capacity_bytes: int = 0  # what the device and filesystem offer once staged


class VolumeStageFailed(Event):
    type: Literal["VolumeStageFailed"] = "VolumeStageFailed"
    volume_id: str
    reason: str


class VolumeUnstaging(Event):
    type: Literal["VolumeUnstaging"] = "VolumeUnstaging"
    volume_id: str


class VolumeUnstaged(Event):
    type: Literal["VolumeUnstaged"] = "VolumeUnstaged"
    volume_id: str


class VolumePublishing(Event):
    type: Literal["VolumePublishing"] = "VolumePublishing"
    volume_id: str
    target_path: str
    readonly: bool
    mount_flags: tuple[str, ...] = ()
    # The target existed before we published (the CO made it): unpublishing leaves it.
    keep_target: bool = False


class VolumePublished(Event):
    type: Literal["VolumePublished"] = "VolumePublished"
    volume_id: str
    target_path: str


class VolumePublishFailed(Event):
    type: Literal["VolumePublishFailed"] = "VolumePublishFailed"
    volume_id: str
    target_path: str
    reason: str


class VolumeUnpublishing(Event):
    type: Literal["VolumeUnpublishing"] = "VolumeUnpublishing"
    volume_id: str
    target_path: str


class VolumeUnpublished(Event):
    type: Literal["VolumeUnpublished"] = "VolumeUnpublished"
    volume_id: str
    target_path: str


class VolumeExpandingOnNode(Event):
    """NodeExpandVolume: the loop device is refreshed and the filesystem grown to the image's size."""

    type: Literal["VolumeExpandingOnNode"] = "VolumeExpandingOnNode"
    volume_id: str
    capacity_bytes: int  # the image's size when decided


class VolumeExpandedOnNode(Event):
    type: Literal["VolumeExpandedOnNode"] = "VolumeExpandedOnNode"
    volume_id: str
    capacity_bytes: int  # the device's size after the refresh


class VolumeExpandOnNodeFailed(Event):
    type: Literal["VolumeExpandOnNodeFailed"] = "VolumeExpandOnNodeFailed"
    volume_id: str
    reason: str


class VolumeIoLimitsApplied(Event):
    """The volume's I/O limits, as the provisioner has them, were written for ``device`` in this
    node's cgroup (``services.nodeagent.csi.iolimits``). One event, no intent: writing the rules
    is idempotent, and on start every staged volume's limits are written again."""

    type: Literal["VolumeIoLimitsApplied"] = "VolumeIoLimitsApplied"
    volume_id: str
    device: str
    limits: dict[str, int] = Field(default_factory=dict)


NodeVolumeEvent = Annotated[
    VolumeStaging
    | VolumeStaged
    | VolumeStageFailed
    | VolumeUnstaging
    | VolumeUnstaged
    | VolumePublishing
    | VolumePublished
    | VolumePublishFailed
    | VolumeUnpublishing
    | VolumeUnpublished
    | VolumeExpandingOnNode
    | VolumeExpandedOnNode
    | VolumeExpandOnNodeFailed
    | VolumeIoLimitsApplied,
    Field(discriminator="type"),
]
NODE_VOLUME_EVENTS: TypeAdapter[NodeVolumeEvent] = TypeAdapter(NodeVolumeEvent)
