"""Events of the volume aggregate (subject ``vp.ev.volume.<volume_id>``).

An intent (``VolumeCreating``, ``VolumeDeleting``) is recorded before the image file
is touched and a result after, so that on restart an intent without its result is
finished (see ``services.provisioner.app.ProvisionerApp.recover``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from volplane.commands import Capability
from volplane.events import Event


class VolumeCreating(Event):
    type: Literal["VolumeCreating"] = "VolumeCreating"
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str] = Field(default_factory=dict)


class VolumeCreated(Event):
    type: Literal["VolumeCreated"] = "VolumeCreated"
    volume_id: str


class VolumeCreateFailed(Event):
    type: Literal["VolumeCreateFailed"] = "VolumeCreateFailed"
    volume_id: str
    reason: str


class VolumeDeleting(Event):
    type: Literal["VolumeDeleting"] = "VolumeDeleting"
    volume_id: str


class VolumeDeleted(Event):
    type: Literal["VolumeDeleted"] = "VolumeDeleted"
    volume_id: str


VolumeEvent = Annotated[
    VolumeCreating | VolumeCreated | VolumeCreateFailed | VolumeDeleting | VolumeDeleted,
    Field(discriminator="type"),
]
VOLUME_EVENTS: TypeAdapter[VolumeEvent] = TypeAdapter(VolumeEvent)
