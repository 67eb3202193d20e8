"""The whole life of a volume the way a CO drives it (and the conformance suite checks
it): every mutating call repeated ten times gives the same answer and one effect, on
real loop devices and mounts; data survives snapshot and restore; a single-node volume
is never attached to two nodes of a two-node stack."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import Csi, loops_backing, mount_cap, mounts_at, mounts_under, needs_root
from volplane.csi import csi_pb2 as csi
from volplane.nodes import TOPOLOGY_KEY

MiB = 2**20
TIMEOUT = 60
REPEAT = 10




def node_topology(client: Csi) -> csi.TopologyRequirement:
    info = client.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT)
    return csi.TopologyRequirement(requisite=[info.accessible_topology])


@needs_root
def test_every_step_repeated_ten_times_is_one_effect_and_undone_leaves_nothing(client: Csi, stack: Stack, tmp_path: Path) -> None:
    c, n = client.controller, client.node
    node_id = n.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id
    staging, target = tmp_path / "staging", tmp_path / "mount" / "target"
    staging.mkdir()
    target.parent.mkdir()
    cap = mount_cap()
    name = f"life-{uuid.uuid4().hex}"
    create = csi.CreateVolumeRequest(
        name=name, capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[cap], accessibility_requirements=node_topology(client)
    )
    vols = {c.CreateVolume(create, timeout=TIMEOUT).volume.SerializeToString() for _ in range(REPEAT)}
    assert len(vols) == 1
    vol = c.CreateVolume(create, timeout=TIMEOUT).volume
    vid = vol.volume_id
    try:
        publish = csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=node_id, volume_capability=cap, volume_context=vol.volume_context)
        contexts = {tuple(sorted(c.ControllerPublishVolume(publish, timeout=TIMEOUT).publish_context.items())) for _ in range(REPEAT)}
        assert len(contexts) == 1
        ctx = dict(contexts.pop())
        stage = csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=str(staging), volume_capability=cap, publish_context=ctx, volume_context=vol.volume_context)
        node_publish = csi.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=str(staging), target_path=str(target), volume_capability=cap, publish_context=ctx
        )
        for _ in range(REPEAT):
            n.NodeStageVolume(stage, timeout=TIMEOUT)
        for _ in range(REPEAT):
            n.NodePublishVolume(node_publish, timeout=TIMEOUT)
        assert (mounts_at(staging), mounts_at(target)) == (1, 1)
        assert len(loops_backing(stack.pool_dir(node_id))) == 1
        listed = {e.volume.volume_id: list(e.status.published_node_ids) for e in c.ListVolumes(csi.ListVolumesRequest(), timeout=TIMEOUT).entries}
        assert listed[vid] == [node_id]
        (target / "hello").write_text("world")
        stats = n.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=str(target)), timeout=TIMEOUT)
        assert stats.usage and stats.usage[0].total > 0 and not stats.volume_condition.abnormal

        # Deleting a published volume is refused; nothing is lost.
        with pytest.raises(grpc.RpcError) as refused:
            c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        for _ in range(REPEAT):
            n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target)), timeout=TIMEOUT)
        assert not target.exists()
        for _ in range(REPEAT):
            n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)), timeout=TIMEOUT)
        for _ in range(REPEAT):
            c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id), timeout=TIMEOUT)
        assert mounts_under(tmp_path) == [] and loops_backing(stack.pool_dir(node_id)) == []
        debugfs = subprocess.run(["debugfs", "-R", "cat /hello", str(stack.pool_dir(node_id) / f"{vid}.img")], capture_output=True, text=True)
        assert debugfs.stdout == "world"
    finally:
        for _ in range(REPEAT):
            c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
    assert not (stack.pool_dir(node_id) / f"{vid}.img").exists()
    # What the conformance suite's cleanup does after a volume is gone: all OK.
    n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target)), timeout=TIMEOUT)
    n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)), timeout=TIMEOUT)
    c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id), timeout=TIMEOUT)


class Flow:
    """Create → publish → stage → publish for one node; undone in reverse by ``close``."""

    def __init__(self, client: Csi, root: Path) -> None:
        self.c, self.n, self.root = client.controller, client.node, root
        self.node_id = self.n.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id
        self.undo: list[tuple[str, str, str]] = []

    def volume(self, **kw: object) -> csi.Volume:
        req = csi.CreateVolumeRequest(name=f"v-{uuid.uuid4().hex}", capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[mount_cap()], **kw)
        vol = self.c.CreateVolume(req, timeout=TIMEOUT).volume
        self.undo.append(("delete", vol.volume_id, ""))
        return vol

    def mount(self, vol: csi.Volume, label: str) -> Path:
        staging, target = self.root / f"{label}-staging", self.root / f"{label}-pod" / "vol"
        staging.mkdir()
        target.parent.mkdir()
        ctx = self.c.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=self.node_id, volume_capability=mount_cap()), timeout=TIMEOUT
        ).publish_context
        self.undo.append(("controller-unpublish", vol.volume_id, ""))
        self.n.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap(), publish_context=ctx), timeout=TIMEOUT)
        self.undo.append(("unstage", vol.volume_id, str(staging)))
        self.n.NodePublishVolume(
            csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), target_path=str(target), volume_capability=mount_cap()),
            timeout=TIMEOUT,
        )
        self.undo.append(("unpublish", vol.volume_id, str(target)))
        return target

    def unmount(self, vol: csi.Volume) -> None:
        for step in [u for u in reversed(self.undo) if u[1] == vol.volume_id and u[0] != "delete"]:
            self._do(step)
            self.undo.remove(step)

    def close(self) -> None:
        for step in reversed(self.undo):
            self._do(step)

    def _do(self, step: tuple[str, str, str]) -> None:
        kind, vid, path = step
        if kind == "unpublish":
            self.n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=path), timeout=TIMEOUT)
        elif kind == "unstage":
            self.n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=path), timeout=TIMEOUT)
        elif kind == "controller-unpublish":
            self.c.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=self.node_id), timeout=TIMEOUT)
        elif kind == "delete-snapshot":
            self.c.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=vid), timeout=TIMEOUT)
        else:
            self.c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)


@pytest.fixture
def flow(client: Csi, tmp_path: Path) -> Iterator[Flow]:
    f = Flow(client, tmp_path)
    yield f
    f.close()
    assert mounts_under(tmp_path) == []


@needs_root
def test_file_written_through_a_mount_comes_back_in_a_volume_restored_from_its_snapshot(flow: Flow) -> None:
    src = flow.volume()
    (flow.mount(src, "src") / "data.txt").write_text("snapshotted")
    snap = flow.c.CreateSnapshot(csi.CreateSnapshotRequest(name=f"s-{uuid.uuid4().hex}", source_volume_id=src.volume_id), timeout=TIMEOUT).snapshot
    flow.undo.append(("delete-snapshot", snap.snapshot_id, ""))
    restored = flow.volume(volume_content_source=csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)))
    assert (flow.mount(restored, "restored") / "data.txt").read_text() == "snapshotted"


@needs_root
def test_clone_of_a_mounted_volume_has_its_files_and_then_goes_its_own_way(flow: Flow) -> None:
    src = flow.volume()
    src_mount = flow.mount(src, "src")
    (src_mount / "shared.txt").write_text("v1")
    clone = flow.volume(volume_content_source=csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id)))
    (src_mount / "shared.txt").write_text("v2 in the source only")
    clone_mount = flow.mount(clone, "clone")
    assert (clone_mount / "shared.txt").read_text() == "v1"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("two"), env={"VOLPLANE_POOL_CAPACITY": "8Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "8Gi"}, nodes=2)
    s.start()
    yield s
    s.stop()


@needs_root
def test_single_node_volume_is_never_attached_to_a_second_node(two_nodes: Stack, tmp_path: Path) -> None:
    one, two = Csi(two_nodes.csi_endpoint), Csi(two_nodes.endpoint_of("node-2"))
    try:
        assert two.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id == "node-2"
        vol = one.controller.CreateVolume(csi.CreateVolumeRequest(name=f"rwo-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()]), timeout=TIMEOUT).volume
        first = csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="node-1", volume_capability=mount_cap())
        one.controller.ControllerPublishVolume(first, timeout=TIMEOUT)
        second = csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="node-2", volume_capability=mount_cap())
        with pytest.raises(grpc.RpcError) as info:
            one.controller.ControllerPublishVolume(second, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "node-1" in info.value.details()
        # Node 2 refuses to stage what is not attached to it.
        staging = tmp_path / "staging"
        staging.mkdir()
        with pytest.raises(grpc.RpcError) as info:
            two.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Moved: unpublished from node 1, then node 2 may have it.
        one.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="node-1"), timeout=TIMEOUT)
        one.controller.ControllerPublishVolume(second, timeout=TIMEOUT)
        two.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=TIMEOUT)
        two.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)), timeout=TIMEOUT)
        one.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="node-2"), timeout=TIMEOUT)
        one.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
        assert mounts_under(tmp_path) == []
    finally:
        one.close()
        two.close()


@needs_root
def test_local_volume_of_node_two_is_refused_to_node_one(two_nodes: Stack) -> None:
    one = Csi(two_nodes.csi_endpoint)
    try:
        req = csi.CreateVolumeRequest(
            name=f"local-{uuid.uuid4().hex}",
            volume_capabilities=[mount_cap()],
            accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments={TOPOLOGY_KEY: "node-2"})]),
        )
        vol = one.controller.CreateVolume(req, timeout=TIMEOUT).volume
        assert vol.volume_context["pool"] == "node-2"
        with pytest.raises(grpc.RpcError) as info:
            one.controller.ControllerPublishVolume(
                csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="node-1", volume_capability=mount_cap()), timeout=TIMEOUT
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        one.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
    finally:
        one.close()


@needs_root
def test_expand_before_staging_then_node_expand_after_publishing_is_ok_and_df_sees_it(flow: Flow) -> None:
    """The conformance suite's order: ControllerExpand, stage, publish, NodeExpand on the
    target. The filesystem is grown while staging (unmounted), so NodeExpand finds it done —
    on any node, with or without the privilege online ext4 growth needs."""
    vol = flow.volume()
    grown = flow.c.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=256 * MiB)), timeout=TIMEOUT
    )
    assert grown.capacity_bytes == 256 * MiB and grown.node_expansion_required
    target = flow.mount(vol, "grown")
    done = flow.n.NodeExpandVolume(
        csi.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=str(target), capacity_range=csi.CapacityRange(required_bytes=256 * MiB)), timeout=TIMEOUT
    )
    assert done.capacity_bytes == 256 * MiB
    st = os.statvfs(target)
    assert st.f_blocks * st.f_frsize > 200 * MiB  # ext4 keeps some for itself; 64 MiB before


@needs_root
def test_unsupported_fs_type_in_the_volume_context_is_refused_and_leaves_the_node_healthy(flow: Flow, stack: Stack) -> None:
    vol = flow.volume()
    staging = flow.root / "staging"
    staging.mkdir()
    ctx = flow.c.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=flow.node_id, volume_capability=mount_cap()), timeout=TIMEOUT
    ).publish_context
    flow.undo.append(("controller-unpublish", vol.volume_id, ""))
    bad = csi.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap(), publish_context=ctx, volume_context={"fsType": "btrfs"}
    )
    with pytest.raises(grpc.RpcError) as info:
        flow.n.NodeStageVolume(bad, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert loops_backing(stack.pool_dir("shared")) == [] and mounts_at(staging) == 0
    # The same volume stages fine with a supported type, and unstages.
    flow.n.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap(), publish_context=ctx), timeout=TIMEOUT)
    flow.n.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)), timeout=TIMEOUT)


@needs_root
def test_staging_on_a_pool_directory_or_above_it_is_refused(flow: Flow, stack: Stack) -> None:
    vol = flow.volume()
    for path in (stack.pool_dir("shared"), stack.pool_dir("shared").parent):
        req = csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(path), volume_capability=mount_cap())
        with pytest.raises(grpc.RpcError) as info:
            flow.n.NodeStageVolume(req, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
    assert mounts_at(stack.pool_dir("shared")) == 0


@needs_root
def test_a_target_the_co_made_is_left_after_unpublish_and_one_the_driver_made_is_removed(flow: Flow) -> None:
    vol = flow.volume()
    made_by_driver = flow.mount(vol, "driver")  # Flow.mount does not create the target.
    flow.unmount(vol)
    assert not made_by_driver.exists()

    made_by_co = flow.root / "co-pod" / "vol"
    made_by_co.parent.mkdir()
    made_by_co.mkdir()  # as the kubelet does before NodePublishVolume
    staging = flow.root / "co-staging"
    staging.mkdir()
    ctx = flow.c.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=flow.node_id, volume_capability=mount_cap()), timeout=TIMEOUT
    ).publish_context
    flow.undo.append(("controller-unpublish", vol.volume_id, ""))
    flow.n.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap(), publish_context=ctx), timeout=TIMEOUT)
    flow.undo.append(("unstage", vol.volume_id, str(staging)))
    publish = csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), target_path=str(made_by_co), volume_capability=mount_cap())
    flow.n.NodePublishVolume(publish, timeout=TIMEOUT)
    assert mounts_at(made_by_co) == 1
    flow.n.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(made_by_co)), timeout=TIMEOUT)
    assert made_by_co.is_dir() and mounts_at(made_by_co) == 0
