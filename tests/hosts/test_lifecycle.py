"""A several-hosts stack's life (devstack/hosts.py): ``stop`` (Ctrl-C) leaves no namespace,
link, mount or loop device behind — even with a volume staged on a host — and the next
start on the same run directory finds the same event log and its volumes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devstack import hosts as hosts_module
from devstack.hosts import HostsError, HostsStack
from tests.conftest import Csi, mount_cap
from tests.hosts.conftest import ENV, left_behind, needs_hosts
from volplane.csi import csi_pb2 as csi

TIMEOUT = 60


@needs_hosts
def test_stop_leaves_nothing_and_the_next_start_finds_the_same_log_and_volume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**ENV, "VOLPLANE_STREAM_REPLICAS": "2"}
    # Someone else's volume in the root namespace, mounted before the hosts start.
    theirs, image = tmp_path / "theirs", tmp_path / "theirs.img"
    theirs.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["mount", loop, str(theirs)], check=True)
    first = HostsStack(run, env=dict(env), hosts=2, instance=None)
    first.start()
    try:
        # No host keeps a copy of it: its owner unmounts it and frees its loop device while the hosts run.
        for k in (1, 2):
            assert str(theirs) not in first.exec_in(k, ["cat", "/proc/self/mountinfo"], check=True).stdout
        subprocess.run(["umount", str(theirs)], check=True)
        subprocess.run(["losetup", "-d", loop], check=True)
        assert not Path(f"/sys/block/{Path(loop).name}/loop/backing_file").exists()
        info = asyncio.run(first.cluster_info(1))
        assert info["replicas"] == 2 and info["stream_peers"] == ["host-1", "host-2"]
        ctl, node = Csi(first.csi_endpoint), Csi(first.endpoint_of(2))
        try:
            vol = ctl.controller.CreateVolume(csi.CreateVolumeRequest(name=f"kept-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()],
                                                                      capacity_range=csi.CapacityRange(required_bytes=64 * 2**20)), timeout=TIMEOUT).volume
            ctl.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="host-2", volume_capability=mount_cap()), timeout=TIMEOUT)
            staging = first.run_dir / "kubelet" / "host-2" / "staging"
            first.exec_in(2, ["mkdir", "-p", str(staging)], check=True)
            # Left staged on purpose: its mount and loop device are stop()'s to remove.
            node.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=TIMEOUT)
            assert str(staging) in first.exec_in(2, ["cat", "/proc/self/mountinfo"], check=True).stdout
            loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
            assert f"({run}/" in loops
        finally:
            ctl.close()
            node.close()
        messages = int(str(asyncio.run(first.cluster_info(2))["messages"]))
    finally:
        first.stop()
        subprocess.run(["umount", str(theirs)], capture_output=True)  # when an assertion above failed first
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    assert left_behind(first) == []

    second = HostsStack(run, env=dict(env), hosts=2, instance=None)
    second.start()
    try:
        info = asyncio.run(second.cluster_info(2))
        assert info["replicas"] == 2 and int(str(info["messages"])) >= messages
        ctl = Csi(second.csi_endpoint)
        try:
            listed = ctl.controller.ListVolumes(csi.ListVolumesRequest(), timeout=TIMEOUT)
            assert vol.volume_id in {e.volume.volume_id for e in listed.entries}
        finally:
            ctl.close()
    finally:
        second.stop()
    assert left_behind(second) == []


def test_without_root_it_says_root_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts_module.os, "geteuid", lambda: 1000)
    with pytest.raises(HostsError, match="needs root"):
        hosts_module.require_hosts_support()


@pytest.mark.parametrize("value", ["1", "three"])
def test_make_run_refuses_fewer_than_two_hosts(tmp_path: Path, value: str) -> None:
    env = {**os.environ, "HOSTS": value, "VOLPLANE_RUN_DIR": str(tmp_path / "run")}
    out = subprocess.run([sys.executable, "-m", "devstack.launcher"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "HOSTS" in out.stderr and "2 or more" in out.stderr
