"""Images across hosts (issue 12, item 2; docs/architecture.md "A cross-host restore"): a
snapshot taken on host 2 restored onto host 3, and a host 2 volume cloned onto host 3 — the
data written through host 2's mount read back through host 3's — the copy going over the bus
(the VOLPLANE_TRANSFER stream), never a shared filesystem; the transfer discarded once the
image is in place; and with host 2 frozen, the restore answers a retryable code within its
deadline and completes after host 2 is thawed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.hosts import HostsStack
from tests.conftest import Csi, mount_cap
from tests.hosts.conftest import needs_hosts
from volplane import subjects
from volplane.clients import connect_once
from volplane.csi import csi_pb2 as csi
from volplane.ids import volume_id_for

pytestmark = needs_hosts

TIMEOUT = 60
CALL_DEADLINE = 10.0  # a CO's deadline on each call
# How long a CO retries a restore from a frozen host before the test calls it stuck: two
# completer passes (SEND_TIMEOUT_S + COMPLETE_PERIOD_S each) and a reconnect, with room.
GIVE_UP_FROZEN = 75.0
TOPOLOGY_KEY = "topology.csi.volplane.io/node"
SIZE = 64 * 2**20
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def _on(host: int) -> csi.TopologyRequirement:
    return csi.TopologyRequirement(requisite=[csi.Topology(segments={TOPOLOGY_KEY: f"host-{host}"})])


def _create(name: str, host: int, source: csi.VolumeContentSource | None = None) -> csi.CreateVolumeRequest:
    req = csi.CreateVolumeRequest(name=name, volume_capabilities=[mount_cap()], capacity_range=csi.CapacityRange(required_bytes=SIZE),
                                  accessibility_requirements=_on(host))
    if source is not None:
        req.volume_content_source.CopyFrom(source)
    return req


def _retried(call: Any, request: object, give_up: float = 120.0) -> Any:
    """A CO's retries: the same call again on a retryable code, until ``give_up`` seconds pass."""
    deadline, pause = time.monotonic() + give_up, 0.2
    while True:
        try:
            return call(request, timeout=CALL_DEADLINE)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


@dataclass
class Mounted:
    staging: Path
    target: Path


class Host:
    """One host's CSI node plugin, driven as its kubelet does."""

    def __init__(self, stack: HostsStack, ctl: Csi, host: int) -> None:
        self.stack, self.ctl, self.host, self.node = stack, ctl, host, f"host-{host}"
        self.csi = Csi(stack.endpoint_of(host))

    def mount(self, vid: str) -> Mounted:
        self.ctl.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=self.node, volume_capability=mount_cap()), timeout=TIMEOUT)
        base = self.stack.run_dir / "kubelet" / self.node
        m = Mounted(base / "plugins" / "staging" / uuid.uuid4().hex, base / "pods" / uuid.uuid4().hex / "volumes" / vid / "mount")
        self.stack.exec_in(self.host, ["mkdir", "-p", str(m.staging), str(m.target.parent)], check=True)
        self.csi.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=str(m.staging), volume_capability=mount_cap()), timeout=TIMEOUT)
        self.csi.node.NodePublishVolume(csi.NodePublishVolumeRequest(volume_id=vid, staging_target_path=str(m.staging), target_path=str(m.target),
                                                                     volume_capability=mount_cap()), timeout=TIMEOUT)
        return m

    def unmount(self, vid: str, m: Mounted) -> None:
        self.csi.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(m.target)), timeout=TIMEOUT)
        self.csi.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(m.staging)), timeout=TIMEOUT)
        self.ctl.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=self.node), timeout=TIMEOUT)

    def sh(self, script: str) -> str:
        return self.stack.exec_in(self.host, ["sh", "-c", script], check=True).stdout

    def pool_files(self, host: int) -> str:
        """What this host sees in host ``host``'s pool directory (its own pool, or nothing)."""
        return self.stack.exec_in(self.host, ["sh", "-c", f"ls -AR {self.stack.pool_dir(f'host-{host}')} 2>/dev/null"]).stdout

    def close(self) -> None:
        self.csi.close()


@dataclass
class Source:
    volume_id: str
    snapshot_id: str
    digest: str  # sha256sum of the data file, as host 2 read it


@pytest.fixture(scope="module")
def ctl(hosts: HostsStack) -> Iterator[Csi]:
    c = Csi(hosts.csi_endpoint)
    yield c
    c.close()


@pytest.fixture(scope="module")
def on(hosts: HostsStack, ctl: Csi) -> Iterator[dict[int, Host]]:
    out = {k: Host(hosts, ctl, k) for k in (2, 3)}
    yield out
    for h in out.values():
        h.close()


@pytest.fixture(scope="module")
def source(hosts: HostsStack, ctl: Csi, on: dict[int, Host]) -> Iterator[Source]:
    """A volume on host 2 with a file of known content written through its mount, and a
    snapshot of it taken after it was unmounted."""
    vol = ctl.controller.CreateVolume(_create(f"xsrc-{uuid.uuid4().hex[:12]}", 2), timeout=TIMEOUT).volume
    assert vol.volume_context["pool"] == "host-2"
    h2 = on[2]
    m = h2.mount(vol.volume_id)
    h2.sh(f"echo written-on-host-2 > {m.target}/note && head -c 5M /dev/urandom > {m.target}/data && sync")
    digest = h2.sh(f"cd {m.target} && sha256sum data note")
    h2.unmount(vol.volume_id, m)
    snap = ctl.controller.CreateSnapshot(csi.CreateSnapshotRequest(name=f"xsnap-{uuid.uuid4().hex[:12]}", source_volume_id=vol.volume_id), timeout=TIMEOUT).snapshot
    assert snap.ready_to_use
    yield Source(vol.volume_id, snap.snapshot_id, digest)
    ctl.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=TIMEOUT)
    ctl.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)


