"""A CSI client: how the standalone control loops call a storage plugin — volplane's own
apigw or any other CSI driver's socket — over real gRPC.

    csi = CsiClient("unix:///run/volplane/csi.sock")
    handle, capacity, context, topology = await csi.create_volume("pvc-…", 10 * 2**30, access_mode="ReadWriteOnce")
    await csi.node_stage(handle, staging_path, access_mode="ReadWriteOnce", fs_type="ext4")

A driver's error status comes back as volplane's error of the same code
(``volplane.errors.error_from_grpc``), naming the driver and the call. Every call is a
client span (``csi.v1.Controller/CreateVolume``) that carries the current trace context to
the driver, so a control loop's sync and the driver's work are one trace.
"""

from __future__ import annotations

from typing import Any

import grpc

from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc
from volplane.errors import VolplaneError, error_from_grpc
from volplane.telemetry import grpc_client_interceptors

__all__ = ["CsiClient", "client_for"]

# Kubernetes' mapping of access modes to CSI's.
_MODES = {
    "ReadWriteOnce": csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER,
    "ReadWriteOncePod": csi.VolumeCapability.AccessMode.SINGLE_NODE_SINGLE_WRITER,
    "ReadOnlyMany": csi.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
    "ReadWriteMany": csi.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER,
}
_TIMEOUT = 120.0
# csi-attacher's default --timeout. A publish answers in milliseconds; one whose request
# died with a process (or with nats-server) is better retried soon than waited on.
_ATTACH_TIMEOUT = 15.0
_CLIENTS: dict[str, CsiClient] = {}


def client_for(endpoint: str) -> CsiClient:
    """One client (one channel) per endpoint per process."""
    if endpoint not in _CLIENTS:
        _CLIENTS[endpoint] = CsiClient(endpoint)
    return _CLIENTS[endpoint]


def capability(access_mode: str, *, block: bool = False, fs_type: str = "", mount_flags: list[str] | None = None) -> csi.VolumeCapability:
    mode = csi.VolumeCapability.AccessMode(mode=_MODES.get(access_mode, csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
    if block:
        return csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=mode)
    mount = csi.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=mount_flags or [])
    return csi.VolumeCapability(mount=mount, access_mode=mode)


def _content_source(source: tuple[str, str] | None) -> csi.VolumeContentSource | None:
    if source is None:
        return None
    kind, ident = source
    if kind == "snapshot":
        return csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=ident))
    return csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=ident))


