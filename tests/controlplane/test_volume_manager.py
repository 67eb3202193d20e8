"""The volume manager (the kubelet's storage part, in each nodeagent) against a real two-node stack:
real CSI calls to apigw, real loop devices, mounts and bind mounts, checked in /proc/self/mountinfo.

Until the PV controller and the AD controller run, each test makes what they would: the
CSI volume (CreateVolume), the PV and claim bound to each other, and the attach
(ControllerPublishVolume plus a VolumeAttachment whose status says attached), all written
straight into the log with an admin ObjectStore.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from devstack.launcher import Stack
from services.nodeagent.controllers.volume_plugins import nfs_unsupported
from tests.conftest import Csi, mount_cap, mounts_at, mounts_under, needs_root
from tests.controlplane.conftest import Api, kubelet_dir, unique
from volplane.csi import csi_pb2 as csi
from volplane.errors import AlreadyExists, NotFound
from volplane.eventstore import EventStore
from volplane.nodes import TOPOLOGY_KEY
from volplane.resources import names
from volplane.resources.kinds import ref, resolve
from volplane.resources.store import ObjectStore

pytestmark = needs_root
Obj = dict[str, Any]
MiB = 2**20
DRIVER = names.OWN_DRIVER
SERVICE = {"node-1": "nodeagent", "node-2": "nodeagent-node-2"}


# -- writing what the PV and AD controllers would write -----------------------------------


def _admin(cp: Stack, action: Callable[[ObjectStore], Any]) -> Any:
    async def run() -> Any:
        nc = await nats.connect(cp.nats_url_of("admin"), tls=cp.client_tls())
        try:
            return await action(ObjectStore(EventStore(nc.jetstream(timeout=10)), "test"))
        finally:
            await nc.close()

    return asyncio.run(run())


def patch(cp: Stack, kind: str, name: str, body: Obj, namespace: str = "") -> Obj:
    return _admin(cp, lambda s: s.patch(ref(resolve(kind), namespace, name), body, reason="test"))


def create(cp: Stack, obj: Obj) -> Obj:
    return _admin(cp, lambda s: s.create(obj))


def delete(cp: Stack, kind: str, name: str, namespace: str = "") -> None:
    _admin(cp, lambda s: s.delete(ref(resolve(kind), namespace, name)))


class World:
    """What one test made, undone (pods first, then claims, volumes and attachments) at its end."""

    def __init__(self, cp: Stack, api: Api) -> None:
        self.cp, self.api = cp, api
        self.csi = Csi(cp.csi_endpoint)
        self.pods: list[str] = []
        self.uids: list[str] = []
        self.claims: list[str] = []
        self.pvs: list[str] = []
        self.attachments: list[tuple[str, str, str]] = []  # (va name, handle, node)
        self.handles: list[str] = []
        self.caps: dict[str, csi.VolumeCapability] = {}

    def csi_volume(self, node: str, *, block: bool = False) -> str:
        cap = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=1)) if block else mount_cap()
        vol = self.csi.controller.CreateVolume(csi.CreateVolumeRequest(
            name=unique("vm"), capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[cap],
            accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments={TOPOLOGY_KEY: node})]),
        )).volume
        self.handles.append(vol.volume_id)
        self.caps[vol.volume_id] = cap
        return str(vol.volume_id)

    def bound_claim(self, source: Obj, *, block: bool = False, modes: tuple[str, ...] = ("ReadWriteOnce",)) -> tuple[str, str]:
        """A PV with ``source`` and a claim, bound to each other as the PV controller binds: (pv, claim)."""
        pv, claim = unique("pv-vm"), unique("claim")
        mode = "Block" if block else "Filesystem"
        self.api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv}, "spec": {
            "capacity": {"storage": "64Mi"}, "accessModes": list(modes), "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "", "volumeMode": mode, **source}})
        self.pvs.append(pv)
        made = self.api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": "default"}, "spec": {
            "accessModes": list(modes), "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": "", "volumeMode": mode, "volumeName": pv}})[0]
        self.claims.append(claim)
        claim_ref = {"kind": "PersistentVolumeClaim", "namespace": "default", "name": claim, "uid": made["metadata"]["uid"]}
        patch(self.cp, "pv", pv, {"spec": {"claimRef": claim_ref}, "status": {"phase": "Bound"}})
        patch(self.cp, "pvc", claim, {"status": {"phase": "Bound", "accessModes": list(modes), "capacity": {"storage": "64Mi"}}}, "default")
        return pv, claim

    def attach(self, pv: str, handle: str, node: str) -> str:
        """ControllerPublishVolume to ``node``, then the attached VolumeAttachment the external-attacher
        would write — unless the AD controller, once it runs, got there first. Call it after the pod
        exists: an AD controller detaches what no pod wants."""
        va = names.va_name(pv, DRIVER, node)
        self.attachments.append((va, handle, node))
        for _ in range(100):
            obj = self.api.get("va", va)
            if ((obj or {}).get("status") or {}).get("attached") is True:
                return va
            try:
                reply = self.csi.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=handle, node_id=node, volume_capability=self.caps[handle]))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:  # ABORTED: an AD controller is publishing it right now
                    raise
                time.sleep(0.2)
                continue
            status = {"attached": True, "attachmentMetadata": dict(reply.publish_context)}
            try:
                if obj is None:
                    create(self.cp, {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": va},
                                     "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": pv}}, "status": status})
                else:
                    patch(self.cp, "va", va, {"status": status})
                return va
            except (AlreadyExists, NotFound):
                time.sleep(0.2)
        raise AssertionError(f"could not attach {pv} to {node}")

    def pod(self, node: str, volumes: list[Obj]) -> Obj:
        name = unique("pod")
        self.pods.append(name)
        pod = self.api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                              "spec": {"nodeName": node, "volumes": volumes, "containers": [{"name": "app", "image": "busybox"}]}})[0]
        self.uids.append(pod["metadata"]["uid"])
        return pod

    def close_pods(self) -> None:
        for pod in self.pods:
            self.api.delete("pod", pod, "default")
        for pod in self.pods:
            self.api.wait("pod", pod, lambda o: o is None, "default")
        for node in ("node-1", "node-2"):
            pods = kubelet_dir(self.cp, node) / "pods"
            wait_for(lambda: not any((pods / uid).exists() for uid in self.uids), f"pod directories on {node} removed")

    def close(self) -> None:
        self.close_pods()
        for claim in self.claims:
            self.api.delete("pvc", claim, "default")
        for pv in self.pvs:
            self.api.delete("pv", pv)
        for va, handle, node in self.attachments:
            # The VolumeAttachment stays in use until the node's volume manager has unstaged.
            wait_for(lambda: not any(handle in n for n in in_use(self.api, node)), f"{handle} no longer in use on {node}")
            if va:
                delete(self.cp, "va", va)
            self.csi.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=handle, node_id=node))
        for handle in self.handles:
            # An attachment the AD controller made goes when its detach has run, after the
            # pod's teardown; until then DeleteVolume says FAILED_PRECONDITION, and a CO
            # (external-provisioner) retries, as this does.
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.csi.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=handle))
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        self.csi.close()


@pytest.fixture
def world(cp: Stack, api: Api) -> Iterator[World]:
    w = World(cp, api)
    yield w
    w.close()


# -- reading what the volume manager did ----------------------------------------------------


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(0.2)


def volume_status(pod: Obj | None, name: str) -> Obj:
    for v in ((pod or {}).get("status") or {}).get("volumes") or []:
        if v["name"] == name:
            return v
    return {}


def volumes_ready(pod: Obj | None) -> str | None:
    for c in ((pod or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == "VolumesReady":
            return c["status"]
    return None


def wait_ready(api: Api, pod: Obj, timeout: float = 90.0) -> Obj:
    name = pod["metadata"]["name"]
    return api.wait("pod", name, lambda o: volumes_ready(o) == "True", "default", timeout=timeout)


def in_use(api: Api, node: str) -> list[str]:
    return ((api.get("node", node) or {}).get("status") or {}).get("volumesInUse") or []


def global_mount(cp: Stack, node: str, handle: str) -> Path:
    return kubelet_dir(cp, node) / "plugins/kubernetes.io/csi" / DRIVER / hashlib.sha256(handle.encode()).hexdigest() / "globalmount"


def pod_volume(cp: Stack, node: str, pod: Obj, plugin: str, name: str, kind: str = "volumes") -> Path:
    return kubelet_dir(cp, node) / "pods" / pod["metadata"]["uid"] / kind / plugin / name


def csi_claim(name: str, claim: str, readonly: bool = False) -> Obj:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": readonly}}


def events(api: Api, pod: Obj, reason: str) -> list[Obj]:
    return [e for e in api.events("pod", pod["metadata"]["name"], "default") if e["reason"] == reason]


# -- the tests ------------------------------------------------------------------------------


def test_node_object_is_registered_with_labels_annotation_and_ready(api: Api) -> None:
    for node in ("node-1", "node-2"):
        obj = wait_for(lambda n=node: api.get("node", n), f"Node {node}")
        labels = obj["metadata"]["labels"]
        assert labels[names.LABEL_HOSTNAME] == node and labels[TOPOLOGY_KEY] == node
        assert json.loads(obj["metadata"]["annotations"][names.ANN_CSI_NODE_IDS]) == {DRIVER: node}
        assert {"type": "Ready", "status": "True"}.items() <= obj["status"]["conditions"][0].items()
        assert obj["status"]["nodeInfo"]["kubeletVersion"] == "volplane"
        assert isinstance(obj["status"]["volumesInUse"], list)


def test_one_device_staged_once_and_bound_into_two_pods_then_unstaged_after_the_last(cp: Stack, api: Api, world: World) -> None:
    handle = world.csi_volume("node-1")
    pv, claim = world.bound_claim({"csi": {"driver": DRIVER, "volumeHandle": handle}})
    unique_name = f"kubernetes.io/csi/{DRIVER}^{handle}"
    a = world.pod("node-1", [csi_claim("data", claim)])
    world.attach(pv, handle, "node-1")
    a = wait_ready(api, a)
    b = wait_ready(api, world.pod("node-1", [csi_claim("data", claim)]))
    gm = global_mount(cp, "node-1", handle)
    pa, pb = (pod_volume(cp, "node-1", p, "kubernetes.io~csi", pv) for p in (a, b))
    assert mounts_at(gm) == 1 and mounts_at(pa) == 1 and mounts_at(pb) == 1
    assert volume_status(a, "data") == {"name": "data", "ready": True, "path": str(pa), "message": ""}
    assert json.loads((gm.parent / "vol_data.json").read_text())["volumeHandle"] == handle
    assert json.loads(pa.with_name(pv + ".vol_data.json").read_text())["podName"] == a["metadata"]["name"]
    (pa / "hello.txt").write_text("from pod a")
    assert (pb / "hello.txt").read_text() == "from pod a"
    assert unique_name in in_use(api, "node-1")
    assert [e["message"] for e in events(api, a, "SuccessfulMountVolume")]

    api.delete("pod", a["metadata"]["name"], "default")
    wait_for(lambda: not (kubelet_dir(cp, "node-1") / "pods" / a["metadata"]["uid"]).exists(), "pod a's directory removed")
    assert mounts_at(pa) == 0 and mounts_at(pb) == 1 and mounts_at(gm) == 1
    assert (pb / "hello.txt").read_text() == "from pod a"
    assert unique_name in in_use(api, "node-1")

    api.delete("pod", b["metadata"]["name"], "default")
    wait_for(lambda: not gm.parent.exists(), "the global mount unmounted and removed")
    assert mounts_at(gm) == 0 and mounts_at(pb) == 0
    wait_for(lambda: unique_name not in in_use(api, "node-1"), "the volume no longer in use on node-1")


def test_nothing_is_staged_until_the_volume_is_attached(cp: Stack, api: Api, world: World) -> None:
    handle = world.csi_volume("node-2")
    pv, claim = world.bound_claim({"csi": {"driver": DRIVER, "volumeHandle": handle}})
    pod = world.pod("node-2", [csi_claim("data", claim)])
    gm = global_mount(cp, "node-2", handle)
    va = names.va_name(pv, DRIVER, "node-2")

    def attached() -> bool:
        return (((api.get("va", va) or {}).get("status") or {}).get("attached")) is True

    # Whoever attaches it (an AD controller, or this test after a while), nothing is staged before.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and not attached():
        assert mounts_at(gm) == 0, "staged before the VolumeAttachment said attached"
        time.sleep(0.1)
    if not attached():
        waiting = api.wait("pod", pod["metadata"]["name"], lambda o: volumes_ready(o) == "False", "default")
        assert "to be attached" in volume_status(waiting, "data")["message"]
        assert not gm.parent.exists()
        world.attach(pv, handle, "node-2")
    wait_ready(api, pod)
    assert mounts_at(gm) == 1
    assert mounts_at(pod_volume(cp, "node-2", pod, "kubernetes.io~csi", pv)) == 1
    assert f"kubernetes.io/csi/{DRIVER}^{handle}" in in_use(api, "node-2")


def test_another_driver_is_reached_at_its_csidriver_node_endpoint_without_waiting_for_attach(cp: Stack, api: Api, world: World) -> None:
    driver = unique("other") + ".example.com"
    api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "spec": {"attachRequired": False},
               "metadata": {"name": driver, "annotations": {names.ANN_NODE_ENDPOINT: f"unix://{cp.run_dir}/{{node}}/csi.sock"}}})
    try:
        handle = world.csi_volume("node-2")
        # Our own driver serves this endpoint and stages only what ControllerPublish gave the node.
        world.csi.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=handle, node_id="node-2", volume_capability=mount_cap()))
        world.attachments.append(("", handle, "node-2"))
        pv, claim = world.bound_claim({"csi": {"driver": driver, "volumeHandle": handle}})
        pod = wait_ready(api, world.pod("node-2", [csi_claim("data", claim)]))
        gm = kubelet_dir(cp, "node-2") / "plugins/kubernetes.io/csi" / driver / hashlib.sha256(handle.encode()).hexdigest() / "globalmount"
        assert mounts_at(gm) == 1 and mounts_at(pod_volume(cp, "node-2", pod, "kubernetes.io~csi", pv)) == 1
        assert f"kubernetes.io/csi/{driver}^{handle}" in in_use(api, "node-2")
        assert api.get("va", names.va_name(pv, driver, "node-2")) is None
        world.close_pods()
        wait_for(lambda: not gm.parent.exists(), "the other driver's volume unstaged")
    finally:
        delete(cp, "csidriver", driver)


def test_block_volume_is_a_device_bound_onto_a_file_in_volume_devices(cp: Stack, api: Api, world: World) -> None:
    handle = world.csi_volume("node-1", block=True)
    pv, claim = world.bound_claim({"csi": {"driver": DRIVER, "volumeHandle": handle}}, block=True)
    pod = world.pod("node-1", [csi_claim("raw", claim)])
    world.attach(pv, handle, "node-1")
    pod = wait_ready(api, pod)
    target = pod_volume(cp, "node-1", pod, "kubernetes.io~csi", pv, kind="volumeDevices")
    assert stat.S_ISBLK(os.stat(target).st_mode) and mounts_at(target) == 1
    assert volume_status(pod, "raw")["path"] == str(target)
    api.delete("pod", pod["metadata"]["name"], "default")
    wait_for(lambda: not target.exists() and not global_mount(cp, "node-1", handle).parent.exists(), "block volume torn down")


def test_host_path_pv_and_inline_host_path_are_bind_mounts_and_the_data_stays(cp: Stack, api: Api, world: World, tmp_path: Path) -> None:
    created = tmp_path / "made-by-the-volume-manager"
    existing = tmp_path / "existing"
    existing.mkdir()
    pv, claim = world.bound_claim({"hostPath": {"path": str(created), "type": "DirectoryOrCreate"}})
    pod = wait_ready(api, world.pod("node-1", [csi_claim("pvdata", claim), {"name": "inline", "hostPath": {"path": str(existing), "type": "Directory"}}]))
    through_pv = pod_volume(cp, "node-1", pod, "kubernetes.io~host-path", pv)
    inline = pod_volume(cp, "node-1", pod, "kubernetes.io~host-path", "inline")
    assert created.is_dir() and mounts_at(through_pv) == 1 and mounts_at(inline) == 1
    (through_pv / "a").write_text("pv")
    (inline / "b").write_text("inline")
    assert (created / "a").read_text() == "pv" and (existing / "b").read_text() == "inline"
    assert not any(e for e in events(api, pod, "FailedMount"))
    api.delete("pod", pod["metadata"]["name"], "default")
    wait_for(lambda: not (kubelet_dir(cp, "node-1") / "pods" / pod["metadata"]["uid"]).exists(), "pod directory removed")
    assert (created / "a").read_text() == "pv" and (existing / "b").read_text() == "inline"


def test_unsupported_host_path_type_fails_with_a_clear_event(cp: Stack, api: Api, world: World, tmp_path: Path) -> None:
    pod = world.pod("node-1", [{"name": "sock", "hostPath": {"path": str(tmp_path / "s.sock"), "type": "Socket"}}])
    event = wait_for(lambda: events(api, pod, "FailedMount"), "a FailedMount event")[0]
    assert event["event_type"] == "Warning"
    assert event["message"].startswith('MountVolume.SetUp failed for volume "sock": hostPath type "Socket" is not supported')
    status = api.wait("pod", pod["metadata"]["name"], lambda o: volumes_ready(o) == "False", "default")
    assert volume_status(status, "sock")["ready"] is False


def test_nfs_volume_fails_with_the_reason_when_the_kernel_cannot_mount_it(cp: Stack, api: Api, world: World) -> None:
    pv, claim = world.bound_claim({"nfs": {"server": "127.0.0.1", "path": "/exports/none"}}, modes=("ReadWriteMany",))
    pod = world.pod("node-1", [csi_claim("shared", claim)])
    event = wait_for(lambda: events(api, pod, "FailedMount"), "a FailedMount event", timeout=60)[0]
    assert event["message"].startswith(f'MountVolume.SetUp failed for volume "{pv}": ')
    reason = nfs_unsupported()
    if reason is not None:
        assert event["message"].endswith(reason)
    status = api.wait("pod", pod["metadata"]["name"], lambda o: volumes_ready(o) == "False", "default")
    assert volume_status(status, "shared")["ready"] is False
    assert volume_status(status, "shared")["message"] == event["message"]
    assert mounts_at(pod_volume(cp, "node-1", pod, "kubernetes.io~nfs", pv)) == 0


def test_terminated_pod_loses_its_volumes_unless_the_node_keeps_them(cp: Stack, api: Api, world: World, tmp_path: Path) -> None:
    pod = wait_ready(api, world.pod("node-2", [{"name": "d", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]))
    target = pod_volume(cp, "node-2", pod, "kubernetes.io~host-path", "d")
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2", "labels": {names.LABEL_KEEP_TERMINATED: "true"}}})
    try:
        api.apply({**{k: pod[k] for k in ("apiVersion", "kind", "spec")}, "metadata": {"name": pod["metadata"]["name"], "namespace": "default"}, "status": {"phase": "Succeeded"}})
        time.sleep(3)
        assert mounts_at(target) == 1
    finally:
        patch(cp, "node", "node-2", {"metadata": {"labels": {names.LABEL_KEEP_TERMINATED: None}}})
    wait_for(lambda: mounts_at(target) == 0 and not target.exists(), "the terminated pod's volume unmounted")
    after = api.wait("pod", pod["metadata"]["name"], lambda o: volumes_ready(o) == "False", "default")
    assert volume_status(after, "d")["ready"] is False


def test_killed_nodeagent_converges_after_restart(cp: Stack, api: Api, world: World) -> None:
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"example.com/rack": "r1"}}})
    handle = world.csi_volume("node-1")
    pv, claim = world.bound_claim({"csi": {"driver": DRIVER, "volumeHandle": handle}})
    keep = world.pod("node-1", [csi_claim("data", claim)])
    world.attach(pv, handle, "node-1")
    keep = wait_ready(api, keep)
    gone = wait_ready(api, world.pod("node-1", [csi_claim("data", claim)]))
    gm = global_mount(cp, "node-1", handle)
    # Killed right after a pod is deleted (in the middle of its teardown, or before it).
    api.delete("pod", gone["metadata"]["name"], "default")
    cp.restart_service("nodeagent", kill=True)
    wait_for(lambda: not (kubelet_dir(cp, "node-1") / "pods" / gone["metadata"]["uid"]).exists(), "the deleted pod torn down after restart")
    assert mounts_at(gm) == 1 and mounts_at(pod_volume(cp, "node-1", keep, "kubernetes.io~csi", pv)) == 1
    # Killed, and the last pod deleted while the agent is down: its restart finds only the disk.
    cp.stop_service("nodeagent", kill=True)
    api.delete("pod", keep["metadata"]["name"], "default")
    api.wait("pod", keep["metadata"]["name"], lambda o: o is None, "default")
    cp.start_service("nodeagent")
    cp.wait_healthy(["nodeagent"])
    wait_for(lambda: not gm.parent.exists() and not (kubelet_dir(cp, "node-1") / "pods" / keep["metadata"]["uid"]).exists(), "everything torn down")
    wait_for(lambda: f"kubernetes.io/csi/{DRIVER}^{handle}" not in in_use(api, "node-1"), "volume no longer in use")
    labels = api.get("node", "node-1")["metadata"]["labels"]
    assert labels["example.com/rack"] == "r1" and labels[names.LABEL_HOSTNAME] == "node-1"


def test_a_pod_created_while_the_agent_is_down_is_mounted_when_it_is_back(cp: Stack, api: Api, world: World, tmp_path: Path) -> None:
    cp.stop_service(SERVICE["node-2"], kill=True)
    try:
        pod = world.pod("node-2", [{"name": "d", "hostPath": {"path": str(tmp_path), "type": "Directory"}}])
    finally:
        cp.start_service(SERVICE["node-2"])
        cp.wait_healthy([SERVICE["node-2"]])
    wait_ready(api, pod)
    assert mounts_at(pod_volume(cp, "node-2", pod, "kubernetes.io~host-path", "d")) == 1


def test_a_pod_re_created_under_the_same_name_gets_a_fresh_directory_and_the_old_one_goes(cp: Stack, api: Api, world: World, tmp_path: Path) -> None:
    volumes = [{"name": "d", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]
    first = wait_ready(api, world.pod("node-1", volumes))
    name = first["metadata"]["name"]
    api.delete("pod", name, "default")
    again = api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                       "spec": {"nodeName": "node-1", "volumes": volumes, "containers": [{"name": "app", "image": "busybox"}]}})[0]
    world.uids.append(again["metadata"]["uid"])
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    wait_for(lambda: not (kubelet_dir(cp, "node-1") / "pods" / first["metadata"]["uid"]).exists(), "the old incarnation torn down")
    ready = api.wait("pod", name, lambda o: volumes_ready(o) == "True" and volume_status(o, "d").get("path", "").find(again["metadata"]["uid"]) > 0, "default")
    assert mounts_at(Path(volume_status(ready, "d")["path"])) == 1


def test_killed_while_mounting_finishes_the_mount_after_restart(cp: Stack, api: Api, world: World) -> None:
    handle = world.csi_volume("node-2")
    pv, claim = world.bound_claim({"csi": {"driver": DRIVER, "volumeHandle": handle}})
    pod = world.pod("node-2", [csi_claim("data", claim)])
    world.attach(pv, handle, "node-2")
    time.sleep(0.3)  # somewhere in MountDevice / SetUp
    cp.restart_service(SERVICE["node-2"], kill=True)
    pod = wait_ready(api, pod)
    gm = global_mount(cp, "node-2", handle)
    assert mounts_at(gm) == 1 and mounts_at(pod_volume(cp, "node-2", pod, "kubernetes.io~csi", pv)) == 1


def test_whole_pipeline_dynamic_claim_to_mounted_pod_and_back(cp: Stack, api: Api, tmp_path: Path) -> None:
    """With every loop running: provision (PV controller + external provisioner), attach (AD
    controller + external attacher), mount (this volume manager), and all the way back."""
    sc, claim = unique("vm-sc"), unique("vm-dyn")
    api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": sc}, "provisioner": DRIVER, "reclaimPolicy": "Delete"})
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": "default"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": sc}})
    name = unique("pod")
    pod = api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                     "spec": {"nodeName": "node-2", "volumes": [csi_claim("data", claim)], "containers": [{"name": "app", "image": "busybox"}]}})[0]
    try:
        ready = wait_ready(api, pod, timeout=120)
        pv = api.get("pvc", claim, "default")["spec"]["volumeName"]
        handle = api.get("pv", pv)["spec"]["csi"]["volumeHandle"]
        assert mounts_at(global_mount(cp, "node-2", handle)) == 1 and mounts_at(Path(volume_status(ready, "data")["path"])) == 1
    finally:
        api.delete("pod", name, "default")
        wait_for(lambda: not (kubelet_dir(cp, "node-2") / "pods" / pod["metadata"]["uid"]).exists(), "pod directory removed", timeout=120)
        api.delete("pvc", claim, "default")
        api.delete("sc", sc)
    wait_for(lambda: api.get("pv", pv) is None, "the provisioned PV deleted (reclaim policy Delete)", timeout=120)
    assert in_use(api, "node-2") == []


def test_nothing_is_left_under_the_kubelet_dirs(cp: Stack, api: Api) -> None:
    for node in ("node-1", "node-2"):
        assert mounts_under(kubelet_dir(cp, node)) == []
        pods = kubelet_dir(cp, node) / "pods"
        assert not pods.exists() or list(pods.iterdir()) == []
        assert in_use(api, node) == []
