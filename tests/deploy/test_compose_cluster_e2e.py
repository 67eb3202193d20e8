"""The compose stack on its three-member NATS cluster (deploy/compose/cluster.yaml over
docker-compose.yaml), for real: podman-compose runs both files, every container becomes
healthy (the three members too), the event log's stream and the transfer store are at R3
with every member current, and one CSI volume lives its whole life through the stack's
CSI socket. Then one member — nats-2: not ``nats``, the member of the one-server file that
setup waits for and the first every NATS_URL names — is made the leader of both streams and
killed (SIGKILL), and CreateVolume and DeleteVolume still succeed, retried on UNAVAILABLE, ABORTED and DEADLINE_EXCEEDED as
external-provisioner does, within ``CO_RETRY``. The member comes back and catches up; the
stack goes down leaving no container, loop device, mount or image file behind.

    make e2e          # this file after tests/deploy/test_image_compose.py (root)

Skipped as test_image_compose.py is (VOLPLANE_E2E=1, root, /dev/loop-control), whose
helpers it uses: the image, the stand-ins, the health checks run by the test itself
(Debian's podman 4.3 runs no health-check timers), the volume's life and the teardown.
Prints what it measured: each container's time to healthy, and the time and attempts of
each call around the kill.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.deploy import standins
from tests.deploy.test_image_compose import (
    SERVICES,
    VOLPLANE_SERVICES,
    Compose,
    MiB,
    Timer,
    build_images,
    loop_devices,
    mount_cap,
    run,
    teardown,
    volume_life,
)
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

FILES = ("docker-compose.yaml", "cluster.yaml")
MEMBERS = ("nats", "nats-2", "nats-3")
CLUSTER_SERVICES = (*SERVICES, "nats-2", "nats-3")
# The member killed: not `nats`, which the one-server file's setup depends on and which
# every NATS_URL names first.
KILLED = "nats-2"
# JetStream's names of the members (-n on each one's command line).
SERVER_NAMES = {"nats": "nats-1", "nats-2": "nats-2", "nats-3": "nats-3"}
STREAMS = ("VOLPLANE", "VOLPLANE_TRANSFER")  # volplane.subjects.STREAM, TRANSFER_STREAM
# How a CO drives a call: external-provisioner's default --timeout per attempt, and the
# codes it takes for "not done yet, try again" (any other error is the answer).
CALL_TIMEOUT = 10.0
CO_RETRY = 30.0
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED)

pytestmark = [
    pytest.mark.skipif(os.environ.get("VOLPLANE_E2E") != "1", reason="builds images and runs the compose stack: `make e2e` (VOLPLANE_E2E=1)"),
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists(), reason="needs root and /dev/loop-control (loop devices, mounts, podman)"),
    pytest.mark.timeout(1800),
]

# Run in the attacher's container (it has nats-py, the CA and the client certificate), as NATS'
# admin: each stream named on its command line: replicas, leader and followers, as JSON. With
# VP_LEADER set, a stream led by another member is first asked to hand its leadership to that
# one (a leader stepdown with a preferred member, nats-server 2.11 and later).
STREAM_INFO = """
import asyncio, json, os, sys
from volplane.clients import client_tls, connect_once
async def main():
    nc = await connect_once(os.environ["VP_ADMIN_URL"], timeout=3, tls=client_tls("/tls/ca.pem", "/tls/client.pem", "/tls/client.key"))
    try:
        js, out, leader = nc.jetstream(timeout=5), {}, os.environ.get("VP_LEADER")
        for name in sys.argv[1:]:
            info = await js.stream_info(name)
            if leader and info.cluster and info.cluster.leader != leader:
                answer = json.loads((await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{name}", json.dumps({"placement": {"preferred": leader}}).encode(), timeout=5)).data)
                if not answer.get("success"):
                    raise SystemExit(f"{name}: stepdown to {leader}: {answer}")
                info = await js.stream_info(name)
            cluster = info.cluster
            out[name] = {"replicas": info.config.num_replicas, "leader": cluster.leader if cluster else None,
                         "followers": {r.name: bool(r.current and not r.offline) for r in (cluster.replicas or [])} if cluster else {}}
        print(json.dumps(out))
    finally:
        await nc.close()
asyncio.run(main())
"""


def stream_info(compose: Compose, admin_password: str, leader: str = "") -> dict[str, Any]:
    """Each stream's replicas, leader and followers (name → current), asked of any member as admin;
    ``leader``: a member's JetStream name to lead every stream first. The password reaches the
    container through podman's environment, not its command line."""
    url = ",".join(f"tls://admin:{admin_password}@{m}:4222" for m in MEMBERS)
    name = compose.containers()["attacher"]
    env = {**standins.podman_env(), "VP_ADMIN_URL": url, "VP_LEADER": leader}
    out = run(["podman", "exec", "-e", "VP_ADMIN_URL", "-e", "VP_LEADER", name, "python", "-c", STREAM_INFO, *STREAMS], env=env, timeout=60, check=False)
    if out.returncode != 0:
        raise AssertionError(f"stream info exited {out.returncode}: {out.stderr[-1500:]}")
    return dict(json.loads(out.stdout))


def all_current(info: dict[str, Any]) -> bool:
    """Every stream at R3, led by a member, with the other two current followers."""
    return all(s["replicas"] == 3 and s["leader"] in SERVER_NAMES.values() and len(s["followers"]) == 2 and all(s["followers"].values()) and s["leader"] not in s["followers"] for s in info.values())


def wait_streams(compose: Compose, admin_password: str, ready: Callable[[dict[str, Any]], bool], deadline: float = 60.0, leader: str = "") -> tuple[float, dict[str, Any]]:
    """Ask until ``ready`` holds for the streams' state: (seconds it took, that state)."""
    start, info, error = time.monotonic(), {}, ""
    while time.monotonic() - start < deadline:
        try:
            info = stream_info(compose, admin_password, leader)
            if ready(info):
                return time.monotonic() - start, info
        except AssertionError as e:  # a member (re)starting, a stream electing its leader
            error = str(e)
        time.sleep(1)
    raise AssertionError(f"streams not as wanted after {deadline:.0f} s: {info} {error}\n{compose.logs()}")


def client_connections(compose: Compose, member: str) -> int:
    """How many clients (not routes) a member serves, from its monitoring port (/connz)."""
    out = standins.podman("exec", compose.containers()[member], "wget", "-q", "-O", "-", "http://127.0.0.1:8222/connz", timeout=30)
    return int(json.loads(out.stdout)["num_connections"])


def co_call(name: str, call: Callable[[], Any], figures: list[str]) -> Any:
    """``call`` as a CO makes it: attempts of CALL_TIMEOUT each, again on RETRIED (1 s apart),
    until CO_RETRY is spent. Its figures (attempts, seconds, codes seen) go to ``figures``."""
    start, codes = time.monotonic(), []
    while True:
        try:
            result = call()
        except grpc.RpcError as e:
            code = e.code()
            codes.append(code.name)
            if code not in RETRIED or time.monotonic() - start > CO_RETRY:
                raise AssertionError(f"{name}: {code.name} {e.details()} after {len(codes)} attempts in {time.monotonic() - start:.1f} s: {codes}") from e
            time.sleep(1)
            continue
        took = time.monotonic() - start
        figures.append(f"{name:<20} {took:6.2f} s, {len(codes) + 1} attempt(s){', retried on ' + ', '.join(codes) if codes else ''}")
        assert took <= CO_RETRY + CALL_TIMEOUT, figures[-1]
        return result


def create_and_delete(channel: grpc.Channel, shared: Path, figures: list[str], label: str) -> None:
    """CreateVolume and DeleteVolume through the CSI socket, each retried as a CO would; the
    volume's image file appears in the pools and is gone after."""
    controller = rpc.ControllerStub(channel)
    request = csi.CreateVolumeRequest(name=f"e2e-{uuid.uuid4().hex}", capacity_range=csi.CapacityRange(required_bytes=16 * MiB), volume_capabilities=[mount_cap()])
    # Retries repeat the same request (the same name): CreateVolume is idempotent by name.
    vol = co_call(f"{label} Create", lambda: controller.CreateVolume(request, timeout=CALL_TIMEOUT), figures).volume
    images = [p for p in (shared / "pools").rglob("*") if p.is_file() and vol.volume_id in p.name]
    assert len(images) == 1, images
    co_call(f"{label} Delete", lambda: controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=CALL_TIMEOUT), figures)
    assert not images[0].exists()


def test_compose_cluster_survives_the_loss_of_a_nats_member() -> None:
    timer = Timer("compose cluster e2e")
    images = build_images(timer)

    workdir = Path(tempfile.mkdtemp(prefix="vp-e2ec-", dir="/tmp"))  # short: the CSI socket's path has a 107-byte limit
    # NATS' stand-in of a version that takes the members' route options (tests/deploy/standins.py).
    compose = Compose(workdir, {**images, "nats": images["nats-cluster"]}, FILES)
    loops_before = loop_devices(compose.shared)
    figures: list[str] = []
    try:
        passwords, names = compose.start(timer, CLUSTER_SERVICES, " (cluster)")
        admin = passwords["NATS_PASSWORD_ADMIN"]

        with timer.phase("streams at R3, all current"):
            took, info = wait_streams(compose, admin, all_current)
        print(f"\nstreams at R3 with every member current after {took:.1f} s: {info}")

        with timer.phase("one volume's whole life"), grpc.insecure_channel(f"unix://{compose.shared / 'csi.sock'}") as channel:
            try:
                volume_life(channel, compose.shared)
            except (grpc.RpcError, AssertionError) as e:
                raise AssertionError(f"{e}\n{compose.logs()}") from e

        # The worst member to lose of those that may go: first made the leader of every stream,
        # so that its loss costs the event log an election, not only a follower.
        with timer.phase(f"{KILLED} made the leader"):
            took, info = wait_streams(compose, admin, lambda i: all_current(i) and all(s["leader"] == SERVER_NAMES[KILLED] for s in i.values()), leader=SERVER_NAMES[KILLED])
            figures.append(f"{KILLED} leads every stream after {took:.1f} s; it serves {client_connections(compose, KILLED)} client connection(s)")

        # One member lost at once (SIGKILL): its streams' replicas elsewhere elect a leader and
        # carry on, the services' connections to it move to the others.
        with timer.phase(f"{KILLED} killed: calls"):
            standins.podman("kill", names[KILLED])
            killed_at = time.monotonic()
            with grpc.insecure_channel(f"unix://{compose.shared / 'csi.sock'}") as channel:
                try:
                    create_and_delete(channel, compose.shared, figures, f"{KILLED} down:")
                except AssertionError as e:
                    raise AssertionError(f"{e}\n{compose.logs()}") from e
            state = standins.podman("inspect", "--format", "{{.State.Running}}", names[KILLED]).stdout.strip()
            figures.append(f"{KILLED} still down after the calls ({time.monotonic() - killed_at:.1f} s): {state != 'true'}")
            assert state != "true", f"{KILLED} was restarted while the calls ran: they did not test its loss"
        with timer.phase(f"{KILLED} down: health"):
            compose.wait_healthy(VOLPLANE_SERVICES)
            figures.append("volplane health checks, member down: " + ", ".join(f"{s} {compose.healthy_after[s]:.1f} s" for s in VOLPLANE_SERVICES))
            _, info = wait_streams(compose, admin, lambda i: all(s["leader"] in SERVER_NAMES.values() and s["leader"] != SERVER_NAMES[KILLED] for s in i.values()))
            figures.append(f"streams, member down: {info}")

        with timer.phase(f"{KILLED} back, caught up"):
            standins.podman("start", names[KILLED])
            back_at = time.monotonic()
            compose.wait_healthy((KILLED,))
            figures.append(f"{KILLED} healthy {time.monotonic() - back_at:.1f} s after start")
            took, _ = wait_streams(compose, admin, all_current)
            figures.append(f"streams all current again {time.monotonic() - back_at:.1f} s after start")
        with timer.phase(f"{KILLED} back: calls"), grpc.insecure_channel(f"unix://{compose.shared / 'csi.sock'}") as channel:
            create_and_delete(channel, compose.shared, figures, f"{KILLED} back:")
    finally:
        print("\naround the kill:\n  " + "\n  ".join(figures))
        nothing_left = teardown(compose, workdir, loops_before, timer)
    nothing_left()
