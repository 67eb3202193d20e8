"""Volume group snapshots, GetSnapshot and max_volumes_per_node through the CSI socket, on
real mounts: data written through each member's staging mount must come back out of the
volume restored from that member's snapshot, and the limit NodeGetInfo reports must be the
one NodeStage and ControllerPublish enforce (RESOURCE_EXHAUSTED beyond it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import nats
import pytest

from devstack.launcher import Stack
from services.provisioner.domain.events import GroupSnapshotCreating, MemberSnapshotCreating
from services.provisioner.domain.group_snapshot import group_snapshot_id_for, member_snapshot_id
from tests.co import append_event
from tests.conftest import Csi, code_of, mount_cap, needs_root
from tests.integration.node_helpers import Node, node  # noqa: F401 - fixtures are used by name
from volplane import subjects
from volplane.bus import Bus
from volplane.commands import FreezeVolumes, FrozenVolumes
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

pytestmark = needs_root

MiB = 2**20
TIMEOUT = 60
GROUP_RPC = csi.GroupControllerServiceCapability.RPC


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def group(client: Csi) -> rpc.GroupControllerStub:
    return rpc.GroupControllerStub(client.channel)


class Groups:
    """Creates group snapshots and deletes them when the test ends (before the node fixture
    deletes the volumes)."""

    def __init__(self, stub: rpc.GroupControllerStub) -> None:
        self.stub = stub
        self.made: list[str] = []

    def create(self, sources: list[str], name: str | None = None, parameters: dict[str, str] | None = None) -> csi.VolumeGroupSnapshot:
        req = csi.CreateVolumeGroupSnapshotRequest(name=name or unique("group"), source_volume_ids=sources, parameters=parameters or {})
        made = self.stub.CreateVolumeGroupSnapshot(req, timeout=TIMEOUT).group_snapshot
        if made.group_snapshot_id not in self.made:
            self.made.append(made.group_snapshot_id)
        return made

    def cleanup(self) -> None:
        for gid in reversed(self.made):
            self.stub.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid), timeout=TIMEOUT)


@pytest.fixture
def groups(group: rpc.GroupControllerStub, node: Node) -> Iterator[Groups]:
    g = Groups(group)
    yield g
    g.cleanup()


def staged_volume(node: Node, name: str, data: bytes) -> tuple[csi.Volume, Path]:
    """A volume staged on this node with ``data`` written (and synced) through its staging mount."""
    vol = node.create()
    staging = node.staging_dir(name)
    node.stage(vol.volume_id, staging, context=dict(vol.volume_context))
    write(staging / "data", data)
    return vol, staging


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def nodeagent_log(stack: Stack, text: str) -> list[str]:
    """The lines of this node's nodeagent log that hold ``text``."""
    with open(stack.run_dir / "logs" / "nodeagent.log") as f:
        return [line for line in f if text in line]


def restore(node: Node, snapshot_id: str, name: str) -> Path:
    """A new volume from ``snapshot_id``, staged: its staging mount."""
    req = csi.CreateVolumeRequest(
        name=unique("restored"),
        capacity_range=csi.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[mount_cap()],
        volume_content_source=csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)),
    )
    vol = node.client.controller.CreateVolume(req, timeout=TIMEOUT).volume
    node.volumes.append(vol.volume_id)
    node.attach(vol.volume_id)
    staging = node.staging_dir(name)
    node.stage(vol.volume_id, staging, context=dict(vol.volume_context))
    return staging


# -- capabilities -----------------------------------------------------------------


def test_group_controller_and_get_snapshot_are_advertised(client: Csi, group: rpc.GroupControllerStub) -> None:
    Service = csi.PluginCapability.Service
    plugin = client.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest(), timeout=TIMEOUT).capabilities
    assert Service.GROUP_CONTROLLER_SERVICE in {c.service.type for c in plugin if c.HasField("service")}
    caps = group.GroupControllerGetCapabilities(csi.GroupControllerGetCapabilitiesRequest(), timeout=TIMEOUT).capabilities
    assert [c.rpc.type for c in caps] == [GROUP_RPC.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT]
    controller = client.controller.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest(), timeout=TIMEOUT).capabilities
    assert csi.ControllerServiceCapability.RPC.GET_SNAPSHOT in {c.rpc.type for c in controller}


# -- group snapshots ----------------------------------------------------------------


