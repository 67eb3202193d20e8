"""The embedded default runs with credentials: a NATS user per service and per node limited
to its subjects, a Redis ACL user per service limited to its keys (tests/integration/
test_least_privilege.py tries what each must not do), secrets kept in files only root can
read, a service with wrong credentials stops at once with a readable message, and a node
plugin needs no Redis at all."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import grpc
import nats
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from access.credentials import Credentials, inbox_prefix
from devstack.launcher import Stack
from services import catalog
from tests.conftest import Csi
from volplane.csi import csi_pb2 as csi


def test_secret_files_and_the_csi_socket_are_for_root_only(stack: Stack) -> None:
    for path in (stack.run_dir / "credentials.json", stack.run_dir / "nats" / "nats.conf", stack.run_dir / "redis" / "users.acl"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    sock = Path(stack.csi_endpoint.removeprefix("unix://"))
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_a_service_user_may_not_write_another_services_events(stack: Stack) -> None:
    creds = Credentials.load_or_create(stack.run_dir)
    assert stack.nats is not None
    port = stack.nats.port

    async def publish_as(user: str, subject: str) -> bool:
        nc = await nats.connect(creds.nats_url(user, port), inbox_prefix=inbox_prefix(user), tls=stack.client_tls())
        try:
            await nc.jetstream(timeout=2).publish(subject, b"\x80")
            return True
        except Exception:  # noqa: BLE001 - a refusal, whatever nats-py calls it
            return False
        finally:
            await nc.close()

    # The gateway only sends commands; a nodeagent owns its own node's events, not volumes
    # nor another node's registration.
    assert asyncio.run(publish_as("apigw", "vp.ev.volume.ffffffffffffffffffffffffffffffff")) is False
    assert asyncio.run(publish_as("nodeagent-node-1", "vp.ev.volume.ffffffffffffffffffffffffffffffff")) is False
    assert asyncio.run(publish_as("nodeagent-node-1", "vp.ev.nodeinfo.probe-node")) is False
    assert asyncio.run(publish_as("nodeagent-node-1", "vp.ev.node.node-1.ffffffffffffffffffffffffffffffff")) is True


def test_redis_refuses_strangers_and_keys_outside_volplanes(stack: Stack) -> None:
    assert stack.redis is not None and stack.redis.socket is not None
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(unix_socket_path=str(stack.redis.socket)).ping()
    ours = redis.Redis.from_url(stack.env["REDIS_URL"])
    assert ours.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        ours.set("not-volplanes", "x")


def test_a_service_with_wrong_credentials_stops_with_a_clear_message(stack: Stack) -> None:
    assert stack.nats is not None
    env = dict(stack.env, NATS_URL=f"nats://provisioner:wrong@127.0.0.1:{stack.nats.port}", VOLPLANE_METRICS_ADDR="")
    out = subprocess.run(catalog.get("provisioner").argv(), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot connect to NATS at nats://***@127.0.0.1" in out.stderr
    assert "wrong" not in out.stderr  # the password is never logged


def test_credentials_survive_a_restart_of_the_stack(tmp_path: Path) -> None:
    first = Credentials.load_or_create(tmp_path)
    assert Credentials.load_or_create(tmp_path) == first
    assert os.stat(tmp_path / "credentials.json").st_mode & 0o077 == 0


def test_a_node_plugin_serves_without_redis_and_stops_cleanly(stack: Stack, tmp_path: Path) -> None:
    # apigw in node mode (Identity and Node) follows no projection: a Redis nobody listens
    # on must not keep it from serving, and it must not take the resource API's socket.
    # It runs as node-1's plugin (its NATS user may ask only node-1's nodeagent).
    assert stack.nats is not None
    creds = Credentials.load_or_create(stack.run_dir)
    endpoint = f"unix://{tmp_path / 'csi.sock'}"
    env = dict(
        stack.env, NATS_URL=creds.nats_url("apigw", stack.nats.port), REDIS_URL="redis://127.0.0.1:1/0",
        VOLPLANE_APIGW_MODE="node", VOLPLANE_NODE_ID=stack.node_id, VOLPLANE_CSI_ENDPOINT=endpoint, VOLPLANE_METRICS_ADDR="",
    )
    proc = subprocess.Popen(catalog.get("apigw").argv(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    c = Csi(endpoint)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
            try:
                resp = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(service="csi.v1.Node"), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "the node plugin did not become SERVING"
            time.sleep(0.1)
        caps = c.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest(), timeout=5).capabilities
        assert csi.PluginCapability.Service.CONTROLLER_SERVICE not in [cap.service.type for cap in caps]
        assert c.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=5).node_id == stack.node_id
    finally:
        c.close()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(30)
    assert returncode == 0
    stack_api = Path(stack.api_endpoint.removeprefix("unix://"))
    assert stat.S_ISSOCK(stack_api.stat().st_mode)  # the stack's resource API socket is still there
