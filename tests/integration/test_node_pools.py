"""Node-owned pools: the provisioner decides and records, the node that owns a pool acts on
its images; a node that is down holds up only its own pool's operations, which complete
when it returns (docs/decisions.md, "Pools and topology")."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import nats
import pytest

import devstack.launcher
from devstack.launcher import Stack
from services.provisioner.domain.events import VolumeCreating
from tests.co import append_event
from tests.conftest import Csi, mount_cap, needs_root
from volplane import subjects
from volplane.csi import csi_pb2 as csi
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.nodes import TOPOLOGY_KEY
from volplane.volumes import StoredCapability

CAP = mount_cap()
T = TypeVar("T")
MiB = 2**20
NODE = "node-2"  # the host that goes down; node-1 (and the shared pool) stay


def _on(node: str) -> csi.TopologyRequirement:
    return csi.TopologyRequirement(requisite=[csi.Topology(segments={TOPOLOGY_KEY: node})])


def _create(name: str, node: str | None = NODE, **kw: object) -> csi.CreateVolumeRequest:
    req = csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[CAP], **kw)
    if node:
        req.accessibility_requirements.CopyFrom(_on(node))
    return req


def _hidden_pools(run_dir: Path) -> Callable[[list[str]], list[str]]:
    """``with_parent`` for the launcher that starts the provisioner in its own mount namespace,
    an empty tmpfs over the pools' directory: whatever it wrote there nobody else would see."""
    plain = devstack.launcher.with_parent
    pools = run_dir / "pools"

    def wrap(argv: list[str]) -> list[str]:
        if argv[-1] != "services.provisioner":
            return plain(argv)
        hide = 'mount --make-rprivate / && mount -t tmpfs -o size=1m provisioner-view "$0" && exec "$@"'
        return plain(["unshare", "--mount", "sh", "-c", hide, str(pools), *argv])

    return wrap


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("node-pools") / "run"
    (run_dir / "pools").mkdir(parents=True)
    s = Stack(run_dir, env={"VOLPLANE_POOL_CAPACITY": "4Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "4Gi"}, nodes=2)
    mp = pytest.MonkeyPatch()
    if os.geteuid() == 0:
        mp.setattr(devstack.launcher, "with_parent", _hidden_pools(run_dir))
    try:
        s.start()
        yield s
    finally:
        s.stop()
        mp.undo()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Csi]:
    c = Csi(stack.csi_endpoint)
    yield c
    c.close()


@pytest.fixture
def node_down(stack: Stack) -> Iterator[Callable[[], None]]:
    """Stops node-2's nodeagent; ``back()`` (or the test's end) starts it again."""
    name = f"nodeagent-{NODE}"
    stack.stop_service(name)

    def back() -> None:
        if name not in stack.procs:
            stack.start_service(name)
            stack.wait_healthy([name])

    yield back
    back()


def _events(stack: Stack, subject: str) -> list[str]:
    async def go() -> list[str]:
        nc = await nats.connect(stack.env["NATS_URL"], tls=stack.client_tls())
        try:
            return [r.type for r in await EventStore(nc.jetstream()).read(subject)]
        finally:
            await nc.close()

    return asyncio.run(go())




def _images(stack: Stack, pool: str, vid: str) -> list[str]:
    return sorted(p.name for p in stack.pool_dir(pool).glob(f"{vid}*"))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    code: grpc.StatusCode = err.value.code()
    return code


def _as_a_co(call: Callable[[], T], give_up: float = 30.0) -> T:
    """``call`` again while it answers ABORTED or UNAVAILABLE, as a CO does: the node that
    came back may be finishing the intent for the provisioner's completer at that moment,
    and the call then meets the completer's hold on the volume (ABORTED, "in progress")."""
    deadline = time.monotonic() + give_up
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


# -- the provisioner opens no pool --------------------------------------------------


@needs_root
def test_every_image_operation_is_done_by_the_node_while_the_provisioner_sees_no_pool(stack: Stack, client: Csi) -> None:
    pid = stack.procs["provisioner"].pid
    pools_seen_by_provisioner = Path(f"/proc/{pid}/root") / str(stack.run_dir / "pools").lstrip("/")
    mount_points = [line.split()[4] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    assert str(stack.run_dir / "pools") in mount_points  # its own empty tmpfs over the pools
    ctl = client.controller
    vol = ctl.CreateVolume(_create("owned-src"), timeout=30).volume
    assert vol.volume_context["pool"] == NODE and _images(stack, NODE, vol.volume_id) == [f"{vol.volume_id}.img"]
    with open(stack.pool_dir(NODE) / f"{vol.volume_id}.img", "r+b") as f:
        f.write(b"written on node-2")
    snap = ctl.CreateSnapshot(csi.CreateSnapshotRequest(name="owned-snap", source_volume_id=vol.volume_id), timeout=30).snapshot
    assert (stack.pool_dir(NODE) / "snapshots" / f"{snap.snapshot_id}.img").exists()
    from_snap = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
    restored = ctl.CreateVolume(_create("owned-restored", volume_content_source=from_snap), timeout=30).volume
    from_vol = csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=vol.volume_id))
    # A clone into the shared pool of a node-2 volume: node-2 has both pools, so it copies.
    clone = ctl.CreateVolume(_create("owned-clone", node=None, volume_content_source=from_vol), timeout=30).volume
    assert clone.volume_context["pool"] == "shared"
    for pool, vid in ((NODE, restored.volume_id), ("shared", clone.volume_id)):
        with open(stack.pool_dir(pool) / f"{vid}.img", "rb") as f:
            assert f.read(17) == b"written on node-2"
    grown = ctl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=128 * MiB)), timeout=30)
    assert (stack.pool_dir(NODE) / f"{vol.volume_id}.img").stat().st_size == grown.capacity_bytes == 128 * MiB
    assert ctl.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vol.volume_id), timeout=30).status.volume_condition.abnormal is False
    ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=30)
    for vid in (vol.volume_id, restored.volume_id, clone.volume_id):
        ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=30)
        assert _images(stack, NODE, vid) == _images(stack, "shared", vid) == []
    assert not (stack.pool_dir(NODE) / "snapshots" / f"{snap.snapshot_id}.img").exists()
    # All of that happened in the nodes' pools, none of it where the provisioner could reach.
    assert list(pools_seen_by_provisioner.iterdir()) == []


