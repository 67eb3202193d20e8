"""ControllerModifyVolume and CreateVolume's mutable parameters: per-volume I/O limits that the
kernel enforces on the volume's loop device (the block I/O controller of cgroups), for the
processes of the node's I/O cgroup (``VOLPLANE_IO_CGROUP``, default ``volplane``).

The throughput checks are coarse on purpose (a ceiling of 1.6 N for a limit of N, a floor well
above N once the limit is raised or gone): they show the limit acts, ``make bench-qos`` reports
the numbers.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from services.nodeagent.adapters.iolimits import IoCgroup
from tests.conftest import Csi, code_of, mount_cap, needs_root
from tests.integration.node_helpers import (  # noqa: F401 - fixtures are used by name
    Node,
    node,
)
from volplane.csi import csi_pb2 as csi

pytestmark = needs_root

TIMEOUT = 60
MiB = 2**20
N = 40  # IOPS: low enough that a direct writer of this host does many times more unthrottled
Mode = csi.VolumeCapability.AccessMode
BLOCK = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))


def cgroup_of(stack: Stack) -> IoCgroup:
    return IoCgroup.detect(stack.env.get("VOLPLANE_IO_CGROUP", "volplane"))


def device_of(image: Path) -> str:
    """The loop device the volume's image is attached to now."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout
    devices = [line.split(":", 1)[0] for line in out.splitlines()]
    assert len(devices) == 1, out
    return devices[0]


def write_iops(cgroup: IoCgroup, target: Path | str, writes: int) -> float:
    """4 KiB direct writes per second of a ``dd`` run inside ``cgroup``."""
    script = f'echo $$ > {cgroup.procs()} && exec dd if=/dev/zero of="$1" bs=4k count={writes} oflag=direct conv=notrunc status=none'
    started = time.monotonic()
    subprocess.run(["sh", "-c", script, "dd", str(target)], check=True, timeout=120)
    return writes / (time.monotonic() - started)


def modify(client: Csi, vid: str, **parameters: str) -> None:
    client.controller.ControllerModifyVolume(csi.ControllerModifyVolumeRequest(volume_id=vid, mutable_parameters=parameters), timeout=TIMEOUT)


def create_request(cap: csi.VolumeCapability, **parameters: str) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(
        name=f"qos-{uuid.uuid4().hex}", capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[cap], mutable_parameters=parameters
    )


def create_limited(node: Node, cap: csi.VolumeCapability, req: csi.CreateVolumeRequest | None = None, **parameters: str) -> csi.Volume:
    req = req or create_request(cap, **parameters)
    vol = node.client.controller.CreateVolume(req, timeout=TIMEOUT).volume
    node.volumes.append(vol.volume_id)
    node.attach(vol.volume_id, cap)
    return vol


def test_a_volume_created_with_write_iops_is_held_to_them_raised_live_and_freed(node: Node, stack: Stack, client: Csi) -> None:
    cgroup = cgroup_of(stack)
    vol = create_limited(node, BLOCK, writeIOPS=str(N))
    node.stage(vol.volume_id, node.staging_dir(), cap=BLOCK)
    device = device_of(node.image(vol))
    assert cgroup.current(device) == {"writeIOPS": N}

    assert write_iops(cgroup, device, N * 2) <= 1.6 * N

    modify(client, vol.volume_id, writeIOPS=str(2 * N))
    assert cgroup.current(device) == {"writeIOPS": 2 * N}
    raised = write_iops(cgroup, device, N * 4)
    assert 1.2 * N < raised <= 1.6 * 2 * N

    modify(client, vol.volume_id, writeIOPS="0")
    assert cgroup.current(device) == {}
    assert write_iops(cgroup, device, N * 8) > 4 * N


def test_a_direct_writer_to_a_mounted_volume_is_held_to_its_limit(node: Node, stack: Stack) -> None:
    cgroup = cgroup_of(stack)
    vol = create_limited(node, mount_cap(), writeIOPS=str(N))
    staging = node.staging_dir()
    node.stage(vol.volume_id, staging)
    assert write_iops(cgroup, staging / "data", N * 2) <= 1.6 * N


