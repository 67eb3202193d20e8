"""The chart with Redis behind Sentinel (``redis.sentinel.enabled``), started for real by
``localpods``: three Redis pods, each a redis-server and a Sentinel running the chart's own
shell scripts (pod 0 the master on the first start, the others its replicas, every
Sentinel monitoring it), TLS everywhere as by default (Debian's redis-server, which has
TLS). Those pods work out addresses at run time, so each gets a network namespace of its
own on a bridge and the cluster's names in DNS (localpods' docstring); the services reach
the Sentinels by the names their REDIS_URL gives (``rediss+sentinel://…-headless:26379``).

Then the master's redis-server is killed (SIGKILL): the Sentinels must promote a replica,
and a CO retrying UNAVAILABLE for up to ~30 s gets a CreateVolume/DeleteVolume through,
with the volume written before the kill still listed. The figures are printed (-s).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.deploy.localpods import Container, LocalCluster
from tests.deploy.test_containers import NODE, assert_volplane_ready, chart, needs_root
from tests.deploy.test_containers import test_a_volume_is_created_and_deleted_through_the_deployment as create_and_delete
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

pytestmark = needs_root

SENTINEL = {"redis": {"sentinel": {"enabled": True}}}  # 3 pods, quorum 2, down after 5000 ms; TLS on
MASTER = "volplane"  # redis.sentinel.masterName
HEADLESS = "volplane-redis-headless"
# The chart's redis-cli flags with TLS (the Redis pods' probes use the same).
TLS = ["--tls", "--cacert", "/etc/redis-tls/ca.crt", "--cert", "/etc/redis-tls/tls.crt", "--key", "/etc/redis-tls/tls.key"]
# A CO's patience with a control plane that is failing over.
RETRY_FOR = 30.0
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(chart(SENTINEL), node=NODE) as running:
        try:
            running.start()
        finally:
            print("\nchart-sentinel:", *running.report(), sep="\n  ")
        yield running


def _redis(cluster: LocalCluster, name: str) -> list[Container]:
    """The Redis pods' containers called ``name`` ("redis" or "sentinel"), by pod."""
    return sorted((c for c in cluster.containers if c.kind == "redis" and c.spec["name"] == name), key=lambda c: c.pod.name)


def _sentinel(cluster: LocalCluster, c: Container, *command: str) -> list[str]:
    """A Sentinel command through redis-cli in ``c``'s pod (``kubectl exec``): its output lines."""
    out = cluster.exec(c, ["redis-cli", *TLS, "-h", "127.0.0.1", "-p", "26379", "--no-auth-warning", *command], timeout=30)
    assert out.returncode == 0, (c.name, command, out.stdout, out.stderr)
    return out.stdout.splitlines()


def _master_of(cluster: LocalCluster, c: Container) -> str:
    """The pod the Sentinel in ``c``'s pod names master ("" when it names none)."""
    lines = _sentinel(cluster, c, "sentinel", "get-master-addr-by-name", MASTER)
    return lines[0].removesuffix("." + HEADLESS) if lines else ""


def _master_state(cluster: LocalCluster, c: Container) -> dict[str, str]:
    lines = _sentinel(cluster, c, "sentinel", "master", MASTER)
    return dict(zip(lines[::2], lines[1::2], strict=True))


def _controller(cluster: LocalCluster) -> tuple[grpc.Channel, rpc.ControllerStub]:
    apigw = next(c for c in cluster.volplane() if c.name.endswith("-controller/apigw"))
    channel = grpc.insecure_channel(apigw.env["VOLPLANE_CSI_ENDPOINT"])
    return channel, rpc.ControllerStub(channel)


def _request(name: str) -> csi.CreateVolumeRequest:
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=1))  # type: ignore[arg-type]  # SINGLE_NODE_WRITER
    return csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[cap], parameters={"pool": "shared"})


def _retrying(call: Any, request: Any, deadline: float, seen: list[str]) -> Any:
    """``call(request)`` again while it fails UNAVAILABLE (or times out) until ``deadline``,
    as an external-provisioner does; the codes it met go to ``seen``."""
    while True:
        try:
            return call(request, timeout=10)
        except grpc.RpcError as exc:
            seen.append(exc.code().name)
            if time.monotonic() > deadline or exc.code() not in RETRIED:
                raise
            time.sleep(0.5)


def test_every_volplane_container_becomes_ready_with_redis_behind_the_sentinels(cluster: LocalCluster) -> None:
    assert_volplane_ready(cluster)
    for c in cluster.volplane():
        if "REDIS_URL" in c.env:
            assert c.env["REDIS_URL"].startswith("rediss+sentinel://") and f"volplane-redis-2.{HEADLESS}:26379" in c.env["REDIS_URL"], c.name
    servers, sentinels = _redis(cluster, "redis"), _redis(cluster, "sentinel")
    assert [c.pod.name for c in servers] == [c.pod.name for c in sentinels] == [f"volplane-redis-{i}" for i in range(3)]
    assert all(c.status == "ready" for c in servers + sentinels)
    assert all(c.status == "completed" for c in cluster.containers if c.init)
    # Every Sentinel names pod 0 the master (the first start), sees both replicas and the
    # two other Sentinels; the master is not thought down.
    # A Sentinel learns the replicas from the master's INFO (every 10 s) and the other
    # Sentinels from their hello messages (every 2 s): wait for it, up to 60 s.
    for c in sentinels:
        assert _master_of(cluster, c) == "volplane-redis-0", c.name
        deadline = time.monotonic() + 60
        while True:
            state = _master_state(cluster, c)
            if state["num-slaves"] == "2" and state["num-other-sentinels"] == "2" and state["flags"] == "master":
                break
            assert time.monotonic() < deadline, (c.name, state)
            time.sleep(0.5)


