"""A volume outlives restarts, a crash between an intent and its result is finished on
restart, and Redis can be rebuilt from the log to the same bytes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import nats
import pytest
import redis

from devstack.launcher import Stack
from services.nodeagent.domain.events import VolumeStaging
from services.provisioner.domain.events import VolumeCreating
from tests.co import append_event
from tests.conftest import Csi, loops_released, mount_cap, mounts_under, needs_root
from volplane import subjects
from volplane.csi import csi_pb2 as csi
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.projection import canonical_dump
from volplane.volumes import StoredCapability

CAP = mount_cap()


def _stack(run_dir: Path) -> Stack:
    s = Stack(run_dir, env={"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_NODE_ID": "node-a"})
    s.start()
    return s


@contextmanager
def _running(run_dir: Path) -> Iterator[tuple[Stack, Csi]]:
    """A whole stack and a CSI client on it, both gone when the block ends."""
    s = _stack(run_dir)
    c = Csi(s.csi_endpoint)
    try:
        yield s, c
    finally:
        c.close()
        s.stop()




@needs_root
def test_volume_survives_a_restart_of_everything_and_finishes_its_life(tmp_path: Path) -> None:
    run_dir, stage, target = tmp_path / "run", tmp_path / "stage", tmp_path / "pod" / "vol"
    stage.mkdir()
    target.parent.mkdir()
    s = _stack(run_dir)
    c = Csi(s.csi_endpoint)
    try:
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="restart-me", volume_capabilities=[CAP])).volume
        c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="node-a", volume_capability=CAP))
        c.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(stage), volume_capability=CAP))
        c.node.NodePublishVolume(csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(stage), target_path=str(target), volume_capability=CAP))
        (target / "data").write_text("before restart")
    finally:
        c.close()
        s.stop()  # Every service, nats-server and redis-server go down mid-life.

    s = _stack(run_dir)
    c = Csi(s.csi_endpoint)
    try:
        listed = c.controller.ListVolumes(csi.ListVolumesRequest())
        assert [e.volume.volume_id for e in listed.entries] == [vol.volume_id]
        again = c.controller.CreateVolume(csi.CreateVolumeRequest(name="restart-me", volume_capabilities=[CAP])).volume
        assert again.volume_id == vol.volume_id
        # The node remembers what it did: repeats are no-ops, and the data is there.
        c.node.NodePublishVolume(csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(stage), target_path=str(target), volume_capability=CAP))
        assert (target / "data").read_text() == "before restart"
        assert len([m for m in mounts_under(tmp_path) if f" {target} " in m]) == 1
        c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target)))
        c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(stage)))
        c.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="node-a"))
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        assert not target.exists()
        assert mounts_under(tmp_path) == []
        assert loops_released(run_dir / "pools") == []
        assert list((s.pool_dir("shared")).iterdir()) == []
    finally:
        c.close()
        s.stop()
        subprocess.run(["umount", "-R", str(target)], capture_output=True)
        subprocess.run(["umount", "-R", str(stage)], capture_output=True)


def test_create_intent_left_by_a_crash_is_finished_when_the_provisioner_starts(tmp_path: Path) -> None:
    s = _stack(tmp_path / "run")
    try:
        s.stop_service("provisioner")
        vid = volume_id_for("half-made")
        image = s.pool_dir("shared") / f"{vid}.img"
        # What a provisioner killed right after recording its intent leaves behind.
        append_event(s, subjects.volume(vid), VolumeCreating(volume_id=vid, name="half-made", pool="shared", capacity_bytes=64 * 2**20, capabilities=(StoredCapability(),)))
        assert not image.exists()
        s.start_service("provisioner")
        s.wait_healthy(["provisioner"])
        c = Csi(s.csi_endpoint)
        try:
            entries = c.controller.ListVolumes(csi.ListVolumesRequest()).entries
            assert [(e.volume.volume_id, e.volume.capacity_bytes) for e in entries] == [(vid, 64 * 2**20)]
            assert image.stat().st_size == 64 * 2**20
            # The CO's retry of the lost CreateVolume now simply succeeds.
            again = c.controller.CreateVolume(csi.CreateVolumeRequest(name="half-made", capacity_range=csi.CapacityRange(required_bytes=64 * 2**20), volume_capabilities=[CAP]))
            assert again.volume.volume_id == vid
        finally:
            c.close()
    finally:
        s.stop()


@needs_root
def test_stage_intent_left_by_a_crash_is_finished_when_the_nodeagent_starts(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    with _running(tmp_path / "run") as (s, c):
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="half-staged", volume_capabilities=[CAP])).volume
        s.stop_service("nodeagent")
        append_event(s, subjects.node_volume("node-a", vol.volume_id), VolumeStaging(volume_id=vol.volume_id, staging_path=str(stage), fs_type="ext4"))
        s.start_service("nodeagent")
        s.wait_healthy(["nodeagent"])
        assert any(f" {stage} " in m and " ext4 " in m for m in mounts_under(tmp_path))
        c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(stage)))
        assert mounts_under(tmp_path) == []
        assert loops_released(tmp_path / "run" / "pools") == []
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        subprocess.run(["umount", "-R", str(stage)], capture_output=True)


def _dump(url: str) -> dict[str, object]:
    async def go() -> dict[str, object]:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        try:
            return await canonical_dump(r)
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_flushed_redis_rebuilt_from_the_log_is_identical(tmp_path: Path) -> None:
    with _running(tmp_path / "run") as (s, c):
        ids = [c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"keep-{i}", volume_capabilities=[CAP])).volume.volume_id for i in range(5)]
        for vid in ids[:2]:
            c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        for name in list(s.services):
            s.stop_service(name)
        before = _dump(s.env["REDIS_URL"])
        assert len(before) > 3
        redis.Redis.from_url(s.env["REDIS_URL"]).flushdb()
        assert _dump(s.env["REDIS_URL"]) == {}
        out = subprocess.run([sys.executable, "-m", "services.rebuild"], env=s.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert _dump(s.env["REDIS_URL"]) == before


def test_projections_catch_up_after_redis_comes_back(tmp_path: Path) -> None:
    with _running(tmp_path / "run") as (s, c):
        assert s.redis is not None
        s.redis.stop()
        # Commands need the log, not Redis: a create goes through while Redis is down.
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="during-outage", volume_capabilities=[CAP]), timeout=30).volume
        s.redis.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                ids = [e.volume.volume_id for e in c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=10).entries]
                if vol.volume_id in ids:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "the volumes projection never caught up after Redis returned"
            time.sleep(0.5)
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=30)


def test_restore_into_another_pool_works_after_the_provisioner_restarts(tmp_path: Path) -> None:
    with _running(tmp_path / "run") as (s, c):
        src = c.controller.CreateVolume(csi.CreateVolumeRequest(name="src", volume_capabilities=[CAP]), timeout=30).volume  # shared pool
        with open(s.pool_dir("shared") / f"{src.volume_id}.img", "r+b") as f:
            f.write(b"from the shared pool")
        snap = c.controller.CreateSnapshot(csi.CreateSnapshotRequest(name="snap", source_volume_id=src.volume_id), timeout=30).snapshot
        s.restart_service("provisioner")  # its caches are empty now
        local = csi.TopologyRequirement(requisite=[csi.Topology(segments={"topology.csi.volplane.io/node": "node-a"})])
        source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
        restored = c.controller.CreateVolume(
            csi.CreateVolumeRequest(name="restored", volume_capabilities=[CAP], accessibility_requirements=local, volume_content_source=source), timeout=30
        ).volume
        assert restored.volume_context["pool"] == "node-a"
        with open(s.pool_dir("node-a") / f"{restored.volume_id}.img", "rb") as f:
            assert f.read(20) == b"from the shared pool"


def test_a_failed_expansion_rolls_back_and_leaves_the_volume_deletable(tmp_path: Path) -> None:
    with _running(tmp_path / "run") as (s, c):
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="grow-me", volume_capabilities=[CAP]), timeout=30).volume
        image = s.pool_dir("shared") / f"{vol.volume_id}.img"
        image.unlink()  # the pool lost the image
        grow = csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=2 * vol.capacity_bytes))
        with pytest.raises(grpc.RpcError):
            c.controller.ControllerExpandVolume(grow, timeout=30)
        listed = {e.volume.volume_id: e.volume.capacity_bytes for e in c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries}
        assert listed[vol.volume_id] == vol.capacity_bytes
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=30)
        assert vol.volume_id not in [e.volume.volume_id for e in c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries]


def test_redis_wiped_while_running_is_noticed_and_rebuilt_to_the_same_state(tmp_path: Path) -> None:
    with _running(tmp_path / "run") as (s, c):
        ids = [c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"wiped-{i}", volume_capabilities=[CAP]), timeout=30).volume.volume_id for i in range(4)]
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=ids[0]), timeout=30)
        c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30)  # settles the projection
        time.sleep(1)
        before = _dump(s.env["REDIS_URL"])
        redis.Redis.from_url(s.env["REDIS_URL"]).flushdb()
        deadline = time.monotonic() + 30
        while _dump(s.env["REDIS_URL"]) != before:
            assert time.monotonic() < deadline, "the services did not rebuild what Redis lost"
            time.sleep(0.5)
        listed = sorted(e.volume.volume_id for e in c.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries)
        assert listed == sorted(ids[1:])


def test_a_feed_ends_when_nats_server_restarts_so_its_reader_follows_again(tmp_path: Path) -> None:
    # An ordered consumer that was pushing before nats-server restarted stayed silent for
    # 19 s to 2 minutes (make chaos); ending the feed on reconnect makes every reader
    # (projections, informers) subscribe again from its position at once.
    s = Stack(tmp_path / "run")
    s.start_servers()
    assert s.nats is not None

    async def go() -> None:
        nc = await nats.connect(s.env["NATS_URL"], max_reconnect_attempts=-1, reconnect_time_wait=0.2, tls=s.client_tls())
        try:
            store = EventStore(nc.jetstream())
            await store.ensure_stream()

            async def read() -> None:
                async for _ in store.follow(subjects.EVENTS, 0):
                    pass

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            assert not reader.done()  # an empty log: the feed waits for events
            s.nats.stop(kill=True)
            s.nats.start()
            await asyncio.wait_for(reader, 20)  # ended, rather than waiting on a dead consumer
        finally:
            await nc.close()

    try:
        asyncio.run(go())
    finally:
        s.stop()
