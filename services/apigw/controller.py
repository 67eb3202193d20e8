"""CSI Controller service: each call is checked field by field, then sent to the
provisioner (volumes, snapshots, capacity) or the attacher (publish, unpublish)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int64Value

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import (
    Attachments,
    Capability,
    CapacityInfo,
    ContentSource,
    ControllerPublish,
    ControllerUnpublish,
    CreateSnapshot,
    CreateVolume,
    DeleteSnapshot,
    DeleteVolume,
    ExpandResult,
    ExpandVolume,
    GetAttachments,
    GetCapacity,
    GetSnapshot,
    GetVolume,
    ListSnapshots,
    ListVolumes,
    ModifyVolume,
    PublishContext,
    SnapshotInfo,
    SnapshotPage,
    VolumeInfo,
    VolumePage,
)
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc
from volplane.errors import InvalidArgument
from volplane.volumes import DEFAULT_FS_TYPE, FS_TYPE_KEY, SINGLE_NODE_MODES, io_limits

from . import convert
from .errors import grpc_errors

RPC = csi.ControllerServiceCapability.RPC
CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.PUBLISH_UNPUBLISH_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.CREATE_DELETE_SNAPSHOT,
    RPC.LIST_SNAPSHOTS,
    RPC.CLONE_VOLUME,
    RPC.PUBLISH_READONLY,
    RPC.EXPAND_VOLUME,
    RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.GET_VOLUME,
    RPC.VOLUME_CONDITION,
    RPC.SINGLE_NODE_MULTI_WRITER,
    RPC.GET_SNAPSHOT,
    RPC.MODIFY_VOLUME,
)


class Controller(csi_pb2_grpc.ControllerServicer):
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def _ask(self, subject: str, cmd: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._bus.request(subject, cmd, convert.deadline(context))

    async def CreateVolume(self, request: csi.CreateVolumeRequest, context: grpc.aio.ServicerContext) -> csi.CreateVolumeResponse:
        async with grpc_errors(context):
            name = convert.identifier("name", request.name)
            caps = convert.capabilities(request.volume_capabilities, "volume_capabilities")
            cmd = CreateVolume(
                name=name,
                required_bytes=request.capacity_range.required_bytes,
                limit_bytes=request.capacity_range.limit_bytes,
                capabilities=caps,
                parameters=dict(request.parameters),
                content_source=_content_source(request),
                requisite=tuple(dict(t.segments) for t in request.accessibility_requirements.requisite),
                preferred=tuple(dict(t.segments) for t in request.accessibility_requirements.preferred),
                mutable_parameters=dict(request.mutable_parameters),
            )
            info = VolumeInfo.model_validate(await self._ask(subjects.CREATE_VOLUME, cmd, context))
            return csi.CreateVolumeResponse(volume=_volume(info))

    async def DeleteVolume(self, request: csi.DeleteVolumeRequest, context: grpc.aio.ServicerContext) -> csi.DeleteVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            await self._ask(subjects.DELETE_VOLUME, DeleteVolume(volume_id=vid), context)
            return csi.DeleteVolumeResponse()

    async def ControllerPublishVolume(
        self, request: csi.ControllerPublishVolumeRequest, context: grpc.aio.ServicerContext
    ) -> csi.ControllerPublishVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            node = convert.identifier("node_id", request.node_id)
            if not request.HasField("volume_capability"):
                raise InvalidArgument("volume_capability: required")
            cap = convert.capability(request.volume_capability, "volume_capability")
            cmd = ControllerPublish(volume_id=vid, node_id=node, capability=cap, readonly=request.readonly)
            ctx = PublishContext.model_validate(await self._ask(subjects.CONTROLLER_PUBLISH, cmd, context))
            return csi.ControllerPublishVolumeResponse(publish_context=ctx.context)

    async def ControllerUnpublishVolume(
        self, request: csi.ControllerUnpublishVolumeRequest, context: grpc.aio.ServicerContext
    ) -> csi.ControllerUnpublishVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            await self._ask(subjects.CONTROLLER_UNPUBLISH, ControllerUnpublish(volume_id=vid, node_id=request.node_id), context)
            return csi.ControllerUnpublishVolumeResponse()

    async def ValidateVolumeCapabilities(
        self, request: csi.ValidateVolumeCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi.ValidateVolumeCapabilitiesResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            caps = convert.capabilities(request.volume_capabilities, "volume_capabilities")
            info = VolumeInfo.model_validate(await self._ask(subjects.GET_VOLUME, GetVolume(volume_id=vid), context))
            unsupported = _unsupported(info, caps) or _unsupported_mutable(request.mutable_parameters)
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
            page = VolumePage.model_validate(await self._ask(subjects.LIST_VOLUMES, cmd, context))
            published = await self._published(tuple(v.volume_id for v in page.volumes), context)
            return csi.ListVolumesResponse(
                entries=[
                    csi.ListVolumesResponse.Entry(
                        volume=_volume(v),
                        status=csi.ListVolumesResponse.VolumeStatus(published_node_ids=published.get(v.volume_id, ())),
                    )
                    for v in page.volumes
                ],
                next_token=page.next_token,
            )

    async def ControllerGetVolume(self, request: csi.ControllerGetVolumeRequest, context: grpc.aio.ServicerContext) -> csi.ControllerGetVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            info = VolumeInfo.model_validate(await self._ask(subjects.GET_VOLUME, GetVolume(volume_id=vid), context))
            published = await self._published((vid,), context)
            return csi.ControllerGetVolumeResponse(
                volume=_volume(info),
                status=csi.ControllerGetVolumeResponse.VolumeStatus(
                    published_node_ids=published.get(vid, ()),
                    volume_condition=csi.VolumeCondition(abnormal=info.abnormal, message=info.condition or "volume is healthy"),
                ),
            )

    async def GetCapacity(self, request: csi.GetCapacityRequest, context: grpc.aio.ServicerContext) -> csi.GetCapacityResponse:
        async with grpc_errors(context):
            for i, cap in enumerate(request.volume_capabilities):
                convert.capability(cap, f"volume_capabilities[{i}]")
            topology = dict(request.accessible_topology.segments) if request.HasField("accessible_topology") else None
            cmd = GetCapacity(parameters=dict(request.parameters), topology=topology)
            info = CapacityInfo.model_validate(await self._ask(subjects.GET_CAPACITY, cmd, context))
            return csi.GetCapacityResponse(
                available_capacity=info.available_bytes,
                maximum_volume_size=Int64Value(value=info.maximum_volume_size),
                minimum_volume_size=Int64Value(value=info.minimum_volume_size),
            )

    async def ControllerExpandVolume(
        self, request: csi.ControllerExpandVolumeRequest, context: grpc.aio.ServicerContext
    ) -> csi.ControllerExpandVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            if not request.HasField("capacity_range"):
                raise InvalidArgument("capacity_range: required")
            cmd = ExpandVolume(volume_id=vid, required_bytes=request.capacity_range.required_bytes, limit_bytes=request.capacity_range.limit_bytes)
            result = ExpandResult.model_validate(await self._ask(subjects.EXPAND_VOLUME, cmd, context))
            return csi.ControllerExpandVolumeResponse(capacity_bytes=result.capacity_bytes, node_expansion_required=result.node_expansion_required)

    async def ControllerModifyVolume(
        self, request: csi.ControllerModifyVolumeRequest, context: grpc.aio.ServicerContext
    ) -> csi.ControllerModifyVolumeResponse:
        """New I/O limits for a volume (volplane.volumes.io_limits), applied where it is staged."""
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            # No parameters change nothing, and are OK: csi-sanity sends its configured
            # mutable parameters, none unless --csi.testvolumemutableparameters is given.
            cmd = ModifyVolume(volume_id=vid, mutable_parameters=dict(request.mutable_parameters))
            await self._ask(subjects.MODIFY_VOLUME, cmd, context)
            return csi.ControllerModifyVolumeResponse()

    async def CreateSnapshot(self, request: csi.CreateSnapshotRequest, context: grpc.aio.ServicerContext) -> csi.CreateSnapshotResponse:
        async with grpc_errors(context):
            name = convert.identifier("name", request.name)
            source = convert.identifier("source_volume_id", request.source_volume_id)
            cmd = CreateSnapshot(name=name, source_volume_id=source, parameters=dict(request.parameters))
            info = SnapshotInfo.model_validate(await self._ask(subjects.CREATE_SNAPSHOT, cmd, context))
            return csi.CreateSnapshotResponse(snapshot=_snapshot(info))

    async def DeleteSnapshot(self, request: csi.DeleteSnapshotRequest, context: grpc.aio.ServicerContext) -> csi.DeleteSnapshotResponse:
        async with grpc_errors(context):
            sid = convert.identifier("snapshot_id", request.snapshot_id)
            await self._ask(subjects.DELETE_SNAPSHOT, DeleteSnapshot(snapshot_id=sid), context)
            return csi.DeleteSnapshotResponse()

    async def ListSnapshots(self, request: csi.ListSnapshotsRequest, context: grpc.aio.ServicerContext) -> csi.ListSnapshotsResponse:
        async with grpc_errors(context):
            cmd = ListSnapshots(
                max_entries=request.max_entries,
                starting_token=request.starting_token,
                snapshot_id=request.snapshot_id,
                source_volume_id=request.source_volume_id,
            )
            page = SnapshotPage.model_validate(await self._ask(subjects.LIST_SNAPSHOTS, cmd, context))
            return csi.ListSnapshotsResponse(
                entries=[csi.ListSnapshotsResponse.Entry(snapshot=_snapshot(s)) for s in page.snapshots],
                next_token=page.next_token,
            )

    async def GetSnapshot(self, request: csi.GetSnapshotRequest, context: grpc.aio.ServicerContext) -> csi.GetSnapshotResponse:
        async with grpc_errors(context):
            sid = convert.identifier("snapshot_id", request.snapshot_id)
            info = SnapshotInfo.model_validate(await self._ask(subjects.GET_SNAPSHOT, GetSnapshot(snapshot_id=sid), context))
            return csi.GetSnapshotResponse(snapshot=_snapshot(info))

    async def ControllerGetCapabilities(
        self, request: csi.ControllerGetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi.ControllerGetCapabilitiesResponse:
        return csi.ControllerGetCapabilitiesResponse(
            capabilities=[csi.ControllerServiceCapability(rpc=RPC(type=t)) for t in CAPABILITIES]
        )

    async def _published(self, volume_ids: tuple[str, ...], context: grpc.aio.ServicerContext) -> dict[str, tuple[str, ...]]:
        if not volume_ids:
            return {}
        return Attachments.model_validate(await self._ask(subjects.GET_ATTACHMENTS, GetAttachments(volume_ids=volume_ids), context)).nodes


def _content_source(request: csi.CreateVolumeRequest) -> ContentSource | None:
    if not request.HasField("volume_content_source"):
        return None
    src = request.volume_content_source
    kind = src.WhichOneof("type")
    if kind == "snapshot":
        return ContentSource(kind="snapshot", id=convert.identifier("volume_content_source.snapshot.snapshot_id", src.snapshot.snapshot_id))
    if kind == "volume":
        return ContentSource(kind="volume", id=convert.identifier("volume_content_source.volume.volume_id", src.volume.volume_id))
    raise InvalidArgument("volume_content_source: one of snapshot or volume is required")


def _volume(info: VolumeInfo) -> csi.Volume:
    vol = csi.Volume(
        volume_id=info.volume_id,
        capacity_bytes=info.capacity_bytes,
        volume_context=info.volume_context,
        accessible_topology=[csi.Topology(segments=t) for t in info.accessible_topology],
    )
    if info.content_source is not None:
        if info.content_source.kind == "snapshot":
            vol.content_source.snapshot.snapshot_id = info.content_source.id
        else:
            vol.content_source.volume.volume_id = info.content_source.id
    return vol


def snapshot_message(info: SnapshotInfo) -> csi.Snapshot:
    """The CSI Snapshot of a reply (the group controller's members too)."""
    return _snapshot(info)


def _snapshot(info: SnapshotInfo) -> csi.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(info.creation_time_ns)
    return csi.Snapshot(
        snapshot_id=info.snapshot_id,
        source_volume_id=info.source_volume_id,
        size_bytes=info.size_bytes,
        creation_time=created,
        ready_to_use=info.ready_to_use,
        group_snapshot_id=info.group_snapshot_id,
    )


def _unsupported_mutable(parameters: Mapping[str, str]) -> str:
    """Why volplane cannot confirm these mutable parameters (volplane.volumes.io_limits), or ''."""
    try:
        io_limits(parameters)
    except InvalidArgument as exc:
        return exc.message
    return ""


def _unsupported(info: VolumeInfo, caps: tuple[Capability, ...]) -> str:
    """Why the volume cannot serve ``caps``, or '' when it can."""
    have = {c.access_type for c in info.capabilities}
    # The volume context names the filesystem the volume was created with (volplane.volumes.fs_type_of).
    fs = info.volume_context.get(FS_TYPE_KEY, DEFAULT_FS_TYPE)
    for cap in caps:
        if cap.access_type not in have:
            return f"volume {info.volume_id} was created for {', '.join(sorted(have))} access, not {cap.access_type}"
        if cap.access_mode not in SINGLE_NODE_MODES:
            return f"access mode {cap.access_mode} is not supported (single-node modes only)"
        if cap.access_type == "mount" and cap.fs_type and cap.fs_type != fs:
            return f"volume {info.volume_id} holds {fs}, not {cap.fs_type}"
    return ""
