"""Shared fixtures: a whole volplane stack on its own nats-server and redis-server.

The stack runs in a temporary directory on free loopback ports, never on the machine's
own NATS or Redis, so tests neither see nor leave state elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

IS_ROOT = os.geteuid() == 0 and Path("/dev/loop-control").exists()
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root and /dev/loop-control for loop devices and mounts")


class Csi:
    """Stubs of the three CSI services on one channel."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.identity = rpc.IdentityStub(self.channel)
        self.controller = rpc.ControllerStub(self.channel)
        self.node = rpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def mount_cap(mode: int = 1, fs_type: str = "", flags: tuple[str, ...] = ()) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapability.AccessMode(mode=mode),
    )


def mount_points() -> list[str]:
    """Every mount point on the host, one per mount (stacked mounts count twice)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split(" ")[4] for line in f]


def mounts_at(path: Path) -> int:
    return mount_points().count(str(path))


def mount_options_at(path: Path) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        lines = [line.split(" ") for line in f if line.split(" ")[4] == str(path)]
    assert lines, f"nothing mounted at {path}"
    return set(lines[-1][5].split(","))


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code ``call`` fails with (it must fail)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def loops_backing(directory: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(directory) in line]


def loops_released(directory: Path, timeout: float = 10.0) -> list[str]:
    """The loop devices still backed by files under ``directory`` once they are gone, or after
    ``timeout`` s. A device someone else holds open when the node agent detaches it (udev's
    probe, another test's scan of /dev/loop*) is only marked to detach, and the kernel does
    so at that holder's last close: a check right after NodeUnstageVolume may still see it."""
    deadline = time.monotonic() + timeout
    while (left := loops_backing(directory)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f" {directory}/" in line or f" {directory} " in line]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("stack"), env={"VOLPLANE_POOL_CAPACITY": "64Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "64Gi"})
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[Csi]:
    c = Csi(stack.csi_endpoint)
    yield c
    c.close()