def test_group_of_three_staged_volumes_restores_each_members_data(node: Node, groups: Groups, client: Csi) -> None:
    members = [staged_volume(node, f"src{i}", f"member {i} ".encode() * 1000) for i in range(3)]
    made = groups.create([v.volume_id for v, _ in members])

    assert made.group_snapshot_id and made.ready_to_use and made.creation_time.seconds > 0
    assert len(made.snapshots) == 3
    by_source = {s.source_volume_id: s for s in made.snapshots}
    assert set(by_source) == {v.volume_id for v, _ in members}
    for snap in made.snapshots:
        assert snap.ready_to_use and snap.group_snapshot_id == made.group_snapshot_id and snap.size_bytes == 64 * MiB
        assert snap.creation_time.seconds > 0
    # The node froze all three at once (one request, before any copy) and thawed them.
    froze = nodeagent_log(node.stack, "for a group snapshot's cut")
    assert any(all(v.volume_id in line for v, _ in members) for line in froze), froze
    # The cut thawed every member: writes go on.
    for _, staging in members:
        write(staging / "after", b"written after the cut")
    # Each member restores to what was written before the cut, and nothing written after it.
    for i, (vol, _) in enumerate(members):
        restored = restore(node, by_source[vol.volume_id].snapshot_id, f"restored{i}")
        assert (restored / "data").read_bytes() == f"member {i} ".encode() * 1000
        assert not (restored / "after").exists()


def test_cut_is_write_order_consistent_under_a_writer_that_alternates_volumes(node: Node, groups: Groups) -> None:
    """A writer stamps n into A, then n into B, then n + 1 into A...; every write synced. Any
    consistent cut holds A at n and B at n or n - 1. (On this machine the copies are so quick
    that a cut without the freeze mostly passes too: the freeze itself is checked in the
    node's log by the test above.)"""
    (a, sa), (b, sb) = staged_volume(node, "wa", b"0"), staged_volume(node, "wb", b"0")
    stop = threading.Event()
    written = [0]

    def stamp(path: Path, n: int) -> None:
        # One write(2) in place, then fsync: a freeze lets a write in progress finish and holds
        # the next, so a cut sees the old stamp or the new one. (Opening with O_TRUNC first, a
        # cut between the truncation and the write rightly holds an empty file.)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"%012d" % n, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            stamp(sa / "data", n)
            stamp(sb / "data", n)
            written[0] = n

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while written[0] < 20:  # the writer is going
            stop.wait(0.01)
        made = groups.create([a.volume_id, b.volume_id])
        before = written[0]
        while written[0] < before + 20:  # and it goes on after the cut: nothing stayed frozen
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(timeout=30)
    by_source = {s.source_volume_id: s.snapshot_id for s in made.snapshots}
    got_a = int(restore(node, by_source[a.volume_id], "ra").joinpath("data").read_bytes())
    got_b = int(restore(node, by_source[b.volume_id], "rb").joinpath("data").read_bytes())
    assert got_a - got_b in (0, 1), (got_a, got_b)
    assert got_b >= 20


def test_members_are_listed_and_got_with_their_group(node: Node, groups: Groups, client: Csi) -> None:
    a, b = node.create(), node.create()
    made = groups.create([a.volume_id, b.volume_id])
    for snap in made.snapshots:
        got = client.controller.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=TIMEOUT).snapshot
        assert got == snap
        listed = client.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id), timeout=TIMEOUT).entries
        assert [e.snapshot.group_snapshot_id for e in listed] == [made.group_snapshot_id]
    by_source = client.controller.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=a.volume_id), timeout=TIMEOUT).entries
    assert [e.snapshot.group_snapshot_id for e in by_source] == [made.group_snapshot_id]


