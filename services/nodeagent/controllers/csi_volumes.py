"""The CSI volume plugin of the volume manager: MountDevice, SetUp, TearDown and UnmountDevice
through a CSI driver's Node service, as the kubelet's csi plugin does.

    csi = CsiVolumes(paths, informer, storage, node="node-1", own_endpoint=cfg.csi_endpoint)
    context = csi.publish_context(volume)                    # WaitingForAttach until the VA is attached
    staging, staged_now = await csi.mount_device(volume, context)
    mounted_now = await csi.set_up(pod, volume, staging, context)
    await csi.tear_down(pod_volume_on_disk); await csi.unmount_device(device_on_disk)
    await csi.node_expand(volume, target, 2 * 2**30)         # NodeExpandVolume where it is published

Each step writes its record (``vol_data.json``) before it calls the driver, so whatever is
mounted can be unmounted after a crash even when its pod and PV objects are gone. Every
call the driver gets is idempotent in CSI, which is what makes redoing a step safe.
"""

from __future__ import annotations

import logging
from pathlib import Path

from volplane.csi import csi_pb2 as csi
from volplane.csiclient import CsiClient, capability, client_for
from volplane.errors import FailedPrecondition, Internal
from volplane.resources import names
from volplane.resources.drivers import attach_required, node_endpoint
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME
from volplane.resources.objects import Obj, Pod, VolumeAttachment

from ..adapters.storage import HostStorage
from .desired_state import CSI, DesiredVolume
from .kubelet_paths import DeviceOnDisk, KubeletDir, PodVolumeOnDisk

__all__ = ["CsiVolumes", "WaitingForAttach"]

log = logging.getLogger(__name__)

CSIDRIVER = BY_NAME["CSIDriver"]
VA = BY_NAME["VolumeAttachment"]
STAGE_UNSTAGE = csi.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME


class WaitingForAttach(Exception):
    """The volume is not attached to this node yet (its VolumeAttachment says so)."""


