"""``make chaos`` with a whole host as the victim (issue 12, item 8), on ``make run
HOSTS=3``'s machines (devstack/hosts.py).

The CSI suite's steps (runner.py), every volume a local-pool volume of host 2 (pinned by
its topology), the controller calls through ``run/csi.sock`` (host 1) and the node calls
through host 2's node plugin ``run/host-2/csi.sock``. At a random moment inside each step's
window the victim strikes:

- ``host-2``: every process of host 2 is killed at once (``kill_host``: its node agent,
  node plugin, NATS member and the second controller replicas; its mounts and loop devices
  stay, as after a crash of the processes alone) and started again (``start_host``);
- ``host-2 frozen``: every process of host 2 is stopped (SIGSTOP) for 1 to 5 s, then
  continued.

The caller then retries every call until it succeeds, and each volume is checked where its
host sees it: its image in host 2's pool, its staging and target mounts in host 2's mount
namespace, its loop device; after the teardown nothing may be left.

    python -m tests.chaos.runner --hosts --steps create stage --trials 1
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc

from devstack.hosts import HostsStack
from tests.chaos.runner import Lab, Vol
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

HOST = 2
TOPOLOGY_KEY = "topology.csi.volplane.io/node"
VICTIMS = (f"host-{HOST}", f"host-{HOST} frozen")


def victims(step: str) -> tuple[str, ...]:
    return VICTIMS


def strike(stack: HostsStack, victim: str) -> None:
    host = victim.split()[0]
    if victim.endswith(" frozen"):
        stack.freeze(host)
    else:
        stack.kill_host(host)


def recover(stack: HostsStack, victim: str) -> None:
    host = victim.split()[0]
    if victim.endswith(" frozen"):
        time.sleep(random.uniform(1.0, 5.0))  # a hang long enough for every caller to notice
        stack.thaw(host)
    else:
        stack.start_host(host, timeout=90)
    stack.wait_healthy(stack.services, timeout=90)


class HostsLab(Lab):
    """``Lab`` on host 2 of a ``HostsStack``: what it checks, it looks at from inside host 2."""

    def __init__(self, stack: HostsStack, work: Path) -> None:
        # The work directory is in host 2's kubelet directory, which only host 2 sees.
        self.hosts = stack
        work = stack.run_dir / "kubelet" / f"host-{HOST}" / "chaos"
        stack.exec_in(HOST, ["mkdir", "-p", str(work / "staging"), str(work / "target")], check=True)
        super().__init__(stack, work)
        self.node = f"host-{HOST}"
        self.node_channel = grpc.aio.insecure_channel(stack.endpoint_of(HOST))
        self.nodes = rpc.NodeStub(self.node_channel)

    def kill(self, victim: str) -> None:
        strike(self.hosts, victim)

    def restart(self, victim: str) -> None:
        recover(self.hosts, victim)

    def create_request(self, v: Vol) -> csi.CreateVolumeRequest:
        request = super().create_request(v)
        request.accessibility_requirements.requisite.append(csi.Topology(segments={TOPOLOGY_KEY: self.node}))
        return request

    def _in_host(self, argv: list[str]) -> str:
        return self.hosts.exec_in(HOST, argv, check=True).stdout

    def images(self, volume_id: str) -> list[Path]:
        pool = self.hosts.pool_dir(self.node)
        return [pool / name for name in self._in_host(["ls", "-A", str(pool)]).split() if name == f"{volume_id}.img"]

    def _mount_points(self) -> list[str]:
        return [line.split()[4] for line in self._in_host(["cat", "/proc/self/mountinfo"]).splitlines()]

    def mounts_at(self, path: Path) -> int:
        return self._mount_points().count(str(path))

    def leftover_images(self) -> list[str]:
        pool = self.hosts.pool_dir(self.node)
        return [name for name in self._in_host(["ls", "-A", str(pool)]).split() if name.endswith(".img")]

    def leftover_mounts(self) -> list[str]:
        return [point for point in self._mount_points() if point.startswith(str(self.work) + "/")]

    async def close(self) -> None:
        await self.node_channel.close()
        await super().close()
