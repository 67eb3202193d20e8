"""The ``node`` fixture for CSI Node tests: real images, loop devices and mounts under
pytest's tmp_path, undone through the CSI API when the test ends — and, as a backstop that
does not trust the driver, by hand, failing the test if it had to."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import Csi, loops_backing, mount_cap, mount_points, needs_root
from volplane.csi import csi_pb2 as csi
from volplane.nodes import SHARED_POOL

pytestmark = needs_root

MiB = 2**20
TIMEOUT = 60
Mode = csi.VolumeCapability.AccessMode


def pools_root(stack: Stack) -> Path:
    return stack.run_dir / "pools"


def pool_dirs(stack: Stack) -> list[Path]:
    """This node's pool, then the shared pool."""
    local = stack.env.get("VOLPLANE_POOL_DIR") or pools_root(stack) / stack.node_id
    shared = stack.env.get("VOLPLANE_SHARED_POOL_DIR") or pools_root(stack) / SHARED_POOL
    return [Path(local), Path(shared)]










class Node:
    """CSI calls that remember what they did, so the fixture can undo it."""

    def __init__(self, client: Csi, stack: Stack, tmp_path: Path) -> None:
        self.client = client
        self.stack = stack
        self.tmp = tmp_path
        self.volumes: list[str] = []
        self.staged: list[tuple[str, Path]] = []
        self.published: list[tuple[str, Path]] = []

    def create(
        self, required: int = 64 * MiB, cap: csi.VolumeCapability | None = None, attach: bool = True, parameters: dict[str, str] | None = None
    ) -> csi.Volume:
        """A new volume, published to this node (ControllerPublishVolume) as a CO does before staging."""
        req = csi.CreateVolumeRequest(
            name=f"node-{uuid.uuid4().hex}",
            capacity_range=csi.CapacityRange(required_bytes=required),
            volume_capabilities=[cap or mount_cap()],
            parameters=parameters or {},
        )
        vol = self.client.controller.CreateVolume(req, timeout=TIMEOUT).volume
        self.volumes.append(vol.volume_id)
        if attach:
            self.attach(vol.volume_id, cap)
        return vol

    def attach(self, vid: str, cap: csi.VolumeCapability | None = None) -> None:
        req = csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=self.stack.node_id, volume_capability=cap or mount_cap())
        self.client.controller.ControllerPublishVolume(req, timeout=TIMEOUT)

    def detach(self, vid: str) -> None:
        req = csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=self.stack.node_id)
        self.client.controller.ControllerUnpublishVolume(req, timeout=TIMEOUT)

    def image(self, vol: csi.Volume) -> Path:
        """The volume's image, in whichever pool the provisioner put it."""
        candidates = [d / f"{vol.volume_id}.img" for d in pool_dirs(self.stack)]
        return next((c for c in candidates if c.exists()), candidates[0])

    def staging_dir(self, name: str = "staging") -> Path:
        path = self.tmp / name
        path.mkdir()
        return path

    def stage(self, vid: str, staging: Path, cap: csi.VolumeCapability | None = None, context: dict[str, str] | None = None) -> None:
        self.client.node.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=vid,
                staging_target_path=str(staging),
                volume_capability=cap or mount_cap(),
                volume_context=context or {},
            ),
            timeout=TIMEOUT,
        )
        # Recorded only on success: a refused stage must not be undone (that unstage would be refused in turn);
        # anything a failed call left on the host is found by the backstop in cleanup.
        if (vid, staging) not in self.staged:
            self.staged.append((vid, staging))

    def publish(self, vid: str, staging: Path, target: Path, readonly: bool = False, cap: csi.VolumeCapability | None = None) -> None:
        self.client.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=vid,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=cap or mount_cap(),
                readonly=readonly,
            ),
            timeout=TIMEOUT,
        )
        if (vid, target) not in self.published:
            self.published.append((vid, target))

    def unpublish(self, vid: str, target: Path) -> None:
        self.client.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target)), timeout=TIMEOUT)

    def unstage(self, vid: str, staging: Path) -> None:
        self.client.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)), timeout=TIMEOUT)

    def delete(self, vid: str) -> None:
        """ControllerUnpublish from this node, then DeleteVolume (which refuses a published volume)."""
        self.detach(vid)
        self.client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)

    def loops(self) -> list[str]:
        return [line for line in loops_backing(pools_root(self.stack)) if any(v in line for v in self.volumes)]

    def cleanup(self) -> list[str]:
        """Undo through CSI, then by hand; returns what the driver left behind."""
        problems: list[str] = []
        for step, items in ((self.unpublish, self.published), (self.unstage, self.staged)):
            for vid, path in reversed(items):
                try:
                    step(vid, path)
                except grpc.RpcError as exc:
                    problems.append(f"{step.__name__}({path}): {exc.code()} {exc.details()}")
        for vid in self.volumes:
            try:
                self.delete(vid)
            except grpc.RpcError as exc:
                problems.append(f"delete({vid}): {exc.code()} {exc.details()}")
        for point in reversed([p for p in mount_points() if p == str(self.tmp) or p.startswith(f"{self.tmp}/")]):
            problems.append(f"left mounted: {point}")
            subprocess.run(["umount", "-l", point], check=False)
        for line in self.loops():
            problems.append(f"left attached: {line}")
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        return problems


@pytest.fixture
def node(client: Csi, stack: Stack, tmp_path: Path) -> Iterator[Node]:
    n = Node(client, stack, tmp_path)
    try:
        yield n
    finally:
        problems = n.cleanup()
    assert problems == [], "cleanup through CSI failed or left host state behind"


@pytest.fixture
def staged(node: Node) -> tuple[csi.Volume, Path]:
    """A created volume staged at tmp_path/staging."""
    vol = node.create()
    staging = node.staging_dir()
    node.stage(vol.volume_id, staging, context=dict(vol.volume_context))
    return vol, staging