def _transfers(stack: HostsStack, kind: str, id: str) -> dict[str, int]:
    """What the transfer store holds of host 2's ``kind`` ``id`` (its manifest, parts and chunks)."""

    async def go() -> dict[str, int]:
        nc = await connect_once(stack.member_url(1), timeout=10, tls=stack.client_tls())
        try:
            js = nc.jetstream(timeout=10)
            held: dict[str, int] = {}
            for pattern in (f"vp.xfer.*.host-2.{kind}.{id}", f"vp.xfer.*.host-2.{kind}.{id}.>"):
                info = await js.stream_info(subjects.TRANSFER_STREAM, subjects_filter=pattern)
                held.update(info.state.subjects or {})
            return held
        finally:
            await nc.close()

    return asyncio.run(go())


def _check_on_host_3(stack: HostsStack, ctl: Csi, h3: Host, vid: str, src: Source) -> None:
    """The new volume's image is in host 3's pool only, and its data is the source's."""
    assert vid in h3.pool_files(3)
    assert vid not in stack.exec_in(2, ["sh", "-c", f"ls -AR {stack.pool_dir('host-3')} {stack.pool_dir('host-2')} 2>/dev/null"]).stdout
    assert not any(vid in p.name for p in stack.pool_dir("host-3").glob("*"))  # nor seen from outside the hosts
    m = h3.mount(vid)
    try:
        assert h3.sh(f"cd {m.target} && sha256sum data note") == src.digest
        assert h3.sh(f"cat {m.target}/note") == "written-on-host-2\n"
    finally:
        h3.unmount(vid, m)
    # Retried as a CO does: the completer may hold the volume a moment (ABORTED).
    _retried(ctl.controller.DeleteVolume, csi.DeleteVolumeRequest(volume_id=vid))
    assert vid not in h3.pool_files(3)


def test_a_snapshot_taken_on_host_two_is_restored_on_host_three(hosts: HostsStack, ctl: Csi, on: dict[int, Host], source: Source) -> None:
    from_snap = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=source.snapshot_id))
    vol = _retried(ctl.controller.CreateVolume, _create(f"xrestore-{uuid.uuid4().hex[:12]}", 3, from_snap)).volume
    assert vol.volume_context["pool"] == "host-3" and vol.content_source.snapshot.snapshot_id == source.snapshot_id
    assert _transfers(hosts, "snapshot", source.snapshot_id) == {}  # discarded once the image was in place
    _check_on_host_3(hosts, ctl, on[3], vol.volume_id, source)


def test_a_volume_of_host_two_is_cloned_onto_host_three(hosts: HostsStack, ctl: Csi, on: dict[int, Host], source: Source) -> None:
    from_vol = csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=source.volume_id))
    vol = _retried(ctl.controller.CreateVolume, _create(f"xclone-{uuid.uuid4().hex[:12]}", 3, from_vol)).volume
    assert vol.volume_context["pool"] == "host-3" and vol.content_source.volume.volume_id == source.volume_id
    assert _transfers(hosts, "volume", source.volume_id) == {}
    _check_on_host_3(hosts, ctl, on[3], vol.volume_id, source)


def test_a_restore_from_a_frozen_host_is_unavailable_in_time_and_completes_after_thaw(
    hosts: HostsStack, ctl: Csi, on: dict[int, Host], source: Source
) -> None:
    from_snap = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=source.snapshot_id))
    req = _create(f"xfrozen-{uuid.uuid4().hex[:12]}", 3, from_snap)
    answers: list[tuple[grpc.StatusCode, str, float]] = []
    hosts.freeze(2)
    try:
        # As a CO: the call again on each retryable answer, with its backoff, until one names
        # the frozen source host. Before it, a call may meet the log's leader moving off host 2,
        # host 3's agent reconnecting (when its NATS member was host 2's), or ABORTED while the
        # provisioner's completer holds the volume to finish the intent itself (each pass waits
        # SEND_TIMEOUT_S for host 2, then COMPLETE_PERIOD_S free): so a time, not a count.
        give_up, pause = time.monotonic() + GIVE_UP_FROZEN, 0.2
        while time.monotonic() < give_up:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                ctl.controller.CreateVolume(req, timeout=CALL_DEADLINE)
            answers.append((err.value.code(), err.value.details() or "", time.monotonic() - started))
            if "host-2" in answers[-1][1] and answers[-1][0] == grpc.StatusCode.UNAVAILABLE:
                break
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        assert volume_id_for(req.name) not in on[3].pool_files(3)  # nothing half-made while it waits
    finally:
        hosts.thaw(2)
    # Every answer a retryable code given before the call's deadline; one says host 2 did not send.
    seen = "\n".join(f"{code.name} after {took:.2f}s: {details}" for code, details, took in answers)
    assert all(code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED) and took < CALL_DEADLINE for code, _, took in answers), seen
    assert any(code == grpc.StatusCode.UNAVAILABLE and "host-2" in details for code, details, _ in answers), seen
    thawed = time.monotonic()
    vol = _retried(ctl.controller.CreateVolume, req).volume
    print(f"\nfrozen source: {[(c.name, round(t, 1), d[:160]) for c, d, t in answers]}; restored {time.monotonic() - thawed:.1f}s after thaw")
    assert vol.volume_context["pool"] == "host-3"
    assert _transfers(hosts, "snapshot", source.snapshot_id) == {}
    _check_on_host_3(hosts, ctl, on[3], vol.volume_id, source)
