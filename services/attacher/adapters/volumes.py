"""The provisioner, as the attacher sees it: does a volume exist, and where does it live.

    volumes = ProvisionerVolumes(bus)
    info = await volumes.get("3f2a…")      # VolumeInfo, or NotFound from the provisioner
"""

from __future__ import annotations

from typing import Protocol

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import GetVolume, VolumeInfo

__all__ = ["ProvisionerVolumes", "Volumes"]


class Volumes(Protocol):
    async def get(self, volume_id: str) -> VolumeInfo: ...


class ProvisionerVolumes:
    def __init__(self, bus: Bus, timeout: float = 30.0) -> None:
        self._bus = bus
        self._timeout = timeout

    async def get(self, volume_id: str) -> VolumeInfo:
        reply = await self._bus.request(subjects.GET_VOLUME, GetVolume(volume_id=volume_id), timeout=self._timeout)
        return VolumeInfo.model_validate(reply)