def test_create_group_repeated_returns_the_same_group_and_other_sources_already_exist(node: Node, groups: Groups) -> None:
    a, b, c = node.create(), node.create(), node.create()
    name = unique("group")
    first = groups.create([a.volume_id, b.volume_id], name=name, parameters={"k": "v"})
    for sources in ([a.volume_id, b.volume_id], [b.volume_id, a.volume_id]):
        again = groups.create(sources, name=name, parameters={"k": "v"})
        assert again.group_snapshot_id == first.group_snapshot_id
        assert {s.snapshot_id for s in again.snapshots} == {s.snapshot_id for s in first.snapshots}
        assert again.creation_time == first.creation_time
    for sources, parameters in (([a.volume_id, c.volume_id], {"k": "v"}), ([a.volume_id], {"k": "v"}), ([a.volume_id, b.volume_id], {"k": "w"})):
        req = csi.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=sources, parameters=parameters)
        assert code_of(lambda req=req: groups.stub.CreateVolumeGroupSnapshot(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


def test_get_group_checks_its_snapshot_ids_and_unknown_groups_are_not_found(node: Node, groups: Groups) -> None:
    a, b = node.create(), node.create()
    made = groups.create([a.volume_id, b.volume_id])
    ids = [s.snapshot_id for s in made.snapshots]
    for given in (ids, list(reversed(ids)), []):
        got = groups.stub.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=made.group_snapshot_id, snapshot_ids=given), timeout=TIMEOUT)
        assert got.group_snapshot == made
    for wrong in (ids[:1], [*ids, "0" * 32]):
        req = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=made.group_snapshot_id, snapshot_ids=wrong)
        assert code_of(lambda req=req: groups.stub.GetVolumeGroupSnapshot(req, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT
    for unknown in ("0" * 32, "no-such-group"):
        req = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=unknown, snapshot_ids=ids)
        assert code_of(lambda req=req: groups.stub.GetVolumeGroupSnapshot(req, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND


def test_delete_group_deletes_its_members_and_is_idempotent(node: Node, groups: Groups, client: Csi, stack: Stack) -> None:
    a, b = node.create(), node.create()
    made = groups.create([a.volume_id, b.volume_id])
    ids = [s.snapshot_id for s in made.snapshots]
    # A member goes with its group only.
    member = csi.DeleteSnapshotRequest(snapshot_id=ids[0])
    assert code_of(lambda: client.controller.DeleteSnapshot(member, timeout=TIMEOUT)) == grpc.StatusCode.FAILED_PRECONDITION
    wrong = csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=made.group_snapshot_id, snapshot_ids=ids[:1])
    assert code_of(lambda: groups.stub.DeleteVolumeGroupSnapshot(wrong, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT

    for _ in range(3):
        groups.stub.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=made.group_snapshot_id, snapshot_ids=ids), timeout=TIMEOUT)
    for sid in ids:
        assert code_of(lambda sid=sid: client.controller.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=sid), timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND
        assert not client.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=sid), timeout=TIMEOUT).entries
        assert not list((stack.run_dir / "pools").glob(f"*/snapshots/{sid}.img*"))
    get = csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=made.group_snapshot_id, snapshot_ids=ids)
    assert code_of(lambda: groups.stub.GetVolumeGroupSnapshot(get, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND
    for unknown in ("0" * 32, "no-such-group"):
        groups.stub.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=unknown), timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda ids: csi.CreateVolumeGroupSnapshotRequest(source_volume_ids=ids), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda ids: csi.CreateVolumeGroupSnapshotRequest(name=unique("g")), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda ids: csi.CreateVolumeGroupSnapshotRequest(name=unique("g"), source_volume_ids=[ids[0], ids[0]]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda ids: csi.CreateVolumeGroupSnapshotRequest(name=unique("g"), source_volume_ids=[ids[0], "0" * 32]), grpc.StatusCode.NOT_FOUND),
        (lambda ids: csi.CreateVolumeGroupSnapshotRequest(name=unique("g"), source_volume_ids=["fake-volume"]), grpc.StatusCode.NOT_FOUND),
    ],
    ids=["no-name", "no-sources", "duplicate-source", "unknown-source", "foreign-source"],
)
def test_bad_create_group_gets_the_spec_code_and_leaves_nothing(
    node: Node, group: rpc.GroupControllerStub, client: Csi, make: Callable[[list[str]], csi.CreateVolumeGroupSnapshotRequest], code: grpc.StatusCode
) -> None:
    vol = node.create()
    assert code_of(lambda: group.CreateVolumeGroupSnapshot(make([vol.volume_id]), timeout=TIMEOUT)) == code
    assert not client.controller.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=vol.volume_id), timeout=TIMEOUT).entries


def test_group_with_a_staged_block_volume_cannot_be_cut_and_leaves_nothing_frozen(node: Node, group: rpc.GroupControllerStub, client: Csi) -> None:
    block = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
    fs_vol, staging = staged_volume(node, "fs", b"x")
    blk = node.create(cap=block)
    node.stage(blk.volume_id, node.staging_dir("blk"), cap=block)
    req = csi.CreateVolumeGroupSnapshotRequest(name=unique("g"), source_volume_ids=[fs_vol.volume_id, blk.volume_id])
    assert code_of(lambda: group.CreateVolumeGroupSnapshot(req, timeout=TIMEOUT)) == grpc.StatusCode.FAILED_PRECONDITION
    write(staging / "still-writable", b"the filesystem member was not left frozen")
    for vid in (fs_vol.volume_id, blk.volume_id):
        assert not client.controller.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=vid), timeout=TIMEOUT).entries


