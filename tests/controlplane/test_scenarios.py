"""Whole scenarios on real mounts, every loop running: the seed's static example (a
hostPath volume in place of NFS), a WaitForFirstConsumer claim through CSI from pod to
mounted and all the way back, and controllers killed in the middle of one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from devstack.launcher import Stack
from tests.conftest import mounts_at, needs_root
from tests.controlplane.conftest import Api, annotations, kubelet_dir, phase, ready, unique, until
from volplane.resources.names import va_name

pytestmark = needs_root
Obj = dict[str, Any]




def pod(name: str, claim: str, node: str | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "nginx", "image": "nginx:alpine", "volumeMounts": [{"mountPath": "/data", "name": "vol"}]}],
                 "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_seed_static_example_with_host_path_mounts_the_volume_into_the_pod(cp: Stack, api: Api, tmp_path: Path) -> None:
    share = tmp_path / "nfs_storage"
    share.mkdir()
    (share / "index.html").write_text("served from the share")
    pv, claim, app = unique("nfs-pv"), unique("nfs-pvc"), unique("test-nfs")
    cls = unique("static")  # a class of its own, so no other test's claim takes this PV
    api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
               "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": cls, "hostPath": {"path": str(share)}}})
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}, "storageClassName": cls}})
    assert api.wait("pvc", claim, lambda o: phase(o) == "Bound")["spec"]["volumeName"] == pv
    created = api.apply(pod(app, claim))[0]
    mounted = api.wait("pod", app, ready, timeout=60)
    node = mounted["spec"]["nodeName"]
    target = kubelet_dir(cp, node) / "pods" / created["metadata"]["uid"] / "volumes" / "kubernetes.io~host-path" / pv
    assert mounts_at(target) == 1 and (target / "index.html").read_text() == "served from the share"
    api.delete("pod", app)
    until(lambda: not target.exists(), "the pod's bind mount gone")
    assert (share / "index.html").exists()  # TearDown never touches the data
    api.delete("pvc", claim)
    assert api.wait("pv", pv, lambda o: phase(o) == "Released")["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_wait_for_first_consumer_through_csi_from_pod_to_mounted_and_all_the_way_back(cp: Stack, api: Api) -> None:
    cls, claim, app = unique("wffc-csi"), unique("data"), unique("app")
    api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": cls}, "provisioner": "csi.volplane.io",
               "volumeBindingMode": "WaitForFirstConsumer", "parameters": {"pool": "local"}})
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": cls}})
    time.sleep(1.0)
    assert phase(api.get("pvc", claim)) == "Pending"  # no consumer yet: nothing provisioned
    assert not [p for p in api.list("pv") if (p["spec"].get("claimRef") or {}).get("name") == claim]
    created = api.apply(pod(app, claim))[0]
    mounted = api.wait("pod", app, ready, timeout=120)
    node = mounted["spec"]["nodeName"]
    bound = api.get("pvc", claim)
    assert bound is not None and annotations(bound)["volume.kubernetes.io/selected-node"] == node
    pv = api.get("pv", bound["spec"]["volumeName"])
    assert pv is not None
    # Provisioned in the chosen node's local pool, and pinned there.
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "topology.csi.volplane.io/node", "operator": "In", "values": [node]}]}]
    handle = pv["spec"]["csi"]["volumeHandle"]
    image = cp.pool_dir(node) / f"{handle}.img"
    assert image.exists()
    va = api.get("va", va_name(pv["metadata"]["name"], "csi.volplane.io", node))
    assert va is not None and va["status"]["attached"] is True
    target = kubelet_dir(cp, node) / "pods" / created["metadata"]["uid"] / "volumes" / "kubernetes.io~csi" / pv["metadata"]["name"]
    (target / "hello").write_text("written through the pod's directory")
    globals_ = list((kubelet_dir(cp, node) / "plugins" / "kubernetes.io" / "csi" / "csi.volplane.io").glob("*/globalmount"))
    global_mount = next(g for g in globals_ if mounts_at(g) == 1 and (g / "hello").exists())
    # Back: TearDown, then UnmountDevice, then detach, then DeleteVolume — in that order.
    api.delete("pod", app)
    order: list[str] = []

    def progress() -> bool:
        for what, gone in (("teardown", lambda: mounts_at(target) == 0), ("unmount device", lambda: mounts_at(global_mount) == 0),
                           ("detach", lambda: api.get("va", va["metadata"]["name"]) is None)):
            if what not in order and gone():
                order.append(what)
        return len(order) == 3

    until(progress, "teardown, unmount device and detach")
    assert order == ["teardown", "unmount device", "detach"], order
    api.delete("pvc", claim)
    api.wait("pv", pv["metadata"]["name"], lambda o: o is None, timeout=120)
    assert not image.exists()


def test_controllers_killed_mid_scenario_converge_after_restart(cp: Stack, api: Api) -> None:
    cls, claim, app = unique("restart"), unique("data"), unique("app")
    api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": cls}, "provisioner": "csi.volplane.io"})
    cp.stop_service("attacher", kill=True)
    cp.stop_service("provisioner", kill=True)
    try:
        api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": cls}})
        api.apply(pod(app, claim, node="node-1"))
        time.sleep(1.0)
        assert phase(api.get("pvc", claim)) is None  # nobody has looked at it yet
        cp.start_service("provisioner")
        cp.wait_healthy(["provisioner"])
        api.wait("pvc", claim, lambda o: phase(o) == "Bound", timeout=60)
        time.sleep(1.0)
        assert not ready(api.get("pod", app))  # bound, but nobody attaches it
    finally:
        if "attacher" not in cp.procs:
            cp.start_service("attacher")
        if "provisioner" not in cp.procs:
            cp.start_service("provisioner")
        cp.wait_healthy(["attacher", "provisioner"])
    api.wait("pod", app, ready, timeout=120)
    # And the nodeagent, killed while the pod goes, finishes the way back when it returns.
    cp.stop_service("nodeagent", kill=True)
    try:
        api.delete("pod", app)
        api.delete("pvc", claim)
        time.sleep(1.0)
    finally:
        cp.start_service("nodeagent")
        cp.wait_healthy(["nodeagent"])
    volume = api.get("pvc", claim)
    assert volume is None
    until(lambda: not [p for p in api.list("pv") if p["spec"].get("storageClassName") == cls], "the PV deleted", timeout=120)
    until(lambda: not [v for v in api.list("va") if v["spec"]["nodeName"] == "node-1" and claim in str(v)], "detached", timeout=60)
