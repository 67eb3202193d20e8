"""CSI Node service: each call is checked, then sent to this node's nodeagent."""

from __future__ import annotations

import logging

import grpc

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import (
    Capability,
    GetNodeLimits,
    GetVolumeStats,
    NodeExpand,
    NodeExpanded,
    NodeLimits,
    PublishVolume,
    StageVolume,
    UnpublishVolume,
    UnstageVolume,
    VolumeStats,
)
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc
from volplane.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from volplane.nodes import TOPOLOGY_KEY

from . import convert
from .errors import grpc_errors

log = logging.getLogger(__name__)

RPC = csi.NodeServiceCapability.RPC
CAPABILITIES = (
    RPC.STAGE_UNSTAGE_VOLUME,
    RPC.GET_VOLUME_STATS,
    RPC.EXPAND_VOLUME,
    RPC.VOLUME_CONDITION,
    RPC.SINGLE_NODE_MULTI_WRITER,
)


class Node(csi_pb2_grpc.NodeServicer):
    def __init__(self, bus: Bus, node_id: str, max_volumes: int = 0) -> None:
        """``max_volumes``: what NodeGetInfo reports while no nodeagent answers for this node."""
        self._bus = bus
        self._node = node_id
        self._max_volumes = max_volumes

    def _subject(self, verb: str) -> str:
        return subjects.node_command(self._node, verb)

    async def NodeStageVolume(self, request: csi.NodeStageVolumeRequest, context: grpc.aio.ServicerContext) -> csi.NodeStageVolumeResponse:
        async with grpc_errors(context):
            cmd = StageVolume(
                volume_id=convert.identifier("volume_id", request.volume_id),
                staging_path=convert.required("staging_target_path", request.staging_target_path),
                capability=_capability(request),
                volume_context=dict(request.volume_context),
                publish_context=dict(request.publish_context),
            )
            await self._bus.request(self._subject(subjects.NODE_STAGE), cmd, convert.deadline(context))
            return csi.NodeStageVolumeResponse()

    async def NodeUnstageVolume(self, request: csi.NodeUnstageVolumeRequest, context: grpc.aio.ServicerContext) -> csi.NodeUnstageVolumeResponse:
        async with grpc_errors(context):
            cmd = UnstageVolume(
                volume_id=convert.identifier("volume_id", request.volume_id),
                staging_path=convert.required("staging_target_path", request.staging_target_path),
            )
            await self._bus.request(self._subject(subjects.NODE_UNSTAGE), cmd, convert.deadline(context))
            return csi.NodeUnstageVolumeResponse()

    async def NodePublishVolume(self, request: csi.NodePublishVolumeRequest, context: grpc.aio.ServicerContext) -> csi.NodePublishVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            target = convert.required("target_path", request.target_path)
            cap = _capability(request)
            if not request.staging_target_path:
                # We advertise STAGE_UNSTAGE_VOLUME, so the CO must have staged first.
                raise FailedPrecondition("staging_target_path: required, this plugin stages volumes")
            cmd = PublishVolume(
                volume_id=vid,
                staging_path=request.staging_target_path,
                target_path=target,
                capability=cap,
                readonly=request.readonly,
                volume_context=dict(request.volume_context),
            )
            await self._bus.request(self._subject(subjects.NODE_PUBLISH), cmd, convert.deadline(context))
            return csi.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(self, request: csi.NodeUnpublishVolumeRequest, context: grpc.aio.ServicerContext) -> csi.NodeUnpublishVolumeResponse:
        async with grpc_errors(context):
            cmd = UnpublishVolume(
                volume_id=convert.identifier("volume_id", request.volume_id),
                target_path=convert.required("target_path", request.target_path),
            )
            await self._bus.request(self._subject(subjects.NODE_UNPUBLISH), cmd, convert.deadline(context))
            return csi.NodeUnpublishVolumeResponse()

    async def NodeExpandVolume(self, request: csi.NodeExpandVolumeRequest, context: grpc.aio.ServicerContext) -> csi.NodeExpandVolumeResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            path = _volume_path(request.volume_path)
            cmd = NodeExpand(
                volume_id=vid,
                volume_path=path,
                staging_path=request.staging_target_path,
                required_bytes=request.capacity_range.required_bytes,
                limit_bytes=request.capacity_range.limit_bytes,
            )
            done = NodeExpanded.model_validate(await self._bus.request(self._subject(subjects.NODE_EXPAND), cmd, convert.deadline(context)))
            return csi.NodeExpandVolumeResponse(capacity_bytes=done.capacity_bytes)

    async def NodeGetVolumeStats(self, request: csi.NodeGetVolumeStatsRequest, context: grpc.aio.ServicerContext) -> csi.NodeGetVolumeStatsResponse:
        async with grpc_errors(context):
            vid = convert.identifier("volume_id", request.volume_id)
            path = _volume_path(request.volume_path)
            cmd = GetVolumeStats(volume_id=vid, volume_path=path, staging_path=request.staging_target_path)
            stats = VolumeStats.model_validate(await self._bus.request(self._subject(subjects.NODE_STATS), cmd, convert.deadline(context)))
            Unit = csi.VolumeUsage.Unit
            usage = [csi.VolumeUsage(unit=Unit.BYTES, total=stats.total_bytes, used=stats.used_bytes, available=stats.available_bytes)]
            if not stats.block:
                usage.append(csi.VolumeUsage(unit=Unit.INODES, total=stats.total_inodes, used=stats.used_inodes, available=stats.available_inodes))
            return csi.NodeGetVolumeStatsResponse(
                usage=usage,
                volume_condition=csi.VolumeCondition(abnormal=stats.abnormal, message=stats.condition or "volume is healthy"),
            )

    async def NodeGetCapabilities(self, request: csi.NodeGetCapabilitiesRequest, context: grpc.aio.ServicerContext) -> csi.NodeGetCapabilitiesResponse:
        return csi.NodeGetCapabilitiesResponse(capabilities=[csi.NodeServiceCapability(rpc=RPC(type=t)) for t in CAPABILITIES])

    async def NodeGetInfo(self, request: csi.NodeGetInfoRequest, context: grpc.aio.ServicerContext) -> csi.NodeGetInfoResponse:
        async with grpc_errors(context):
            # The nodeagent decides what this node can hold (services/nodeagent/csi/limits.py)
            # and enforces it at NodeStage, so the number reported is the number enforced.
            try:
                reply = await self._bus.request(self._subject(subjects.NODE_LIMITS), GetNodeLimits(), min(convert.deadline(context), 10.0))
                limit = NodeLimits.model_validate(reply).max_volumes
            except Unavailable as exc:
                # No nodeagent on this node (yet): the configured limit (0: none) keeps the plugin
                # registrable; the nodeagent still enforces its own once it runs.
                log.warning("NodeGetInfo: %s; reporting the configured max_volumes_per_node %d", exc.message, self._max_volumes)
                limit = self._max_volumes
            return csi.NodeGetInfoResponse(
                node_id=self._node,
                max_volumes_per_node=limit,
                accessible_topology=csi.Topology(segments={TOPOLOGY_KEY: self._node}),
            )


def _capability(request: csi.NodeStageVolumeRequest | csi.NodePublishVolumeRequest) -> Capability:
    if not request.HasField("volume_capability"):
        convert.required("volume_capability", "")
    return convert.capability(request.volume_capability, "volume_capability")


def _volume_path(path: str) -> str:
    if not path:
        raise InvalidArgument("volume_path: required")
    if not path.startswith("/"):
        # No volume is ever published at a relative path, so it cannot be found there.
        raise NotFound(f"volume_path: no volume is published at {path[:256]!r}")
    return path