# -- GetSnapshot ------------------------------------------------------------------


def test_get_snapshot_of_a_snapshot_and_of_unknown_ids(node: Node, client: Csi) -> None:
    vol = node.create()
    snap = client.controller.CreateSnapshot(csi.CreateSnapshotRequest(name=unique("snap"), source_volume_id=vol.volume_id), timeout=TIMEOUT).snapshot
    try:
        got = client.controller.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap.snapshot_id, secrets={"ignored": "yes"}), timeout=TIMEOUT).snapshot
        assert got == snap and got.group_snapshot_id == ""
    finally:
        client.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=TIMEOUT)
    for unknown in (snap.snapshot_id, "0" * 32, "no-such-snapshot"):
        req = csi.GetSnapshotRequest(snapshot_id=unknown)
        assert code_of(lambda req=req: client.controller.GetSnapshot(req, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: client.controller.GetSnapshot(csi.GetSnapshotRequest(), timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


# -- max_volumes_per_node ---------------------------------------------------------


def test_node_reports_the_loop_devices_it_can_offer_by_default(client: Csi) -> None:
    info = client.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT)
    # The loop driver's minor numbers on this host (devtmpfs /dev with /dev/loop-control), less foreign devices.
    assert 0 < info.max_volumes_per_node <= 1 << 20


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Csi]]:
    """A stack of its own whose node holds at most 2 volumes, staging without ControllerPublish
    (as a node without a controller in front), so NodeStage's own check is reached."""
    s = Stack(tmp_path_factory.mktemp("limited"), env={"VOLPLANE_MAX_VOLUMES_PER_NODE": "2", "VOLPLANE_REQUIRE_ATTACHMENT": "0"})
    s.start()
    c = Csi(s.csi_endpoint)
    yield s, c
    c.close()
    s.stop()


def test_node_at_its_max_volumes_refuses_another_stage_and_publish(limited: tuple[Stack, Csi], tmp_path: Path) -> None:
    stack, client = limited
    assert client.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).max_volumes_per_node == 2
    vols = []
    for _ in range(3):
        req = csi.CreateVolumeRequest(name=unique("lim"), capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[mount_cap()])
        vols.append(client.controller.CreateVolume(req, timeout=TIMEOUT).volume.volume_id)
    paths = [tmp_path / f"s{i}" for i in range(3)]
    for p in paths:
        p.mkdir()

    def stage(i: int) -> None:
        client.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vols[i], staging_target_path=str(paths[i]), volume_capability=mount_cap()), timeout=TIMEOUT)

    def unstage(i: int) -> None:
        client.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vols[i], staging_target_path=str(paths[i])), timeout=TIMEOUT)

    def publish(i: int) -> None:
        req = csi.ControllerPublishVolumeRequest(volume_id=vols[i], node_id=stack.node_id, volume_capability=mount_cap())
        client.controller.ControllerPublishVolume(req, timeout=TIMEOUT)

    try:
        stage(0)
        stage(1)
        stage(1)  # a volume staged already takes no second place
        assert code_of(lambda: stage(2)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        unstage(0)
        stage(2)  # the place it left is free again
        publish(0)
        publish(1)
        assert code_of(lambda: publish(2)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for i in range(3):
            unstage(i)
            client.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vols[i], node_id=stack.node_id), timeout=TIMEOUT)
            client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vols[i]), timeout=TIMEOUT)


# -- crashes ------------------------------------------------------------------------




@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[tuple[Stack, Csi]]:
    """A stack for one test that kills its services."""
    s = Stack(tmp_path / "run", env={"VOLPLANE_NODE_ID": "node-g"})
    s.start()
    c = Csi(s.csi_endpoint)
    yield s, c
    c.close()
    s.stop()


def _staged(client: Csi, tmp_path: Path, name: str, data: bytes) -> tuple[str, Path]:
    req = csi.CreateVolumeRequest(name=unique(name), capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[mount_cap()])
    vid = client.controller.CreateVolume(req, timeout=TIMEOUT).volume.volume_id
    client.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vid, node_id="node-g", volume_capability=mount_cap()), timeout=TIMEOUT)
    staging = tmp_path / name
    staging.mkdir()
    client.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=TIMEOUT)
    write(staging / "data", data)
    return vid, staging


def _unstage_all(client: Csi, staged: list[tuple[str, Path]]) -> None:
    for vid, staging in staged:
        client.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)), timeout=TIMEOUT)


