"""Object writes are authorized as Kubernetes authorizes them: a node (NodeRestriction)
changes only its own Node and the status of pods bound to it, through apigw; each
controller appends only the kinds of its role (its NATS user's subjects); the resource API
lets a user other than root read but not write (PERMISSION_DENIED).

Each identity is the one its running process holds: the NATS URL in its environment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest

from devstack.launcher import Stack
from tests.conftest import needs_root
from tests.controlplane.conftest import Api, unique
from volplane import subjects
from volplane.bus import Bus
from volplane.clients import inbox_prefix
from volplane.errors import PermissionDenied
from volplane.eventstore import EventStore
from volplane.resources.authz import NodeWrites, kubelet
from volplane.resources.kinds import Ref, ref, resolve
from volplane.resources.store import ObjectStore

pytestmark = needs_root
T = TypeVar("T")
Obj = dict[str, Any]
NOBODY = 65534


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The resource API's socket where other users can reach it (pytest's own directories
    # are root's only): whom it lets in is then decided by each caller's uid.
    sockets = Path(tempfile.mkdtemp(prefix="volplane-authz-"))
    sockets.chmod(0o755)
    env = {"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "16Gi", "VOLPLANE_API_ENDPOINT": f"unix://{sockets / 'api.sock'}"}
    s = Stack(tmp_path_factory.mktemp("authz"), env=env, nodes=2)
    s.start()
    yield s
    s.stop()
    shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def api(cp: Stack) -> Iterator[Api]:
    a = Api(cp.api_endpoint)
    yield a
    a.close()


def nats_url_of(cp: Stack, process: str) -> str:
    """The NATS URL (with its user) the running ``process`` connected with."""
    environ = Path(f"/proc/{cp.procs[process].pid}/environ").read_bytes().split(b"\0")
    return next(v.partition(b"=")[2].decode() for v in environ if v.startswith(b"NATS_URL="))


def as_identity(url: str, body: Callable[[nats.NATS, list[str]], Awaitable[T]], tls: ssl.SSLContext | None = None) -> T:
    """Run ``body(connection, permission errors)`` connected as ``url``'s user."""

    async def go() -> T:
        violations: list[str] = []

        async def on_error(exc: Exception) -> None:
            violations.append(str(exc))

        # Its own inbox prefix, as its service has: replies come only to an identity's own inboxes.
        nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, inbox_prefix=inbox_prefix(url), tls=tls)
        try:
            return await body(nc, violations)
        finally:
            await nc.close()

    return asyncio.run(go())


def as_node(cp: Stack, node: str, process: str, body: Callable[[ObjectStore], Awaitable[T]], manager: str | None = None) -> T:
    """``body`` with the object store the node's volume manager has: reads from the log,
    writes through apigw's NodeRestriction check."""

    async def run(nc: nats.NATS, _: list[str]) -> T:
        store = EventStore(nc.jetstream())
        return await body(ObjectStore(store, manager or kubelet(node), append=NodeWrites(Bus(nc), node).append))

    return as_identity(nats_url_of(cp, process), run, cp.client_tls())


def denied(cp: Stack, node: str, process: str, write: Callable[[ObjectStore], Awaitable[Any]], manager: str | None = None) -> str:
    async def body(objects: ObjectStore) -> str:
        try:
            await write(objects)
        except PermissionDenied as exc:
            return exc.message
        raise AssertionError("the write was allowed")

    return as_node(cp, node, process, body, manager)


def refused_append(cp: Stack, process: str, subject: str) -> bool:
    """Whether NATS refuses ``process``'s user an append to ``subject`` as a permissions
    violation (the publish is never acknowledged)."""

    async def attempt(nc: nats.NATS, violations: list[str]) -> list[str]:
        try:
            await nc.jetstream(timeout=2).publish(subject, b"\x80")
        except Exception:  # noqa: BLE001 - not acknowledged, whatever nats-py calls it
            await asyncio.sleep(0.2)  # the server's -ERR arrives on its own
            return violations
        raise AssertionError(f"{process} appended to {subject}")

    violations = as_identity(nats_url_of(cp, process), attempt, cp.client_tls())
    return any("permissions violation" in v.lower() and subject in v for v in violations)


