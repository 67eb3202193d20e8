"""A volume outlives restarts, a crash between an intent and its result is finished on
restart, and Redis can be rebuilt from the log to the same bytes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nats
import redis

from services.nodeagent.domain.events import VolumeStaging
from services.provisioner.domain.events import VolumeCreating
from tests.conftest import Csi, loops_backing, mount_cap, mounts_under, needs_root
from volplane import subjects
from volplane.commands import Capability
from volplane.csi import csi_pb2 as csi
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.launcher import Stack
from volplane.projection import canonical_dump

CAP = mount_cap()


def _stack(run_dir: Path) -> Stack:
    s = Stack(run_dir, env={"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_NODE_ID": "node-a"})
    s.start()
    return s


def _append(stack: Stack, subject: str, event: object) -> None:
    async def go() -> None:
        nc = await nats.connect(stack.env["NATS_URL"])
        try:
            await EventStore(nc.jetstream()).append(subject, event, expected=0)  # type: ignore[arg-type]
        finally:
            await nc.close()

    asyncio.run(go())


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
        assert loops_backing(run_dir / "pools") == []
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
        _append(s, subjects.volume(vid), VolumeCreating(volume_id=vid, name="half-made", pool="shared", capacity_bytes=64 * 2**20, capabilities=(Capability(),)))
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
    s = _stack(tmp_path / "run")
    c = Csi(s.csi_endpoint)
    try:
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="half-staged", volume_capabilities=[CAP])).volume
        s.stop_service("nodeagent")
        _append(s, subjects.node_volume("node-a", vol.volume_id), VolumeStaging(volume_id=vol.volume_id, staging_path=str(stage), fs_type="ext4"))
        s.start_service("nodeagent")
        s.wait_healthy(["nodeagent"])
        assert any(f" {stage} " in m and " ext4 " in m for m in mounts_under(tmp_path))
        c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(stage)))
        assert mounts_under(tmp_path) == []
        assert loops_backing(tmp_path / "run" / "pools") == []
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    finally:
        c.close()
        s.stop()
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
    s = _stack(tmp_path / "run")
    c = Csi(s.csi_endpoint)
    try:
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
    finally:
        c.close()
        s.stop()
