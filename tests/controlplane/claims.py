"""Helpers of the expansion and VolumeAttributesClass tests: the objects they apply and
what they look at on the disk.

    made.apply(storage_class(cls, allowVolumeExpansion=True)); made.apply(claim(name, cls, "64Mi"))
    target = mounted(cp, api, app)                    # the pod's volume directory, once mounted
    fs_bytes(target)                                  # the size df reports for it

``Made`` (the tests' ``made`` fixture) remembers what a test applied and takes it down at
its end, pods first: nothing stays mounted, attached or allocated, whatever the test did.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from devstack.launcher import Stack
from tests.conftest import mounts_under
from tests.controlplane.conftest import Api, kubelet_dir, ready, until

Obj = dict[str, Any]
MiB = 2**20
DRIVER = "csi.volplane.io"




def storage_class(name: str, **fields: Any) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": DRIVER, **fields}


def attributes_class(name: str, **parameters: str) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass", "metadata": {"name": name},
            "driverName": DRIVER, "parameters": parameters}


def claim(name: str, cls: str, size: str, *, block: bool = False, attributes: str | None = None) -> Obj:
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": cls,
                 "volumeMode": "Block" if block else "Filesystem"}
    if attributes is not None:
        spec["volumeAttributesClassName"] = attributes
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}


def resize(name: str, size: str) -> Obj:
    """The partial document a user applies to ask for more."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": {"resources": {"requests": {"storage": size}}}}


def pod(name: str, claim_name: str, node: str = "node-1", *, block: bool = False) -> Obj:
    use = {"volumeDevices": [{"devicePath": "/dev/xvda", "name": "vol"}]} if block else {"volumeMounts": [{"mountPath": "/data", "name": "vol"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox", **use}],
                     "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim_name}}]}}


def mounted(cp: Stack, api: Api, app: str, *, block: bool = False, timeout: float = 120.0) -> Path:
    """The pod's volume directory (or device file) once the node reports it mounted."""
    obj = api.wait("pod", app, ready, timeout=timeout)
    assert obj is not None
    claim_name = obj["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    pvc = api.get("pvc", claim_name)
    assert pvc is not None
    where = "volumeDevices" if block else "volumes"
    return kubelet_dir(cp, obj["spec"]["nodeName"]) / "pods" / obj["metadata"]["uid"] / where / "kubernetes.io~csi" / pvc["spec"]["volumeName"]


def fs_bytes(path: Path) -> int:
    """The size of the filesystem mounted at ``path``, as df reports it."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def device_bytes(path: Path) -> int:
    """The size of the block device at ``path``."""
    return int(subprocess.run(["blockdev", "--getsize64", str(path)], capture_output=True, text=True, check=True).stdout)


def status(obj: Obj | None) -> Obj:
    return (obj or {}).get("status") or {}


def condition_types(obj: Obj | None) -> list[str]:
    return [c.get("type", "") for c in status(obj).get("conditions") or []]


def capacity(obj: Obj | None) -> str | None:
    return (status(obj).get("capacity") or {}).get("storage")


def reasons(api: Api, kind: str, name: str) -> list[str]:
    """The reasons of the lines on the object's timeline, oldest first."""
    return [e["reason"] for e in api.events(kind, name)]


def statuses_seen(api: Api, kind: str, name: str) -> list[Obj]:
    """Every status the object had, oldest first (from its history in the log)."""
    return [(e.get("object") or {}).get("status") or {} for t, e in api.history(kind, name) if t in ("ObjectCreated", "ObjectChanged")]


def image_of(cp: Stack, handle: str) -> Path:
    """The image file of a volume, in whichever pool holds it."""
    pools = {cp.pool_dir("shared"), *(cp.run_dir / "pools").glob("*")}
    found = [image for pool in pools if (image := pool / f"{handle}.img").exists()]
    assert len(found) == 1, found
    return found[0]


def loop_device_of(image: Path) -> str:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout
    devices = [line.split(":", 1)[0] for line in out.splitlines()]
    assert len(devices) == 1, out
    return devices[0]


class Made:
    """What one test applied, deleted again at its end: pods (waiting until the node has
    unmounted them), then claims (their dynamically provisioned volumes go with them), then
    the test's own PersistentVolumes and classes."""

    _ORDER = ("Pod", "PersistentVolumeClaim", "PersistentVolume", "VolumeAttributesClass", "StorageClass")

    def __init__(self, cp: Stack, api: Api) -> None:
        self.cp, self.api = cp, api
        self.objects: dict[str, list[tuple[str, str]]] = {kind: [] for kind in self._ORDER}

    def apply(self, doc: Obj) -> Obj:
        obj = self.api.apply(doc)[0]
        entry = (obj["metadata"]["name"], obj["metadata"].get("namespace", ""))
        if entry not in self.objects[obj["kind"]]:
            self.objects[obj["kind"]].append(entry)
        return obj

    def clean(self) -> None:
        pods = [self.api.get("pod", name, ns) for name, ns in self.objects["Pod"]]
        for name, ns in self.objects["Pod"]:
            self.api.delete("pod", name, ns)
        for obj in pods:
            if obj is not None and obj["spec"].get("nodeName"):
                where = kubelet_dir(self.cp, obj["spec"]["nodeName"]) / "pods" / obj["metadata"]["uid"]
                until(lambda w=where: not mounts_under(w), f"pod {obj['metadata']['name']} unmounted", timeout=120)
        deleted = []  # the claims' volumes that go with them (reclaim policy Delete)
        for name, ns in self.objects["PersistentVolumeClaim"]:
            pvc = self.api.get("pvc", name, ns)
            pv = self.api.get("pv", pvc["spec"]["volumeName"]) if pvc is not None and pvc["spec"].get("volumeName") else None
            if pv is not None and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                deleted.append(pv["metadata"]["name"])
            self.api.delete("pvc", name, ns)
        for name, _ in self.objects["PersistentVolume"]:
            self.api.delete("pv", name)
        for name in deleted:
            until(lambda n=name: self.api.get("pv", n) is None, f"volume {name} deleted", timeout=120)
        for kind in ("VolumeAttributesClass", "StorageClass"):
            for name, _ in self.objects[kind]:
                self.api.delete(kind, name)