def pod(name: str, node: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def pod_ref(name: str) -> Ref:
    return ref(resolve("pod"), "default", name)


def node_ref(name: str) -> Ref:
    return ref(resolve("node"), None, name)


# -- a node: NodeRestriction ------------------------------------------------------------


def test_a_node_changes_its_own_node_and_the_status_of_its_pods(cp: Stack, api: Api) -> None:
    mine = unique("mine")
    api.apply(pod(mine, "node-2"))

    async def writes(objects: ObjectStore) -> tuple[Obj, Obj]:
        node = await objects.patch(node_ref("node-2"), {"metadata": {"annotations": {"authz.test/seen": "yes"}}}, reason="test")
        status = await objects.patch(pod_ref(mine), {"status": {"message": "checked by the node"}}, reason="test")
        await objects.record(pod_ref(mine), "Normal", "Checked", "a line from the node")
        return node, status

    node, status = as_node(cp, "node-2", "nodeagent-node-2", writes)
    assert node["metadata"]["annotations"]["authz.test/seen"] == "yes"
    assert status["status"]["message"] == "checked by the node"
    assert any(e["reason"] == "Checked" and e["source"] == "kubelet/node-2" for e in api.events("pod", mine))


def test_a_node_may_not_change_another_nodes_node(cp: Stack) -> None:
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(node_ref("node-1"), {"metadata": {"labels": {"evil": "yes"}}}))
    assert 'node "node-2" may not change Node/node-1' in message


def test_a_node_may_not_change_a_pod_bound_elsewhere(cp: Stack, api: Api) -> None:
    theirs = unique("theirs")
    api.apply(pod(theirs, "node-1"))
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(pod_ref(theirs), {"status": {"phase": "Failed"}}))
    assert "bound to another node" in message
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.record(pod_ref(theirs), "Warning", "Lies", "about another node's pod"))
    assert f"record events about Pod/default/{theirs}" in message
    assert ((api.get("pod", theirs) or {}).get("status") or {}).get("phase") != "Failed"


def test_a_node_may_not_change_its_pods_spec_or_move_them(cp: Stack, api: Api) -> None:
    mine = unique("mine")
    api.apply(pod(mine, "node-2"))
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(pod_ref(mine), {"spec": {"nodeName": "node-1"}}))
    assert "may not change anything but the status" in message
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(pod_ref(mine), {"metadata": {"labels": {"evil": "yes"}}}))
    assert "may not change anything but the status" in message


def test_a_node_may_not_create_or_change_a_pv_nor_delete_anything(cp: Stack, api: Api) -> None:
    name = unique("pv")
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/authz"}}}
    assert "may not create PersistentVolume/" in denied(cp, "node-2", "nodeagent-node-2", lambda o: o.create(pv))
    api.apply(pv)
    assert "may not change PersistentVolume/" in denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(ref(resolve("pv"), None, name), {"spec": {"persistentVolumeReclaimPolicy": "Delete"}}))
    assert "may not delete Node/node-2" in denied(cp, "node-2", "nodeagent-node-2", lambda o: o.delete(node_ref("node-2")))


def test_a_node_may_not_write_in_another_components_name(cp: Stack, api: Api) -> None:
    mine = unique("mine")
    api.apply(pod(mine, "node-2"))
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(pod_ref(mine), {"status": {"message": "x"}}), manager="persistentvolume-controller")
    assert 'may not write as "persistentvolume-controller"' in message


@pytest.mark.parametrize("subject", ["vp.ev.res.pod.default.authz-probe", "vp.ev.res.node._.node-1", "vp.ev.rec.pod.default.authz-probe", "vp.ev.res.pv._.authz-probe"])
def test_a_node_may_not_append_objects_itself(cp: Stack, subject: str) -> None:
    """Around apigw, straight to the log: its NATS user has no object subject."""
    assert refused_append(cp, "nodeagent-node-2", subject)


def test_a_node_may_not_send_its_writes_as_another_node(cp: Stack) -> None:
    """The writer knows the node by the request's subject; only node-1's user may publish
    on node-1's (per-node NATS users, access.credentials)."""
    url = nats_url_of(cp, "nodeagent-node-2")
    if url == nats_url_of(cp, "nodeagent"):
        pytest.skip("one NATS user serves every node: per-node users are not configured")

    async def attempt(nc: nats.NATS, violations: list[str]) -> list[str]:
        with pytest.raises(Exception):  # noqa: B017 - no answer: the request never left
            await nc.request(subjects.node_object_write("node-1"), b"", timeout=2)
        await asyncio.sleep(0.2)
        return violations

    violations = as_identity(url, attempt, cp.client_tls())
    assert any("permissions violation" in v.lower() for v in violations), violations