def test_a_clone_from_another_nodes_pool_comes_over_the_bus_and_its_transfer_is_discarded(stack: Stack, client: Csi) -> None:
    """Node-1's volume cloned into node-2's pool: node-2 asks node-1 to send it into the
    transfer store and receives it (docs/decisions.md, "Images across hosts")."""
    ctl = client.controller
    src = ctl.CreateVolume(_create("elsewhere-src", node="node-1"), timeout=30).volume
    with open(stack.pool_dir("node-1") / f"{src.volume_id}.img", "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"written on node-1")
    from_vol = csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
    clone = ctl.CreateVolume(_create("elsewhere-clone", volume_content_source=from_vol), timeout=30).volume
    assert clone.volume_context["pool"] == NODE and _images(stack, NODE, clone.volume_id) == [f"{clone.volume_id}.img"]
    with open(stack.pool_dir(NODE) / f"{clone.volume_id}.img", "rb") as f:
        f.seek(5 * MiB)
        assert f.read(17) == b"written on node-1"
    assert (stack.pool_dir(NODE) / f"{clone.volume_id}.img").stat().st_size == 64 * MiB

    async def transfers() -> dict[str, int]:
        nc = await nats.connect(stack.env["NATS_URL"], tls=stack.client_tls())
        try:
            info = await nc.jetstream().stream_info(subjects.TRANSFER_STREAM, subjects_filter="vp.xfer.>")
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    assert asyncio.run(transfers()) == {}
    for vid in (clone.volume_id, src.volume_id):
        ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=30)


# -- a host that is down ---------------------------------------------------------------


