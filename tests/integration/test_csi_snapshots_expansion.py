"""Snapshots, clones, expansion and topology through the CSI socket, with the data checked
in the real image files (bytes written into a source image must come out of the copy).

Mount-level checks of the same features (a file written through a mount, `df` after
expansion) live in the node tests; here the images themselves are the evidence.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import Csi, mount_cap
from volplane.csi import csi_pb2 as csi
from volplane.nodes import TOPOLOGY_KEY

MiB = 2**20
GiB = 2**30
TIMEOUT = 30


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


class World:
    """Creates volumes and snapshots and deletes them when the test ends (newest first)."""

    def __init__(self, client: Csi, stack: Stack) -> None:
        self.c = client.controller
        self.stack = stack
        self.made: list[tuple[str, str]] = []

    def volume(self, required: int = 64 * MiB, name: str | None = None, **kw: object) -> csi.Volume:
        req = csi.CreateVolumeRequest(
            name=name or unique("vol"),
            capacity_range=csi.CapacityRange(required_bytes=required),
            volume_capabilities=[mount_cap()],
            **kw,
        )
        vol = self.c.CreateVolume(req, timeout=TIMEOUT).volume
        self.made.append(("volume", vol.volume_id))
        return vol

    def snapshot(self, source: str, name: str | None = None) -> csi.Snapshot:
        snap = self.c.CreateSnapshot(csi.CreateSnapshotRequest(name=name or unique("snap"), source_volume_id=source), timeout=TIMEOUT).snapshot
        self.made.append(("snapshot", snap.snapshot_id))
        return snap

    def image(self, vol: csi.Volume) -> Path:
        return self.stack.pool_dir(vol.volume_context["pool"]) / f"{vol.volume_id}.img"

    def cleanup(self) -> None:
        for kind, ident in reversed(self.made):
            if kind == "volume":
                self.c.DeleteVolume(csi.DeleteVolumeRequest(volume_id=ident), timeout=TIMEOUT)
            else:
                self.c.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=ident), timeout=TIMEOUT)


@pytest.fixture
def world(client: Csi, stack: Stack) -> Iterator[World]:
    w = World(client, stack)
    yield w
    w.cleanup()


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


# -- snapshots ------------------------------------------------------------------


def test_snapshot_is_ready_with_source_size_and_creation_time(world: World) -> None:
    vol = world.volume(96 * MiB)
    snap = world.snapshot(vol.volume_id)
    assert snap.ready_to_use
    assert snap.source_volume_id == vol.volume_id
    assert snap.size_bytes == 96 * MiB
    assert snap.creation_time.seconds > 0


def test_create_snapshot_repeated_ten_times_returns_the_same_snapshot(world: World) -> None:
    vol = world.volume()
    name = unique("snap")
    ids = {world.snapshot(vol.volume_id, name).snapshot_id for _ in range(10)}
    assert len(ids) == 1


def test_same_snapshot_name_for_another_volume_already_exists(world: World, client: Csi) -> None:
    a, b = world.volume(), world.volume()
    name = unique("snap")
    world.snapshot(a.volume_id, name)
    req = csi.CreateSnapshotRequest(name=name, source_volume_id=b.volume_id)
    assert code_of(lambda: client.controller.CreateSnapshot(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (csi.CreateSnapshotRequest(source_volume_id="testId"), grpc.StatusCode.INVALID_ARGUMENT),
        (csi.CreateSnapshotRequest(name="name"), grpc.StatusCode.INVALID_ARGUMENT),
        (csi.CreateSnapshotRequest(name="orphan", source_volume_id="fake-vol-id-1234567890"), grpc.StatusCode.NOT_FOUND),
        (csi.CreateSnapshotRequest(name="orphan", source_volume_id="0" * 32), grpc.StatusCode.NOT_FOUND),
    ],
    ids=["no-name", "no-source", "foreign-source", "unknown-source"],
)
def test_bad_create_snapshot_gets_the_spec_code(client: Csi, request_: csi.CreateSnapshotRequest, code: grpc.StatusCode) -> None:
    assert code_of(lambda: client.controller.CreateSnapshot(request_, timeout=TIMEOUT)) == code


def test_delete_snapshot_of_unknown_or_repeated_is_ok_and_missing_id_is_invalid(world: World, client: Csi) -> None:
    vol = world.volume()
    snap = world.snapshot(vol.volume_id)
    for _ in range(10):
        client.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=TIMEOUT)
    client.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id="reallyfakesnapshotid"), timeout=TIMEOUT)
    assert code_of(lambda: client.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(), timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not (world.stack.pool_dir(vol.volume_context["pool"]) / "snapshots" / f"{snap.snapshot_id}.img").exists()


def test_list_snapshots_filters_by_id_and_source_and_pages(world: World, client: Csi) -> None:
    vols = [world.volume() for _ in range(3)]
    snaps = [world.snapshot(v.volume_id) for v in vols]
    by_id = client.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snaps[1].snapshot_id), timeout=TIMEOUT)
    assert [e.snapshot.snapshot_id for e in by_id.entries] == [snaps[1].snapshot_id]
    by_source = client.controller.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=vols[2].volume_id), timeout=TIMEOUT)
    assert [e.snapshot.snapshot_id for e in by_source.entries] == [snaps[2].snapshot_id]
    for req in (csi.ListSnapshotsRequest(snapshot_id="none-exist-id"), csi.ListSnapshotsRequest(source_volume_id="fake-vol-id-x")):
        assert list(client.controller.ListSnapshots(req, timeout=TIMEOUT).entries) == []
    # Paging: two, then the rest with max_entries=0; every snapshot of ours exactly once.
    first = client.controller.ListSnapshots(csi.ListSnapshotsRequest(max_entries=2), timeout=TIMEOUT)
    assert len(first.entries) == 2 and first.next_token
    rest = client.controller.ListSnapshots(csi.ListSnapshotsRequest(starting_token=first.next_token), timeout=TIMEOUT)
    seen = [e.snapshot.snapshot_id for e in list(first.entries) + list(rest.entries)]
    assert len(seen) == len(set(seen))
    assert {s.snapshot_id for s in snaps} <= set(seen)
    bad = csi.ListSnapshotsRequest(starting_token="not-a-token-of-ours")
    assert code_of(lambda: client.controller.ListSnapshots(bad, timeout=TIMEOUT)) == grpc.StatusCode.ABORTED


# -- restore and clone: the data comes along ---------------------------------------


def test_volume_restored_from_a_snapshot_holds_the_snapshot_data_not_later_writes(world: World) -> None:
    vol = world.volume(64 * MiB)
    write_at(world.image(vol), 5 * MiB, b"before the snapshot")
    snap = world.snapshot(vol.volume_id)
    write_at(world.image(vol), 5 * MiB, b"AFTER  the snapshot")

    restored = world.volume(64 * MiB, volume_content_source=csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)))

    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert read_at(world.image(restored), 5 * MiB, 19) == b"before the snapshot"
    # A sparse copy: the 64 MiB image holds little more than the data written.
    assert os.stat(world.image(restored)).st_blocks * 512 < 8 * MiB


def test_clone_holds_the_source_data_and_is_independent_of_it(world: World) -> None:
    src = world.volume(64 * MiB)
    write_at(world.image(src), 1 * MiB, b"original")
    clone = world.volume(128 * MiB, volume_content_source=csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id)))
    write_at(world.image(src), 1 * MiB, b"changed!")
    write_at(world.image(clone), 2 * MiB, b"clone only")

    assert read_at(world.image(clone), 1 * MiB, 8) == b"original"
    assert read_at(world.image(src), 2 * MiB, 10) == b"\0" * 10
    assert clone.capacity_bytes == 128 * MiB == os.stat(world.image(clone)).st_size


def test_restore_outlives_its_snapshot_and_snapshot_outlives_its_volume(world: World, client: Csi) -> None:
    vol = world.volume()
    write_at(world.image(vol), 0, b"kept")
    snap = world.snapshot(vol.volume_id)
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
    restored = world.volume(volume_content_source=csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)))
    client.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=TIMEOUT)
    assert read_at(world.image(restored), 0, 4) == b"kept"


@pytest.mark.parametrize(
    "source",
    [
        csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id="non-existing-snapshot-id")),
        csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id="fake-vol-id-1234567890")),
        csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id="f" * 32)),
    ],
    ids=["unknown-snapshot", "foreign-volume", "unknown-volume"],
)
def test_create_from_a_missing_source_is_not_found(client: Csi, source: csi.VolumeContentSource) -> None:
    req = csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap()], volume_content_source=source)
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND


def test_restore_smaller_than_the_snapshot_is_out_of_range(world: World, client: Csi) -> None:
    snap = world.snapshot(world.volume(128 * MiB).volume_id)
    req = csi.CreateVolumeRequest(
        name=unique(),
        capacity_range=csi.CapacityRange(required_bytes=64 * MiB, limit_bytes=64 * MiB),
        volume_capabilities=[mount_cap()],
        volume_content_source=csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)),
    )
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.OUT_OF_RANGE


# -- expansion -------------------------------------------------------------------


def test_expand_grows_the_image_to_exactly_the_request_and_asks_for_node_expansion(world: World, client: Csi) -> None:
    vol = world.volume(10 * GiB)
    for _ in range(10):
        resp = client.controller.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=11 * GiB)), timeout=TIMEOUT
        )
        assert resp.capacity_bytes == 11 * GiB
    assert os.stat(world.image(vol)).st_size == 11 * GiB
    listed = {e.volume.volume_id: e.volume.capacity_bytes for e in client.controller.ListVolumes(csi.ListVolumesRequest(), timeout=TIMEOUT).entries}
    assert listed[vol.volume_id] == 11 * GiB


def test_expand_to_a_smaller_size_is_ok_and_changes_nothing(world: World, client: Csi) -> None:
    vol = world.volume(128 * MiB)
    resp = client.controller.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=64 * MiB)), timeout=TIMEOUT
    )
    assert resp.capacity_bytes == 128 * MiB and not resp.node_expansion_required
    assert os.stat(world.image(vol)).st_size == 128 * MiB


def test_expand_first_expansion_requires_the_node(world: World, client: Csi) -> None:
    vol = world.volume(64 * MiB)
    resp = client.controller.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=96 * MiB)), timeout=TIMEOUT
    )
    assert resp.node_expansion_required


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (csi.ControllerExpandVolumeRequest(capacity_range=csi.CapacityRange(required_bytes=GiB)), grpc.StatusCode.INVALID_ARGUMENT),
        (csi.ControllerExpandVolumeRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (csi.ControllerExpandVolumeRequest(volume_id="fake-vol-id-x", capacity_range=csi.CapacityRange(required_bytes=GiB)), grpc.StatusCode.NOT_FOUND),
        (csi.ControllerExpandVolumeRequest(volume_id="a" * 32, capacity_range=csi.CapacityRange(required_bytes=GiB)), grpc.StatusCode.NOT_FOUND),
    ],
    ids=["no-id", "nothing", "foreign-id", "unknown-id"],
)
def test_bad_expand_gets_the_spec_code(client: Csi, request_: csi.ControllerExpandVolumeRequest, code: grpc.StatusCode) -> None:
    assert code_of(lambda: client.controller.ControllerExpandVolume(request_, timeout=TIMEOUT)) == code


def test_expand_beyond_the_pool_is_resource_exhausted_and_keeps_the_size(world: World, client: Csi) -> None:
    vol = world.volume(64 * MiB)
    req = csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=2**40))
    assert code_of(lambda: client.controller.ControllerExpandVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert os.stat(world.image(vol)).st_size == 64 * MiB


# -- topology and capacity -----------------------------------------------------------


def test_volume_with_a_topology_requirement_lands_in_that_nodes_local_pool(world: World, stack: Stack) -> None:
    segment = {TOPOLOGY_KEY: stack.node_id}
    vol = world.volume(accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments=segment)]))
    assert [dict(t.segments) for t in vol.accessible_topology] == [segment]
    assert vol.volume_context["pool"] == stack.node_id
    assert (stack.pool_dir(stack.node_id) / f"{vol.volume_id}.img").exists()


def test_volume_without_topology_goes_to_the_shared_pool_reachable_from_every_node(world: World, stack: Stack) -> None:
    vol = world.volume()
    assert vol.volume_context["pool"] == "shared"
    assert list(vol.accessible_topology) == []


def test_topology_no_pool_can_serve_is_resource_exhausted(client: Csi) -> None:
    req = csi.CreateVolumeRequest(
        name=unique(),
        volume_capabilities=[mount_cap()],
        accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments={TOPOLOGY_KEY: "no-such-node"})]),
        parameters={"pool": "local"},
    )
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_capacity_per_segment_drops_by_what_a_volume_in_it_takes(world: World, client: Csi, stack: Stack) -> None:
    segment = csi.Topology(segments={TOPOLOGY_KEY: stack.node_id})

    def local_free() -> int:
        return client.controller.GetCapacity(csi.GetCapacityRequest(accessible_topology=segment), timeout=TIMEOUT).available_capacity

    def shared_free() -> int:
        return client.controller.GetCapacity(csi.GetCapacityRequest(), timeout=TIMEOUT).available_capacity

    local_before, shared_before = local_free(), shared_free()
    world.volume(256 * MiB, accessibility_requirements=csi.TopologyRequirement(requisite=[segment]))
    assert local_free() == local_before - 256 * MiB
    assert shared_free() == shared_before
