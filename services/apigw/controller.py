"""CSI Controller service: each call is checked, then sent to the provisioner."""

from __future__ import annotations

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import (
    CapacityInfo,
    CreateVolume,
    DeleteVolume,
    GetCapacity,
    GetVolume,
    ListVolumes,
    VolumeInfo,
    VolumePage,
)
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc
from volplane.errors import InvalidArgument

from . import convert
from .errors import grpc_errors

RPC = csi.ControllerServiceCapability.RPC
CAPABILITIES = (RPC.CREATE_DELETE_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY)


class Controller(csi_pb2_grpc.ControllerServicer):
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def CreateVolume(self, request: csi.CreateVolumeRequest, context: grpc.aio.ServicerContext) -> csi.CreateVolumeResponse:
        async with grpc_errors(context):
            name = convert.identifier("name", request.name)
            caps = convert.capabilities(request.volume_capabilities, "volume_capabilities")
            if request.HasField("volume_content_source"):
                raise InvalidArgument("volume_content_source: snapshots and clones are not supported yet")
            cmd = CreateVolume(
                name=name,
                required_bytes=request.capacity_range.required_bytes,
                limit_bytes=request.capacity_range.limit_bytes,
                capabilities=caps,
                parameters=dict(request.parameters),
            )
            info = VolumeInfo.model_validate(await self._bus.request(subjects.CREATE_VOLUME, cmd, convert.deadline(context)))
            return csi.CreateVolumeResponse(volume=_volume(info))

    async def DeleteVolume(self, request: csi.DeleteVolumeRequest, context: grpc.aio.ServicerContext) -> csi.DeleteVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            await self._bus.request(subjects.DELETE_VOLUME, DeleteVolume(volume_id=vid), convert.deadline(context))
            return csi.DeleteVolumeResponse()

    async def ValidateVolumeCapabilities(
        self, request: csi.ValidateVolumeCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi.ValidateVolumeCapabilitiesResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            caps = convert.capabilities(request.volume_capabilities, "volume_capabilities")
            info = VolumeInfo.model_validate(await self._bus.request(subjects.GET_VOLUME, GetVolume(volume_id=vid), convert.deadline(context)))
            unsupported = _unsupported(info, caps)
            if unsupported:
                return csi.ValidateVolumeCapabilitiesResponse(message=unsupported)
            return csi.ValidateVolumeCapabilitiesResponse(
                confirmed=csi.ValidateVolumeCapabilitiesResponse.Confirmed(
                    volume_context=request.volume_context,
                    volume_capabilities=request.volume_capabilities,
                    parameters=request.parameters,
                    mutable_parameters=request.mutable_parameters,
                )
            )

    async def ListVolumes(self, request: csi.ListVolumesRequest, context: grpc.aio.ServicerContext) -> csi.ListVolumesResponse:
        async with grpc_errors(context):
            cmd = ListVolumes(max_entries=request.max_entries, starting_token=request.starting_token)
            page = VolumePage.model_validate(await self._bus.request(subjects.LIST_VOLUMES, cmd, convert.deadline(context)))
            return csi.ListVolumesResponse(
                entries=[csi.ListVolumesResponse.Entry(volume=_volume(v)) for v in page.volumes],
                next_token=page.next_token,
            )

    async def GetCapacity(self, request: csi.GetCapacityRequest, context: grpc.aio.ServicerContext) -> csi.GetCapacityResponse:
        async with grpc_errors(context):
            for i, cap in enumerate(request.volume_capabilities):
                convert.capability(cap, f"volume_capabilities[{i}]")
            cmd = GetCapacity(parameters=dict(request.parameters))
            info = CapacityInfo.model_validate(await self._bus.request(subjects.GET_CAPACITY, cmd, convert.deadline(context)))
            return csi.GetCapacityResponse(
                available_capacity=info.available_bytes,
                maximum_volume_size=Int64Value(value=info.maximum_volume_size),
                minimum_volume_size=Int64Value(value=info.minimum_volume_size),
            )

    async def ControllerGetCapabilities(
        self, request: csi.ControllerGetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi.ControllerGetCapabilitiesResponse:
        return csi.ControllerGetCapabilitiesResponse(
            capabilities=[csi.ControllerServiceCapability(rpc=RPC(type=t)) for t in CAPABILITIES]
        )


def _volume(info: VolumeInfo) -> csi.Volume:
    return csi.Volume(volume_id=info.volume_id, capacity_bytes=info.capacity_bytes, volume_context=info.volume_context)


def _unsupported(info: VolumeInfo, caps: tuple) -> str:  # type: ignore[type-arg]
    """Why the volume cannot serve ``caps``, or '' when it can."""
    have = {c.access_type for c in info.capabilities}
    fs = info.volume_context.get("fsType", "ext4")
    for cap in caps:
        if cap.access_type not in have:
            return f"volume {info.volume_id} was created for {', '.join(sorted(have))} access, not {cap.access_type}"
        if cap.access_mode not in (1, 2, 6, 7):
            return f"access mode {cap.access_mode} is not supported (single-node modes only)"
        if cap.access_type == "mount" and cap.fs_type and cap.fs_type != fs:
            return f"volume {info.volume_id} holds {fs}, not {cap.fs_type}"
    return ""