class CsiClient:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._channel = grpc.aio.insecure_channel(endpoint, interceptors=grpc_client_interceptors())
        self.identity = csi_pb2_grpc.IdentityStub(self._channel)
        self.controller = csi_pb2_grpc.ControllerStub(self._channel)
        self.node = csi_pb2_grpc.NodeStub(self._channel)
        self.group = csi_pb2_grpc.GroupControllerStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, name: str, method: Any, request: Any, timeout: float = _TIMEOUT) -> Any:
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            err: VolplaneError = error_from_grpc(exc.code().name, f"{name} on {self.endpoint}: {exc.code().name}: {exc.details()}")
            raise err from None

    async def driver_name(self) -> str:
        info = await self._call("GetPluginInfo", self.identity.GetPluginInfo, csi.GetPluginInfoRequest(), 10.0)
        name: str = info.name
        return name

    async def node_stages(self) -> bool:
        """Whether the node plugin has STAGE_UNSTAGE_VOLUME (NodeGetCapabilities)."""
        reply = await self._call("NodeGetCapabilities", self.node.NodeGetCapabilities, csi.NodeGetCapabilitiesRequest(), 10.0)
        stage = csi.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME
        return any(c.rpc.type == stage for c in reply.capabilities)

    async def node_expands(self) -> bool:
        """Whether the node plugin has EXPAND_VOLUME (NodeGetCapabilities)."""
        reply = await self._call("NodeGetCapabilities", self.node.NodeGetCapabilities, csi.NodeGetCapabilitiesRequest(), 10.0)
        expand = csi.NodeServiceCapability.RPC.EXPAND_VOLUME
        return any(c.rpc.type == expand for c in reply.capabilities)

    async def create_volume(
        self,
        name: str,
        capacity: int,
        *,
        access_mode: str,
        block: bool = False,
        fs_type: str = "",
        mount_flags: list[str] | None = None,
        parameters: dict[str, str] | None = None,
        node_topology: dict[str, str] | None = None,
        mutable_parameters: dict[str, str] | None = None,
        content_source: tuple[str, str] | None = None,
    ) -> csi.Volume:
        """``content_source``: ("snapshot", snapshot id) to restore, ("volume", volume id) to clone."""
        topology = None
        if node_topology:
            seg = csi.Topology(segments=node_topology)
            topology = csi.TopologyRequirement(requisite=[seg], preferred=[seg])
        request = csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=capacity),
            volume_capabilities=[capability(access_mode, block=block, fs_type=fs_type, mount_flags=mount_flags)],
            parameters=parameters or {},
            accessibility_requirements=topology,
            mutable_parameters=mutable_parameters or {},
            volume_content_source=_content_source(content_source),
        )
        volume: csi.Volume = (await self._call("CreateVolume", self.controller.CreateVolume, request)).volume
        return volume

    async def delete_volume(self, handle: str) -> None:
        await self._call("DeleteVolume", self.controller.DeleteVolume, csi.DeleteVolumeRequest(volume_id=handle))

    async def controller_publish(self, handle: str, node_id: str, *, access_mode: str, block: bool, fs_type: str, readonly: bool, volume_context: dict[str, str]) -> dict[str, str]:
        request = csi.ControllerPublishVolumeRequest(
            volume_id=handle,
            node_id=node_id,
            volume_capability=capability(access_mode, block=block, fs_type=fs_type),
            readonly=readonly,
            volume_context=volume_context,
        )
        reply = await self._call("ControllerPublishVolume", self.controller.ControllerPublishVolume, request, _ATTACH_TIMEOUT)
        return dict(reply.publish_context)

    async def controller_unpublish(self, handle: str, node_id: str) -> None:
        request = csi.ControllerUnpublishVolumeRequest(volume_id=handle, node_id=node_id)
        await self._call("ControllerUnpublishVolume", self.controller.ControllerUnpublishVolume, request, _ATTACH_TIMEOUT)

    async def node_stage(self, handle: str, staging_path: str, *, access_mode: str, block: bool, fs_type: str, mount_flags: list[str], publish_context: dict[str, str], volume_context: dict[str, str]) -> None:
        request = csi.NodeStageVolumeRequest(
            volume_id=handle,
            staging_target_path=staging_path,
            volume_capability=capability(access_mode, block=block, fs_type=fs_type, mount_flags=mount_flags),
            publish_context=publish_context,
            volume_context=volume_context,
        )
        await self._call("NodeStageVolume", self.node.NodeStageVolume, request)

    async def node_unstage(self, handle: str, staging_path: str) -> None:
        request = csi.NodeUnstageVolumeRequest(volume_id=handle, staging_target_path=staging_path)
        await self._call("NodeUnstageVolume", self.node.NodeUnstageVolume, request)

    async def node_publish(self, handle: str, staging_path: str, target_path: str, *, access_mode: str, block: bool, fs_type: str, mount_flags: list[str], readonly: bool, publish_context: dict[str, str], volume_context: dict[str, str]) -> None:
        request = csi.NodePublishVolumeRequest(
            volume_id=handle,
            staging_target_path=staging_path,
            target_path=target_path,
            volume_capability=capability(access_mode, block=block, fs_type=fs_type, mount_flags=mount_flags),
            readonly=readonly,
            publish_context=publish_context,
            volume_context=volume_context,
        )
        await self._call("NodePublishVolume", self.node.NodePublishVolume, request)

    async def node_unpublish(self, handle: str, target_path: str) -> None:
        request = csi.NodeUnpublishVolumeRequest(volume_id=handle, target_path=target_path)
        await self._call("NodeUnpublishVolume", self.node.NodeUnpublishVolume, request)

    async def controller_expand(self, handle: str, required_bytes: int, capability: csi.VolumeCapability) -> tuple[int, bool]:
        """(capacity in bytes, whether NodeExpandVolume is required) of ControllerExpandVolume."""
        request = csi.ControllerExpandVolumeRequest(
            volume_id=handle, capacity_range=csi.CapacityRange(required_bytes=required_bytes), volume_capability=capability,
        )
        reply = await self._call("ControllerExpandVolume", self.controller.ControllerExpandVolume, request)
        return int(reply.capacity_bytes), bool(reply.node_expansion_required)

    async def controller_modify(self, handle: str, mutable_parameters: dict[str, str]) -> None:
        request = csi.ControllerModifyVolumeRequest(volume_id=handle, mutable_parameters=mutable_parameters)
        await self._call("ControllerModifyVolume", self.controller.ControllerModifyVolume, request)

    async def node_expand(self, handle: str, volume_path: str, staging_path: str, required_bytes: int, capability: csi.VolumeCapability) -> int:
        """The capacity NodeExpandVolume reports (0: the driver did not say)."""
        request = csi.NodeExpandVolumeRequest(
            volume_id=handle, volume_path=volume_path, staging_target_path=staging_path,
            capacity_range=csi.CapacityRange(required_bytes=required_bytes), volume_capability=capability,
        )
        reply = await self._call("NodeExpandVolume", self.node.NodeExpandVolume, request)
        return int(reply.capacity_bytes)

    async def create_snapshot(self, name: str, source_volume_id: str, parameters: dict[str, str] | None = None) -> csi.Snapshot:
        """CreateSnapshot; the same name gives the same snapshot back (CSI's idempotency)."""
        request = csi.CreateSnapshotRequest(name=name, source_volume_id=source_volume_id, parameters=parameters or {})
        snapshot: csi.Snapshot = (await self._call("CreateSnapshot", self.controller.CreateSnapshot, request)).snapshot
        return snapshot

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._call("DeleteSnapshot", self.controller.DeleteSnapshot, csi.DeleteSnapshotRequest(snapshot_id=snapshot_id))

    async def find_snapshot(self, snapshot_id: str) -> csi.Snapshot | None:
        """The snapshot of this id as ListSnapshots reports it (how external-snapshotter checks
        one), or None when the driver knows no such snapshot."""
        request = csi.ListSnapshotsRequest(snapshot_id=snapshot_id)
        reply = await self._call("ListSnapshots", self.controller.ListSnapshots, request)
        found = [e.snapshot for e in reply.entries if e.snapshot.snapshot_id == snapshot_id]
        return found[0] if found else None

    async def create_group_snapshot(self, name: str, volume_ids: list[str], parameters: dict[str, str] | None = None) -> csi.VolumeGroupSnapshot:
        request = csi.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=volume_ids, parameters=parameters or {})
        reply = await self._call("CreateVolumeGroupSnapshot", self.group.CreateVolumeGroupSnapshot, request)
        group: csi.VolumeGroupSnapshot = reply.group_snapshot
        return group

    async def delete_group_snapshot(self, group_snapshot_id: str, snapshot_ids: list[str]) -> None:
        request = csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=group_snapshot_id, snapshot_ids=snapshot_ids)
        await self._call("DeleteVolumeGroupSnapshot", self.group.DeleteVolumeGroupSnapshot, request)

    async def get_group_snapshot(self, group_snapshot_id: str, snapshot_ids: list[str]) -> csi.VolumeGroupSnapshot:
        request = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=group_snapshot_id, snapshot_ids=snapshot_ids)
        reply = await self._call("GetVolumeGroupSnapshot", self.group.GetVolumeGroupSnapshot, request)
        group: csi.VolumeGroupSnapshot = reply.group_snapshot
        return group