def test_a_volume_is_created_and_deleted_through_the_deployment(cluster: LocalCluster) -> None:
    create_and_delete(cluster)


def test_the_sentinels_promote_a_replica_when_the_master_dies(cluster: LocalCluster) -> None:
    """kill -9 of the master's redis-server (its container is not restarted here): the
    Sentinels agree it is down, promote a replica, and the services — asking them for the
    master on every (re)connect — carry a volume's life on within a CO's retries; the volume
    created before the kill is still listed (the read model went over with the replica)."""
    sentinels = _redis(cluster, "sentinel")
    master_pod = _master_of(cluster, sentinels[0])
    master = next(c for c in _redis(cluster, "redis") if c.pod.name == master_pod)
    assert master.proc is not None and Path(f"/proc/{master.proc.pid}/exe").resolve().name.startswith("redis-"), "the container's process is its redis-server"
    channel, controller = _controller(cluster)
    with channel:
        before = controller.CreateVolume(_request("pvc-before-failover"), timeout=30).volume.volume_id
        survivors = [c for c in sentinels if c.pod.name != master_pod]

        promoted: dict[str, Any] = {}

        def watch() -> None:
            # The Sentinels' view, from a surviving pod, every 0.2 s.
            while time.monotonic() < killed + 60 and not promoted:
                now = _master_of(cluster, survivors[0])
                if now not in ("", master_pod):
                    promoted.update(pod=now, after=time.monotonic() - killed)
                time.sleep(0.2)

        killed = time.monotonic()
        os.kill(master.proc.pid, signal.SIGKILL)
        master.proc.wait(10)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        seen: list[str] = []
        deadline = killed + RETRY_FOR
        # Commands append to the log (NATS): they need not wait for Redis.
        created = _retrying(controller.CreateVolume, _request("pvc-after-kill"), deadline, seen)
        first_ok = time.monotonic() - killed
        _retrying(controller.DeleteVolume, csi.DeleteVolumeRequest(volume_id=created.volume.volume_id), deadline, seen)
        pair_ok = time.monotonic() - killed
        # Reads do: ListVolumes is answered from the read model, on whichever master the
        # Sentinels name; the volume written before the kill must be there.
        listed = {e.volume.volume_id for e in _retrying(controller.ListVolumes, csi.ListVolumesRequest(), deadline, seen).entries}
        list_ok = time.monotonic() - killed
        watcher.join(60)
        print(
            f"\nfailover: master {master_pod} killed (SIGKILL); {promoted.get('pod', 'nothing')} promoted after "
            f"{promoted.get('after', float('nan')):.1f} s (down-after-milliseconds 5000); first CreateVolume OK after "
            f"{first_ok:.1f} s, Create+Delete after {pair_ok:.1f} s, first ListVolumes OK after {list_ok:.1f} s; "
            f"failed calls retried: {len(seen)} {sorted(set(seen))}"
        )
        assert promoted, "no Sentinel promoted a replica within 60 s"
        assert promoted["pod"] in {c.pod.name for c in survivors}
        assert before in listed, "the volume created before the failover is lost from the read model"
        # Every surviving Sentinel agrees; the old master is listed as a (down) replica.
        # (the others learn the new configuration from the first's hello messages, every 2 s)
        for c in survivors:
            agreed = time.monotonic() + 30
            while (named := _master_of(cluster, c)) != promoted["pod"]:
                assert time.monotonic() < agreed, (c.name, named)
                time.sleep(0.5)
        # Just promoted, a Sentinel may still be connecting to the new master ("master,disconnected").
        settled = time.monotonic() + 30
        while not ((state := _master_state(cluster, survivors[0]))["flags"] == "master" and state["num-other-sentinels"] == "2"):
            assert time.monotonic() < settled, state
            time.sleep(0.5)
        print(f"new master as the Sentinels see it: flags={state['flags']} replicas={state['num-slaves']} other-sentinels={state['num-other-sentinels']}")
        # The projections write to the new master: a volume made now is listed, then deleted.
        after = _retrying(controller.CreateVolume, _request("pvc-after-promotion"), time.monotonic() + RETRY_FOR, seen).volume.volume_id
        deadline = time.monotonic() + RETRY_FOR
        while not {before, after} <= (ids := {e.volume.volume_id for e in controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries}):
            assert time.monotonic() < deadline, f"not listed on the new master: {({before, after} - ids)}"
            time.sleep(0.5)
        for volume_id in (after, before):
            controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id), timeout=30)