def test_create_on_a_down_node_is_unavailable_with_its_intent_kept_and_the_retry_makes_one_image(
    stack: Stack, client: Csi, node_down: Callable[[], None]
) -> None:
    ctl = client.controller
    vid = volume_id_for("while-down")
    started = time.monotonic()
    assert _code(lambda: ctl.CreateVolume(_create("while-down"), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 10
    assert _events(stack, subjects.volume(vid)) == ["VolumeCreating"]  # the intent, and no result
    # Other hosts go on: node-1's pool and the shared pool.
    other = ctl.CreateVolume(_create("meanwhile", node="node-1"), timeout=30).volume
    shared = ctl.CreateVolume(_create("meanwhile-shared", node=None), timeout=30).volume
    assert _images(stack, "node-1", other.volume_id) and _images(stack, "shared", shared.volume_id)
    # A retry while it is still down: the same (ABORTED if it meets the provisioner's own retry of the intent).
    assert _code(lambda: ctl.CreateVolume(_create("while-down"), timeout=10)) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
    node_down()  # back
    vol = _as_a_co(lambda: ctl.CreateVolume(_create("while-down"), timeout=10)).volume
    assert vol.volume_id == vid and vol.capacity_bytes == 64 * MiB
    assert _images(stack, NODE, vid) == [f"{vid}.img"]
    assert _events(stack, subjects.volume(vid)) == ["VolumeCreating", "VolumeCreated"]
    for v in (vid, other.volume_id, shared.volume_id):
        ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=v), timeout=30)


def test_delete_on_a_down_node_is_recorded_and_its_image_goes_when_the_node_returns(
    stack: Stack, client: Csi, node_down: Callable[[], None]
) -> None:
    ctl = client.controller
    node_down()  # up, to make the volume
    vol = ctl.CreateVolume(_create("delete-while-down"), timeout=30).volume
    stack.stop_service(f"nodeagent-{NODE}")
    assert _code(lambda: ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    assert _events(stack, subjects.volume(vol.volume_id))[-1] == "VolumeDeleting"
    # Gone for every new use at once, though its image waits for its node.
    assert _code(lambda: ctl.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vol.volume_id), timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert _images(stack, NODE, vol.volume_id) == [f"{vol.volume_id}.img"]
    node_down()  # back: no CO retries; the provisioner finishes the deletion itself
    _wait(lambda: _images(stack, NODE, vol.volume_id) == [], "the image outlived its deletion after the node returned")
    _wait(lambda: _events(stack, subjects.volume(vol.volume_id))[-1] == "VolumeDeleted", "the deletion was never recorded")
    ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=30)  # and a late retry is OK


def test_an_intent_a_provisioner_crash_left_is_finished_through_the_node_even_if_the_node_returns_later(
    stack: Stack, client: Csi, node_down: Callable[[], None]
) -> None:
    vid = volume_id_for("crashed-intent")
    stack.stop_service("provisioner", kill=True)
    try:
        # What a provisioner killed right after recording its intent leaves behind.
        append_event(stack, subjects.volume(vid), VolumeCreating(volume_id=vid, name="crashed-intent", pool=NODE, capacity_bytes=64 * MiB, capabilities=(StoredCapability(),)))
    finally:
        stack.start_service("provisioner")
        stack.wait_healthy(["provisioner"])
    # It started while the node was down: the intent waits, and nothing half-made exists.
    assert _events(stack, subjects.volume(vid)) == ["VolumeCreating"]
    assert _images(stack, NODE, vid) == []
    node_down()  # back
    _wait(lambda: _events(stack, subjects.volume(vid)) == ["VolumeCreating", "VolumeCreated"], "the crashed intent was never finished")
    assert (stack.pool_dir(NODE) / f"{vid}.img").stat().st_size == 64 * MiB
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=30)
    assert _images(stack, NODE, vid) == []


def test_an_intent_a_provisioner_crash_left_is_finished_on_restart(stack: Stack, client: Csi) -> None:
    vid = volume_id_for("crashed-intent-up")
    stack.stop_service("provisioner", kill=True)
    try:
        append_event(stack, subjects.volume(vid), VolumeCreating(volume_id=vid, name="crashed-intent-up", pool=NODE, capacity_bytes=64 * MiB, capabilities=(StoredCapability(),)))
    finally:
        stack.start_service("provisioner")
        stack.wait_healthy(["provisioner"])
    # Finished before it serves: recovery on start asked node-2.
    assert _events(stack, subjects.volume(vid)) == ["VolumeCreating", "VolumeCreated"]
    assert _images(stack, NODE, vid) == [f"{vid}.img"]
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=30)


def test_no_stray_copy_is_left_in_any_pool(stack: Stack) -> None:
    found = subprocess.run(["find", str(stack.run_dir / "pools"), "-name", "*.tmp"], capture_output=True, text=True, check=True).stdout
    assert found == ""
