"""Events of the attachment aggregate (subject ``vp.ev.attachment.<volume_id>``).

One aggregate per volume holds every node the volume is published to, so the log's
expected-sequence check is what keeps a single-node volume on one node, even across
attacher replicas.

There is no intent event (no ``VolumeAttaching``): ControllerPublish has no side effect
on any host — an image is a file that every node of its pool can already reach, and the
nodeagent does the real work (loop device, mount) at NodeStage. Recording the decision
is the whole operation, so a crash can only lose a decision that was never answered.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from volplane.events import Event
from volplane.volumes import StoredCapability


class VolumeAttached(Event):
    type: Literal["VolumeAttached"] = "VolumeAttached"
    volume_id: str
    node_id: str
    capability: StoredCapability  # decide_publish converts the command's Capability
    readonly: bool = False
    # The publish_context handed to the CO, kept so a repeated publish answers the same.
    context: dict[str, str] = Field(default_factory=dict)


class VolumeDetached(Event):
    type: Literal["VolumeDetached"] = "VolumeDetached"
    volume_id: str
    node_id: str


AttachmentEvent = Annotated[VolumeAttached | VolumeDetached, Field(discriminator="type")]
ATTACHMENT_EVENTS: TypeAdapter[AttachmentEvent] = TypeAdapter(AttachmentEvent)