# -- controllers: the kinds of their role ----------------------------------------------


@pytest.mark.parametrize(("process", "subject"), [
    ("provisioner", "vp.ev.res.va._.authz-probe"),          # VolumeAttachments are the attacher's
    ("provisioner", "vp.ev.res.node._.authz-probe"),        # Nodes: the nodes' (through apigw) and the attacher's status
    ("provisioner", "vp.ev.res.sc._.authz-probe"),          # StorageClasses: the admin's
    ("attacher", "vp.ev.res.pvc.default.authz-probe"),      # claims are the provisioner's
    ("attacher", "vp.ev.res.pod.default.authz-probe"),      # a pod's binding is the scheduler's
    ("attacher", "vp.ev.res.csidriver._.authz-probe"),
    ("attacher", "vp.ev.res.persistentvolume._.x"),         # a kind that does not exist
    ("provisioner", "vp.ev.rec.node._.authz-probe"),
])
def test_a_controller_may_not_append_a_kind_outside_its_role(cp: Stack, process: str, subject: str) -> None:
    assert refused_append(cp, process, subject)


# -- the resource API: by the caller's uid ---------------------------------------------

_CLIENT = """
import json, os, sys
import grpc
from volplane.csi import resources_pb2 as pb, resources_pb2_grpc
uid = int(sys.argv[2])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
stub = resources_pb2_grpc.ResourcesStub(grpc.insecure_channel(sys.argv[1]))
out = {}
def call(name, fn):
    try:
        fn(); out[name] = "OK"
    except grpc.RpcError as exc:
        out[name] = [exc.code().name, exc.details()]
call("list", lambda: stub.List(pb.ListRequest(kind="pv", all_namespaces=True)))
call("get", lambda: stub.Get(pb.ObjectRef(kind="node", name="node-1")))
doc = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": sys.argv[3]},
       "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/x"}}}
call("apply", lambda: stub.Apply(pb.ApplyRequest(json=json.dumps(doc).encode(), field_manager="intruder")))
call("delete", lambda: stub.Delete(pb.ObjectRef(kind="node", name="node-1")))
print(json.dumps(out))
"""


def run_client_as(cp: Stack, uid: int, endpoint: str | None = None) -> dict[str, Any]:
    name = unique("pv")
    out = subprocess.run([sys.executable, "-c", _CLIENT, endpoint or cp.api_endpoint, str(uid), name],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2], env={**os.environ})
    assert out.returncode == 0, out.stderr
    return {**json.loads(out.stdout), "name": name}


def test_the_resource_api_lets_another_user_read_but_not_write(cp: Stack, api: Api) -> None:
    got = run_client_as(cp, NOBODY)
    assert got["list"] == "OK" and got["get"] == "OK"
    assert got["apply"][0] == "PERMISSION_DENIED"
    assert got["apply"][1] == "user \"nobody\" (uid 65534) may not apply objects: its role is 'view'; ask for VOLPLANE_API_ADMINS"
    assert got["delete"][0] == "PERMISSION_DENIED"
    assert api.get("pv", got["name"]) is None
    assert api.get("node", "node-1") is not None


def test_the_resource_api_lets_root_write(cp: Stack, api: Api) -> None:
    got = run_client_as(cp, 0)
    assert got["apply"] == "OK"
    assert api.get("pv", got["name"]) is not None
    api.delete("pv", got["name"])


def test_the_resource_apis_own_grpc_socket_is_for_apigws_user_only(cp: Stack) -> None:
    """Around the front that names callers: the socket behind it refuses other users."""
    public = Path(cp.api_endpoint.removeprefix("unix://"))
    private = public.with_name(f".{public.name}.authz")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    got = subprocess.run([sys.executable, "-c", _CLIENT, f"unix://{private}", str(NOBODY), "x"], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert json.loads(got.stdout)["list"][0] == "UNAVAILABLE"