def test_group_intent_left_by_a_crash_is_finished_with_a_whole_cut_when_the_provisioner_starts(own_stack: tuple[Stack, Csi], tmp_path: Path) -> None:
    stack, client = own_stack
    staged = [_staged(client, tmp_path, f"c{i}", f"crash {i}".encode()) for i in range(2)]
    try:
        stack.stop_service("provisioner", kill=True)
        name = unique("crashed-group")
        gid = group_snapshot_id_for(name)
        vids = tuple(v for v, _ in staged)
        sids = tuple(member_snapshot_id(gid, v) for v in vids)
        # What a provisioner killed after the group's intent and its first member's leaves behind.
        append_event(stack, subjects.group_snapshot(gid), GroupSnapshotCreating(group_snapshot_id=gid, name=name, source_volume_ids=vids, snapshot_ids=sids))
        append_event(stack, subjects.snapshot(sids[0]), MemberSnapshotCreating(
            snapshot_id=sids[0], name=f"{name}/{vids[0]}", source_volume_id=vids[0], pool="shared", size_bytes=64 * MiB, group_snapshot_id=gid))
        stack.start_service("provisioner")
        stack.wait_healthy(["provisioner"])
        stub = rpc.GroupControllerStub(client.channel)
        got = stub.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=list(sids)), timeout=TIMEOUT).group_snapshot
        assert got.ready_to_use and {s.snapshot_id for s in got.snapshots} == set(sids)
        assert any(all(v in line for v in vids) for line in nodeagent_log(stack, "for a group snapshot's cut"))
        # The CO's retry of the lost call now simply succeeds, with the same group.
        again = stub.CreateVolumeGroupSnapshot(csi.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=list(vids)), timeout=TIMEOUT)
        assert again.group_snapshot == got
        stub.DeleteVolumeGroupSnapshot(csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid), timeout=TIMEOUT)
        assert not list(stack.pool_dir("shared").glob("snapshots/*"))
    finally:
        _unstage_all(client, staged)


def test_a_freeze_left_by_a_crashed_nodeagent_is_thawed_when_it_starts(own_stack: tuple[Stack, Csi], tmp_path: Path) -> None:
    stack, client = own_stack
    staged = [_staged(client, tmp_path, "frozen", b"x")]
    staging = staged[0][1]
    try:
        stack.stop_service("nodeagent", kill=True)
        # What a nodeagent killed in the middle of a cut leaves: the kernel keeps the freeze.
        subprocess.run(["fsfreeze", "--freeze", str(staging)], check=True)
        stack.start_service("nodeagent")
        stack.wait_healthy(["nodeagent"])
        thawed = subprocess.run(["fsfreeze", "--unfreeze", str(staging)], capture_output=True, text=True)
        assert thawed.returncode != 0 and "Invalid argument" in thawed.stderr, "the staging mount was still frozen"
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(staging)], capture_output=True)
        _unstage_all(client, staged)


def test_a_freeze_nobody_thaws_ends_with_its_lease(own_stack: tuple[Stack, Csi], tmp_path: Path) -> None:
    stack, client = own_stack
    staged = [_staged(client, tmp_path, "leased", b"x")]
    vid, staging = staged[0]

    async def freeze() -> FrozenVolumes:
        nc = await nats.connect(stack.env["NATS_URL"], tls=stack.client_tls())
        try:
            # As a provisioner that dies right after its freeze would leave it: never thawed.
            reply = await Bus(nc, "test").request(subjects.node_command("node-g", subjects.NODE_FREEZE), FreezeVolumes(volume_ids=(vid,), lease_s=1.0), 30)
            return FrozenVolumes.model_validate(reply)
        finally:
            await nc.close()

    try:
        start = time.monotonic()
        assert asyncio.run(freeze()).volume_ids == (vid,)
        # Freezing a frozen filesystem is EBUSY and changes nothing: it is frozen.
        again = subprocess.run(["fsfreeze", "--freeze", str(staging)], capture_output=True, text=True)
        assert again.returncode != 0 and "busy" in again.stderr, "the staging mount was not frozen"
        # A writer waits in the kernel until the lease thaws the filesystem.
        writer = threading.Thread(target=write, args=(staging / "after-lease", b"y"), daemon=True)
        writer.start()
        writer.join(timeout=15)
        assert not writer.is_alive(), "the lease did not thaw the staging mount"
        assert time.monotonic() - start >= 0.9
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(staging)], capture_output=True)
        _unstage_all(client, staged)
