"""``make run HOSTS=3``'s machines (devstack/hosts.py): each host its own network and mount
namespace, a NATS cluster member each, every service healthy, the CSI endpoints where the
brief puts them, a host's pool, mounts and loop devices its own."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from devstack.hosts import HostsStack
from tests.conftest import Csi, mount_cap
from tests.hosts.conftest import needs_hosts
from volplane.csi import csi_pb2 as csi

pytestmark = needs_hosts

TIMEOUT = 60
TOPOLOGY_KEY = "topology.csi.volplane.io/node"


def _reachable(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def _mount_points(stack: HostsStack, host: int) -> set[str]:
    out = stack.exec_in(host, ["cat", "/proc/self/mountinfo"], check=True).stdout
    return {line.split()[4] for line in out.splitlines()}


def test_each_host_has_its_own_network_namespace_and_address(hosts: HostsStack) -> None:
    for k in (1, 2, 3):
        addr = hosts.exec_in(k, ["ip", "-br", "-4", "addr", "show", "eth0"], check=True).stdout
        assert hosts.address(k) in addr
        others = [hosts.address(j) for j in (1, 2, 3) if j != k]
        assert not any(o in addr for o in others)
        # The root namespace reaches every host's member over the bridge.
        assert _reachable(hosts.address(k), 4222)


def test_every_service_and_server_of_every_host_is_up_and_healthy(hosts: HostsStack) -> None:
    assert hosts.dead() == []
    for name in hosts.services:
        assert hosts._healthy(name), name
    for k in (1, 2, 3):
        pids = set(hosts.pids_of(k))
        assert hosts.servers[f"nats-host-{k}"].proc is not None and hosts.servers[f"nats-host-{k}"].proc.pid in pids
        assert hosts.procs[f"nodeagent-host-{k}"].pid in pids and hosts.procs[f"apigw-host-{k}"].pid in pids
        # Nobody else's: host 2's processes are not on host 3.
        assert not pids & {hosts.procs[n].pid for n in hosts.names_on(k % 3 + 1)}
    assert {hosts.procs[n].pid for n in ("provisioner", "attacher", "apigw")} <= set(hosts.pids_of(1))
    assert {hosts.procs[n].pid for n in ("provisioner#2", "attacher#2", "apigw#2")} <= set(hosts.pids_of(2))
    # Every client is given every member, its own host's first.
    for name, proc in hosts.procs.items():
        environ = dict(e.split("=", 1) for e in Path(f"/proc/{proc.pid}/environ").read_text().split("\0") if "=" in e)
        members = [url.rsplit("@", 1)[1] for url in environ["NATS_URL"].split(",")]
        assert members[0] == f"{hosts.address(hosts.host_of(name))}:4222" and sorted(members) == sorted(f"{hosts.address(k)}:4222" for k in (1, 2, 3)), name


def test_a_frozen_host_answers_nothing_until_it_is_thawed(hosts: HostsStack) -> None:
    n = Csi(hosts.endpoint_of(3))
    try:
        hosts.freeze(3)
        try:
            with pytest.raises(grpc.RpcError) as err:
                n.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=2)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            hosts.thaw(3)
        assert n.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id == "host-3"
    finally:
        n.close()


def test_the_nats_cluster_has_three_members_and_the_event_log_three_replicas(hosts: HostsStack) -> None:
    info = asyncio.run(hosts.cluster_info(2))
    assert info["members"] == sorted(f"{hosts.address(k)}:4222" for k in (1, 2, 3))
    assert info["replicas"] == 3 and info["current"]
    assert info["stream_peers"] == ["host-1", "host-2", "host-3"]


def test_the_controller_endpoints_answer_and_each_node_plugin_is_its_own_host(hosts: HostsStack) -> None:
    for endpoint in (hosts.csi_endpoint, hosts.replica_endpoint("apigw#2")):
        c = Csi(endpoint)
        try:
            assert c.identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=TIMEOUT).name == "csi.volplane.io"
            caps = c.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest(), timeout=TIMEOUT).capabilities
            assert any(cap.service.type == csi.PluginCapability.Service.CONTROLLER_SERVICE for cap in caps)
        finally:
            c.close()
    for k in (1, 2, 3):
        n = Csi(hosts.endpoint_of(k))
        try:
            info = n.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT)
            assert info.node_id == f"host-{k}"
            assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: f"host-{k}"}
            # A node plugin serves no Controller service.
            with pytest.raises(grpc.RpcError) as err:
                n.controller.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest(), timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            n.close()


def test_a_file_in_host_two_pool_is_seen_on_host_two_only(hosts: HostsStack) -> None:
    pool, backing = hosts.pool_dir("host-2"), hosts.host_dir(2) / "pool"
    name = f"marker-{uuid.uuid4().hex}.img"
    hosts.exec_in(2, ["truncate", "-s", "1M", str(pool / name)], check=True)
    assert name in hosts.exec_in(2, ["ls", str(pool)], check=True).stdout
    for k in (1, 3):
        assert name not in hosts.exec_in(k, ["ls", "-A", str(pool)]).stdout
        assert name not in hosts.exec_in(k, ["sh", "-c", f"ls -A {backing} 2>&1"]).stdout
    # Nor in the root namespace, by either path.
    assert not (pool / name).exists() and not (backing / name).exists()
    hosts.exec_in(2, ["rm", str(pool / name)], check=True)


def test_a_volume_staged_on_host_two_is_mounted_and_looped_on_host_two_only(hosts: HostsStack) -> None:
    ctl, node = Csi(hosts.csi_endpoint), Csi(hosts.endpoint_of(2))
    staging = hosts.run_dir / "kubelet" / "host-2" / "plugins" / "staging" / uuid.uuid4().hex
    try:
        vol = ctl.controller.CreateVolume(csi.CreateVolumeRequest(name=f"h2-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()],
                                                                  capacity_range=csi.CapacityRange(required_bytes=64 * 2**20)), timeout=TIMEOUT).volume
        ctl.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="host-2", volume_capability=mount_cap()), timeout=TIMEOUT)
        hosts.exec_in(2, ["mkdir", "-p", str(staging)], check=True)
        node.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=TIMEOUT)
        assert str(staging) in _mount_points(hosts, 2)
        assert str(staging) not in _mount_points(hosts, 1) and str(staging) not in _mount_points(hosts, 3)
        with open("/proc/self/mountinfo") as f:
            assert str(staging) not in {line.split()[4] for line in f}
        hosts.exec_in(2, ["sh", "-c", f"echo on-host-2 > {staging}/data"], check=True)
        assert hosts.exec_in(2, ["cat", f"{staging}/data"], check=True).stdout == "on-host-2\n"
        assert not Path(staging, "data").exists()
        node.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)), timeout=TIMEOUT)
        assert str(staging) not in _mount_points(hosts, 2)
        ctl.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="host-2"), timeout=TIMEOUT)
        ctl.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
    finally:
        ctl.close()
        node.close()


def test_link_down_cuts_a_host_off_and_link_up_joins_it_again(hosts: HostsStack) -> None:
    hosts.link_down(3)
    try:
        assert not _reachable(hosts.address(3), 4222)
        probe = f"import socket; socket.create_connection(('{hosts.address(3)}', 4222), timeout=1)"
        assert hosts.exec_in(1, [sys.executable, "-c", probe]).returncode != 0
        # Host 3 still reaches itself: its processes go on, cut off.
        assert hosts.exec_in(3, [sys.executable, "-c", probe]).returncode == 0
    finally:
        hosts.link_up(3)
    # Back on the bridge: host 1 reaches it again once its neighbour entry, failed while
    # the link was down, is resolved anew (a moment; the loop waits on the condition).
    deadline = time.monotonic() + 30
    while hosts.exec_in(1, [sys.executable, "-c", probe]).returncode != 0:
        assert time.monotonic() < deadline, "host 1 does not reach host 3 after link_up"
    assert _reachable(hosts.address(3), 4222)


def test_a_killed_host_loses_every_process_and_comes_back_healthy(hosts: HostsStack) -> None:
    before = set(hosts.pids_of(3))
    hosts.kill_host(3)
    holder = hosts.holders[3].pid
    assert set(hosts.pids_of(3)) == {holder}
    assert not _reachable(hosts.address(3), 4222)
    hosts.start_host(3)
    after = set(hosts.pids_of(3))
    assert holder in after and not (after - {holder}) & before
    n = Csi(hosts.endpoint_of(3))
    try:
        assert n.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id == "host-3"
    finally:
        n.close()
    assert asyncio.run(hosts.cluster_info(3))["stream_peers"] == ["host-1", "host-2", "host-3"]


def test_a_rebooted_host_loses_its_mounts_and_comes_back_in_a_new_mount_namespace(hosts: HostsStack) -> None:
    probe = hosts.run_dir / "kubelet" / "host-3" / "probe"
    hosts.exec_in(3, ["mkdir", "-p", str(probe)], check=True)
    hosts.exec_in(3, ["mount", "-t", "tmpfs", "-o", "size=1m", "probe", str(probe)], check=True)
    assert str(probe) in _mount_points(hosts, 3)
    old = hosts.holders[3].pid
    hosts.kill_host(3, reboot=True)
    assert hosts.holders[3].pid != old
    assert str(probe) not in _mount_points(hosts, 3)
    # Its disk kept its data; its pool is its own again in the new namespace.
    assert str(hosts.pool_dir("host-3")) in _mount_points(hosts, 3)
    hosts.start_host(3)
    assert hosts.dead() == []
    n = Csi(hosts.endpoint_of(3))
    try:
        assert n.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id == "host-3"
    finally:
        n.close()


def test_a_local_volume_of_host_two_lives_and_dies_on_host_two_only(hosts: HostsStack) -> None:
    """Through run/csi.sock (the controller, host 1) and run/host-2/csi.sock: its image is
    made, mounted and removed on host 2, and no other host — nor the root namespace — sees it."""
    ctl, node = Csi(hosts.csi_endpoint), Csi(hosts.endpoint_of(2))
    pool = hosts.pool_dir("host-2")
    staging = hosts.run_dir / "kubelet" / "host-2" / "plugins" / "staging" / uuid.uuid4().hex
    try:
        req = csi.CreateVolumeRequest(
            name=f"local-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()], capacity_range=csi.CapacityRange(required_bytes=64 * 2**20),
            accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments={TOPOLOGY_KEY: "host-2"})]))
        vol = ctl.controller.CreateVolume(req, timeout=TIMEOUT).volume
        assert vol.volume_context["pool"] == "host-2"
        images = hosts.exec_in(2, ["ls", str(pool)], check=True).stdout.split()
        assert any(vol.volume_id in image for image in images)
        for k in (1, 3):
            assert vol.volume_id not in hosts.exec_in(k, ["ls", "-A", str(pool)]).stdout
        assert not any(vol.volume_id in p.name for p in pool.iterdir())
        ctl.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id="host-2", volume_capability=mount_cap()), timeout=TIMEOUT)
        hosts.exec_in(2, ["mkdir", "-p", str(staging)], check=True)
        node.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=TIMEOUT)
        hosts.exec_in(2, ["sh", "-c", f"echo local > {staging}/data"], check=True)
        node.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)), timeout=TIMEOUT)
        ctl.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id="host-2"), timeout=TIMEOUT)
        ctl.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
        assert vol.volume_id not in hosts.exec_in(2, ["ls", "-A", str(pool)], check=True).stdout
    finally:
        ctl.close()
        node.close()
