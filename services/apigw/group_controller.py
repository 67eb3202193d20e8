"""CSI GroupController service: volume group snapshots, each call checked field by field
and sent to the provisioner, which takes one consistent cut across the group's volumes
(``services/provisioner/csi/group_snapshots.py``).

    stub = csi_pb2_grpc.GroupControllerStub(channel)
    group = stub.CreateVolumeGroupSnapshot(csi.CreateVolumeGroupSnapshotRequest(name="g", source_volume_ids=[a, b])).group_snapshot

Secrets are accepted and ignored: no volplane operation needs one.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import CreateGroupSnapshot, DeleteGroupSnapshot, GetGroupSnapshot, GroupSnapshotInfo
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc

from . import convert
from .controller import snapshot_message
from .errors import grpc_errors

RPC = csi.GroupControllerServiceCapability.RPC
CAPABILITIES = (RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,)


class GroupController(csi_pb2_grpc.GroupControllerServicer):
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def _ask(self, subject: str, cmd: Any, context: grpc.aio.ServicerContext) -> GroupSnapshotInfo:
        return GroupSnapshotInfo.model_validate(await self._bus.request(subject, cmd, convert.deadline(context)))

    async def GroupControllerGetCapabilities(
        self, request: csi.GroupControllerGetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> csi.GroupControllerGetCapabilitiesResponse:
        return csi.GroupControllerGetCapabilitiesResponse(
            capabilities=[csi.GroupControllerServiceCapability(rpc=RPC(type=t)) for t in CAPABILITIES]
        )

    async def CreateVolumeGroupSnapshot(
        self, request: csi.CreateVolumeGroupSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> csi.CreateVolumeGroupSnapshotResponse:
        async with grpc_errors(context):
            name = convert.identifier("name", request.name)
            sources = _ids("source_volume_ids", request.source_volume_ids, required=True)
            cmd = CreateGroupSnapshot(name=name, source_volume_ids=sources, parameters=dict(request.parameters))
            info = await self._ask(subjects.CREATE_GROUP_SNAPSHOT, cmd, context)
            return csi.CreateVolumeGroupSnapshotResponse(group_snapshot=_group(info))

    async def GetVolumeGroupSnapshot(
        self, request: csi.GetVolumeGroupSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> csi.GetVolumeGroupSnapshotResponse:
        async with grpc_errors(context):
            gid = convert.identifier("group_snapshot_id", request.group_snapshot_id)
            cmd = GetGroupSnapshot(group_snapshot_id=gid, snapshot_ids=_ids("snapshot_ids", request.snapshot_ids))
            info = await self._ask(subjects.GET_GROUP_SNAPSHOT, cmd, context)
            return csi.GetVolumeGroupSnapshotResponse(group_snapshot=_group(info))

    async def DeleteVolumeGroupSnapshot(
        self, request: csi.DeleteVolumeGroupSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> csi.DeleteVolumeGroupSnapshotResponse:
        async with grpc_errors(context):
            gid = convert.identifier("group_snapshot_id", request.group_snapshot_id)
            cmd = DeleteGroupSnapshot(group_snapshot_id=gid, snapshot_ids=_ids("snapshot_ids", request.snapshot_ids))
            await self._bus.request(subjects.DELETE_GROUP_SNAPSHOT, cmd, convert.deadline(context))
            return csi.DeleteVolumeGroupSnapshotResponse()


def _ids(field: str, values: Any, *, required: bool = False) -> tuple[str, ...]:
    """A list of ids, each checked as an id. The spec calls ``snapshot_ids`` REQUIRED, yet
    volplane does not need it to find a group's members: given, it must match them
    (INVALID_ARGUMENT otherwise); empty, there is nothing to check."""
    ids = tuple(convert.identifier(f"{field}[{i}]", v) for i, v in enumerate(values))
    if required and not ids:
        convert.required(field, "")
    return ids


def _group(info: GroupSnapshotInfo) -> csi.VolumeGroupSnapshot:
    created = Timestamp()
    created.FromNanoseconds(info.creation_time_ns)
    return csi.VolumeGroupSnapshot(
        group_snapshot_id=info.group_snapshot_id,
        snapshots=[snapshot_message(s) for s in info.snapshots],
        creation_time=created,
        ready_to_use=info.ready_to_use,
    )