def test_the_same_modify_twice_changes_nothing_and_other_limits_are_kept(node: Node, stack: Stack, client: Csi) -> None:
    cgroup = cgroup_of(stack)
    req = create_request(BLOCK, writeIOPS="50", readBytesPerSecond="8Mi")
    vol = create_limited(node, BLOCK, req)
    # A retried CreateVolume with the same mutable parameters is the same volume.
    assert client.controller.CreateVolume(req, timeout=TIMEOUT).volume.volume_id == vol.volume_id
    node.stage(vol.volume_id, node.staging_dir(), cap=BLOCK)
    device = device_of(node.image(vol))
    for _ in range(2):
        modify(client, vol.volume_id, readIOPS="70")
        # Keys not named keep their limits (the CSI spec: no change for an absent key).
        assert cgroup.current(device) == {"writeIOPS": 50, "readIOPS": 70, "readBytesPerSecond": 8 * MiB}
    # Modified since, the volume no longer matches the parameters it was created with.
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


def test_a_volume_staged_after_a_modify_gets_the_new_limits_and_unstage_takes_them_off(node: Node, stack: Stack, client: Csi) -> None:
    cgroup = cgroup_of(stack)
    vol = node.create(cap=BLOCK)
    modify(client, vol.volume_id, readIOPS="30", writeBytesPerSecond="4M")
    staging = node.staging_dir()
    node.stage(vol.volume_id, staging, cap=BLOCK)
    device = device_of(node.image(vol))
    assert cgroup.current(device) == {"readIOPS": 30, "writeBytesPerSecond": 4_000_000}
    node.unstage(vol.volume_id, staging)
    node.staged.remove((vol.volume_id, staging))
    assert cgroup.current(device) == {}


@pytest.mark.parametrize(
    "parameters",
    [{"iops": "10"}, {"writeIOPS": "-1"}, {"writeIOPS": "ten"}, {"writeIOPS": "1Mi"}, {"readBytesPerSecond": "1.5Mi"}, {"writeIOPS": str(2**32)}],
    ids=["unknown-key", "negative", "not-a-number", "iops-with-suffix", "fraction", "too-large"],
)
def test_unknown_keys_and_bad_values_are_invalid_argument(node: Node, client: Csi, parameters: dict[str, str]) -> None:
    create = csi.CreateVolumeRequest(name=f"qos-bad-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()], mutable_parameters=parameters)
    assert code_of(lambda: client.controller.CreateVolume(create, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT
    vol = node.create(attach=False)
    req = csi.ControllerModifyVolumeRequest(volume_id=vol.volume_id, mutable_parameters=parameters)
    assert code_of(lambda: client.controller.ControllerModifyVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_modify_without_volume_id_is_invalid_argument(client: Csi) -> None:
    req = csi.ControllerModifyVolumeRequest(mutable_parameters={"writeIOPS": "1"})
    assert code_of(lambda: client.controller.ControllerModifyVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_modify_without_parameters_changes_nothing(node: Node, stack: Stack, client: Csi) -> None:
    vol = create_limited(node, BLOCK, writeIOPS="25")
    node.stage(vol.volume_id, node.staging_dir(), cap=BLOCK)
    modify(client, vol.volume_id)
    assert cgroup_of(stack).current(device_of(node.image(vol))) == {"writeIOPS": 25}


@pytest.mark.parametrize("vid", ["not-a-volplane-id", "pv-" + "0" * 32])
def test_modifying_an_unknown_volume_is_not_found(client: Csi, vid: str) -> None:
    req = csi.ControllerModifyVolumeRequest(volume_id=vid, mutable_parameters={"writeIOPS": "10"})
    assert code_of(lambda: client.controller.ControllerModifyVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND


def test_the_limit_survives_a_restart_of_the_nodeagent_that_finds_it_gone(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", env={"VOLPLANE_POOL_CAPACITY": "4Gi", "VOLPLANE_NODE_ID": "qos-node", "VOLPLANE_IO_CGROUP": "volplane-restart"})
    stack.start()
    client = Csi(stack.csi_endpoint)
    n = Node(client, stack, tmp_path)
    try:
        cgroup = cgroup_of(stack)
        vol = create_limited(n, BLOCK, writeIOPS=str(N))
        n.stage(vol.volume_id, n.staging_dir(), cap=BLOCK)
        device = device_of(n.image(vol))
        stack.stop_service("nodeagent")
        cgroup.clear(device)  # as a reboot would: the kernel's rule is gone, the log still has it
        stack.start_service("nodeagent")
        stack.wait_healthy(["nodeagent"], TIMEOUT)
        assert cgroup.current(device) == {"writeIOPS": N}
        assert write_iops(cgroup, device, N * 2) <= 1.6 * N
        problems = n.cleanup()
        assert problems == []
        assert cgroup.current(device) == {}
    finally:
        n.cleanup()
        client.close()
        stack.stop()
        with contextlib.suppress(OSError):  # its own empty cgroup
            cgroup_of(stack).path.rmdir()
