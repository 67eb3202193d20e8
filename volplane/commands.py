"""The messages services send one another: commands and their replies.

These are the contract between apigw (or any other caller) and the services, so they
live in the shared core. Commands are verbs; events, which are each service's own
business, are past tense and live in that service's ``domain`` package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from volplane.events import Frozen

__all__ = [
    "Capability",
    "CreateVolume",
    "DeleteVolume",
    "GetVolume",
    "ListVolumes",
    "GetCapacity",
    "VolumeInfo",
    "VolumePage",
    "CapacityInfo",
    "StageVolume",
    "UnstageVolume",
    "PublishVolume",
    "UnpublishVolume",
    "Done",
]

AccessType = Literal["mount", "block"]


class Capability(Frozen):
    """One CSI VolumeCapability: how the volume is accessed and by whom.

    ``access_mode`` holds the CSI AccessMode.Mode number (1 = SINGLE_NODE_WRITER, ...).
    """

    access_type: AccessType = "mount"
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    access_mode: int = 1


class CreateVolume(Frozen):
    name: str
    required_bytes: int = 0
    limit_bytes: int = 0
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str] = Field(default_factory=dict)


class DeleteVolume(Frozen):
    volume_id: str


class GetVolume(Frozen):
    volume_id: str


class ListVolumes(Frozen):
    max_entries: int = 0
    starting_token: str = ""


class GetCapacity(Frozen):
    parameters: dict[str, str] = Field(default_factory=dict)


class VolumeInfo(Frozen):
    volume_id: str
    name: str
    capacity_bytes: int
    pool: str
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str]
    volume_context: dict[str, str]


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