class CsiVolumes:
    def __init__(self, paths: KubeletDir, informer: Informer, storage: HostStorage, *, node: str, own_endpoint: str) -> None:
        self._paths = paths
        self._informer = informer
        self._storage = storage
        self._node = node
        self._own_endpoint = own_endpoint
        self._stages: dict[str, bool] = {}
        self._expands: dict[str, bool] = {}

    # -- which driver, where --------------------------------------------------------

    def endpoint(self, driver: str, recorded: str = "") -> str:
        """The node endpoint of ``driver``: its CSIDriver's volplane.io/node-endpoint, else our own
        socket for csi.volplane.io, else the one recorded when the volume was mounted."""
        endpoint = node_endpoint(self._informer, driver, self._node, self._own_endpoint)
        if endpoint is not None:
            return endpoint
        if recorded:
            return recorded
        raise FailedPrecondition(
            f'CSI driver "{driver}" is not registered on node {self._node}: no CSIDriver object with annotation {names.ANN_NODE_ENDPOINT}'
        )

    def attach_required(self, driver: str) -> bool:
        return attach_required(self._informer, driver)

    async def stages(self, client: CsiClient) -> bool:
        """Whether the driver has STAGE_UNSTAGE_VOLUME (NodeGetCapabilities, asked once per endpoint)."""
        if client.endpoint not in self._stages:
            self._stages[client.endpoint] = await client.node_stages()
        return self._stages[client.endpoint]

    def publish_context(self, volume: DesiredVolume) -> dict[str, str]:
        """The attachment's metadata, once the driver needs no attach or the VolumeAttachment is attached."""
        if not self.attach_required(volume.driver):
            return {}
        va_name = names.va_name(volume.spec_name, volume.driver, self._node)
        va = VolumeAttachment.get(self._informer.get, va_name)
        if va is not None and va.status.get("attached") is True:
            return va.attachment_metadata
        error = va.error("attachError") if va is not None else ""
        why = f": {error}" if error else ""
        raise WaitingForAttach(f"waiting for volume {volume.spec_name} to be attached to node {self._node} (VolumeAttachment {va_name}){why}")

    # -- mount ----------------------------------------------------------------------

    def target_of(self, pod_uid: str, volume: DesiredVolume) -> Path:
        return self._paths.pod_volume(pod_uid, CSI, volume.spec_name, block=volume.block)

    def global_mount_of(self, volume: DesiredVolume) -> Path:
        return self._paths.global_mount(volume.driver, volume.handle)

    def set_up_done(self, target: Path) -> bool:
        # Every sync of a pod asks this for each of its volumes: one statx, not a read of
        # mountinfo (a line per mount on the host: O(volumes) per pod sync).
        return self._storage.is_mounted(target)

    async def mount_device(self, volume: DesiredVolume, publish_context: dict[str, str]) -> tuple[str, bool]:
        """NodeStageVolume to the global mount, once per volume per node; returns (staging path or
        "" for a driver that does not stage, whether it was staged now). The caller has put the
        volume in Node status.volumesInUse first."""
        endpoint = self.endpoint(volume.driver)
        client = client_for(endpoint)
        global_mount = self.global_mount_of(volume)
        record = {
            "driverName": volume.driver, "volumeHandle": volume.handle, "specVolID": volume.spec_name,
            "uniqueName": volume.unique_name, "block": volume.block, "endpoint": endpoint, "nodeName": self._node,
        }
        if self._paths.read_device_data(global_mount) != record:
            self._paths.write_device_data(global_mount, record)
        if not await self.stages(client):
            return "", False
        if not volume.block and self._storage.mount_point(global_mount) is not None:
            return str(global_mount), False
        await client.node_stage(
            volume.handle, str(global_mount), access_mode=volume.access_mode, block=volume.block, fs_type=self._fs_type(volume),
            mount_flags=list(volume.mount_options), publish_context=publish_context, volume_context=self._context(volume),
        )
        return str(global_mount), True

    async def set_up(self, pod: Obj, volume: DesiredVolume, staging: str, publish_context: dict[str, str]) -> bool:
        """NodePublishVolume into the pod's volume directory; False when it is mounted already."""
        owner = Pod(pod)
        target = self.target_of(owner.uid, volume)
        if self.set_up_done(target):
            return False
        endpoint = self.endpoint(volume.driver)
        record = {
            "driverName": volume.driver, "volumeHandle": volume.handle, "specVolID": volume.spec_name, "volumeName": volume.name,
            "uniqueName": volume.unique_name, "block": volume.block, "endpoint": endpoint, "nodeName": self._node,
            "podUID": owner.uid, "podNamespace": owner.namespace, "podName": owner.name,
        }
        # The driver creates the target itself (a directory, or the file a block device is bound
        # onto) and removes it again on NodeUnpublish; only its parents are ours to make.
        if self._paths.read_pod_volume_data(target) != record:
            self._paths.write_pod_volume_data(target, record)
        await client_for(endpoint).node_publish(
            volume.handle, staging, str(target), access_mode=volume.access_mode, block=volume.block, fs_type=self._fs_type(volume),
            mount_flags=list(volume.mount_options), readonly=volume.readonly, publish_context=publish_context,
            volume_context=self._context(volume),
        )
        return True

    # -- expand -----------------------------------------------------------------------

    async def expands(self, driver: str) -> bool:
        """Whether the driver's node plugin has EXPAND_VOLUME (asked once per endpoint)."""
        client = client_for(self.endpoint(driver))
        if client.endpoint not in self._expands:
            self._expands[client.endpoint] = await client.node_expands()
        return self._expands[client.endpoint]

    async def node_expand(self, volume: DesiredVolume, target: Path, size: int) -> int:
        """NodeExpandVolume for the volume published at ``target`` (and staged at its global
        mount, for a driver that stages), to ``size`` bytes: the kubelet's csi plugin's
        NodeExpand. Returns the capacity the driver reports (0: it did not say)."""
        client = client_for(self.endpoint(volume.driver))
        staging = str(self.global_mount_of(volume)) if await self.stages(client) else ""
        cap = capability(volume.access_mode, block=volume.block, fs_type=self._fs_type(volume), mount_flags=list(volume.mount_options))
        return await client.node_expand(volume.handle, str(target), staging, size, cap)

    # -- unmount ----------------------------------------------------------------------

    async def tear_down(self, volume: PodVolumeOnDisk) -> None:
        """NodeUnpublishVolume from the pod's volume directory (the caller removes what is left)."""
        driver, handle = volume.data.get("driverName"), volume.data.get("volumeHandle")
        if not driver or not handle:
            if self._storage.mount_point(volume.path) is None:
                return
            raise Internal(f"{volume.path} is mounted but has no record ({volume.path.name}.vol_data.json) naming its CSI driver and volume")
        client = client_for(self.endpoint(driver, str(volume.data.get("endpoint") or "")))
        await client.node_unpublish(handle, str(volume.path))
        if self._storage.mount_point(volume.path) is not None:
            raise Internal(f"{volume.path} is still mounted after NodeUnpublishVolume")

    async def unmount_device(self, device: DeviceOnDisk) -> None:
        """NodeUnstageVolume from the global mount (the caller removes what is left)."""
        driver, handle = device.data.get("driverName"), device.data.get("volumeHandle")
        if not driver or not handle:
            if self._storage.mount_point(device.path) is None:
                return
            raise Internal(f"{device.path} is mounted but has no record (vol_data.json) naming its CSI driver and volume")
        client = client_for(self.endpoint(driver, str(device.data.get("endpoint") or "")))
        if await self.stages(client):
            await client.node_unstage(handle, str(device.path))
        if self._storage.mount_point(device.path) is not None:
            raise Internal(f"{device.path} is still mounted after NodeUnstageVolume")

    @staticmethod
    def _fs_type(volume: DesiredVolume) -> str:
        return "" if volume.block else str(volume.source.get("fsType") or "")

    @staticmethod
    def _context(volume: DesiredVolume) -> dict[str, str]:
        return {str(k): str(v) for k, v in (volume.source.get("volumeAttributes") or {}).items()}
