"""What the snapshot tests build their objects with: classes, claims, pods that mount them,
and a CSI client to look at the storage itself.

    kit = Kit(cp, api)
    cls, snap_cls = kit.storage_class(), kit.snapshot_class()   # classes of its own (policy Delete)
    claim = kit.claim(cls)                           # a Bound claim of 64Mi
    path = kit.mounted(claim)                        # a pod's mounted directory of it
    kit.write(path, "a.txt", "data")                 # a file written (and synced) onto the volume
    snap = kit.snapshot(claim, snap_cls)             # a ready VolumeSnapshot
    kit.close()                                      # everything it made gone, nothing mounted
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc

from devstack.launcher import Stack
from tests.controlplane.conftest import Api, kubelet_dir, phase, ready, unique, until
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc

Obj = dict[str, Any]
DRIVER = "csi.volplane.io"
SNAP_API = "snapshot.storage.k8s.io/v1"
GROUP_API = "groupsnapshot.storage.k8s.io/v1"


def reasons(api: Api, kind: str, name: str, namespace: str = "") -> list[str]:
    return [e["reason"] for e in api.events(kind, name, namespace)]


def event_messages(api: Api, kind: str, name: str, reason: str, namespace: str = "") -> list[str]:
    return [e["message"] for e in api.events(kind, name, namespace) if e["reason"] == reason]


def finalizers(obj: Obj | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


def status(obj: Obj | None) -> Obj:
    return (obj or {}).get("status") or {}


def ready_to_use(obj: Obj | None) -> bool:
    return status(obj).get("readyToUse") is True


LABEL = "test.volplane.io/kit"


class Kit:
    """Every object it makes carries its label; ``close`` takes them all down and waits until
    nothing of theirs is mounted, attached or stored any more."""

    def __init__(self, cp: Stack, api: Api) -> None:
        self.cp, self.api = cp, api
        self.id = unique("kit")
        self.channel = grpc.insecure_channel(cp.csi_endpoint)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.group = csi_pb2_grpc.GroupControllerStub(self.channel)
        self.pods: list[str] = []

    def _mine(self, kind: str) -> list[Obj]:
        return self.api.list(kind, selector=f"{LABEL}={self.id}")

    def close(self) -> None:
        self.unmount_all()
        for kind in ("vgs", "vs", "pvc"):
            for obj in self._mine(kind):
                self.api.delete(kind, obj["metadata"]["name"], obj["metadata"].get("namespace", ""))
        volumes = [o["spec"]["volumeName"] for o in self._mine("pvc") if o["spec"].get("volumeName")]
        until(lambda: not any(self._mine(k) for k in ("vgs", "vs", "pvc")), "the kit's snapshots and claims gone", timeout=180)
        for pv in volumes:
            self.api.wait("pv", pv, lambda o: o is None, timeout=180)  # its volume unstaged, detached, deleted
        for kind in ("sc", "vsclass", "vgsclass"):
            for obj in self._mine(kind):
                self.api.delete(kind, obj["metadata"]["name"])
        self.channel.close()

    def _labelled(self, doc: Obj) -> Obj:
        doc["metadata"].setdefault("labels", {})[LABEL] = self.id
        return doc

    # --- objects ----------------------------------------------------------------------

    def storage_class(self, *, binding: str = "Immediate") -> str:
        name = unique("snap-sc")
        self.api.apply(self._labelled({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": DRIVER,
                                       "volumeBindingMode": binding, "parameters": {"pool": "shared"}}))
        return name

    def snapshot_class(self, policy: str = "Delete", *, kind: str = "VolumeSnapshotClass", default: bool = False) -> str:
        single = kind == "VolumeSnapshotClass"
        name = unique("vsclass" if single else "vgsclass")
        ann = {f"{'snapshot' if single else 'groupsnapshot'}.storage.kubernetes.io/is-default-class": "true"} if default else {}
        self.api.apply(self._labelled({"apiVersion": SNAP_API if single else GROUP_API, "kind": kind,
                                       "metadata": {"name": name, "annotations": ann}, "driver": DRIVER, "deletionPolicy": policy}))
        return name

    def claim_doc(self, cls: str, *, size: str = "64Mi", source: Obj | None = None, labels: dict[str, str] | None = None, name: str = "") -> Obj:
        spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": cls}
        if source is not None:
            spec["dataSource"] = source
        return self._labelled({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name or unique("data"), "labels": dict(labels or {})}, "spec": spec})

    def claim(self, cls: str, *, size: str = "64Mi", source: Obj | None = None, labels: dict[str, str] | None = None, bound: bool = True) -> str:
        doc = self.claim_doc(cls, size=size, source=source, labels=labels)
        self.api.apply(doc)
        name = doc["metadata"]["name"]
        if bound:
            self.api.wait("pvc", name, lambda o: phase(o) == "Bound", timeout=90)
        return name

    def snapshot_doc(self, *, claim: str = "", content: str = "", cls: str | None = None, name: str = "") -> Obj:
        source = {"persistentVolumeClaimName": claim} if claim else {"volumeSnapshotContentName": content}
        spec: Obj = {"source": source}
        if cls:
            spec["volumeSnapshotClassName"] = cls
        return self._labelled({"apiVersion": SNAP_API, "kind": "VolumeSnapshot", "metadata": {"name": name or unique("snap")}, "spec": spec})

    def snapshot(self, claim: str, cls: str) -> Obj:
        doc = self.snapshot_doc(claim=claim, cls=cls)
        self.api.apply(doc)
        snap = self.api.wait("vs", doc["metadata"]["name"], ready_to_use, timeout=90)
        assert snap is not None
        return snap

    def content_of(self, snap: Obj) -> Obj:
        name = status(snap)["boundVolumeSnapshotContentName"]
        content = self.api.get("vsc", name)
        assert content is not None, f"no VolumeSnapshotContent {name}"
        return content

    # --- pods and their mounts ----------------------------------------------------

    def mounted(self, claim: str, *, node: str | None = "node-1") -> Path:
        """The directory a new pod on ``node`` (None: where the scheduler puts it, which a
        WaitForFirstConsumer claim needs) sees the claim's volume at, once mounted."""
        name = unique("app")
        spec: Obj = {"containers": [{"name": "app", "image": "busybox", "volumeMounts": [{"mountPath": "/data", "name": "vol"}]}],
                     "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]}
        if node is not None:
            spec["nodeName"] = node
        created = self.api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})[0]
        self.pods.append(name)
        mounted = self.api.wait("pod", name, ready, timeout=120)
        assert mounted is not None
        pvc = self.api.get("pvc", claim)
        assert pvc is not None
        where = kubelet_dir(self.cp, mounted["spec"]["nodeName"])
        path = where / "pods" / created["metadata"]["uid"] / "volumes" / "kubernetes.io~csi" / pvc["spec"]["volumeName"]
        # VolumesReady says the volume manager has set the volume up: its bind mount is there.
        assert os.path.ismount(path), f"pod {name} is VolumesReady but {path} is no mount point"
        assert (path / "lost+found").is_dir(), f"pod {name} is VolumesReady but {path} is not the volume's ext4"
        return path

    def unmount_all(self) -> None:
        """Delete the pods made so far and wait until their volumes are torn down."""
        pods, self.pods = self.pods, []
        uids = []
        for pod in pods:
            gone = self.api.delete("pod", pod)
            if gone is not None:
                uids.append(gone["metadata"]["uid"])
        for node in self.cp.node_ids:
            root = kubelet_dir(self.cp, node) / "pods"
            until(lambda: not any((root / uid).exists() for uid in uids), f"the pods' directories on {node} removed", timeout=120)

    @staticmethod
    def write(path: Path, name: str, text: str) -> None:
        """Write a file through a pod's mount and push it down to the volume's image, as an
        application would fsync: a snapshot copies the image, not the page cache. Checked
        after the write too: the file is on the volume's filesystem, not in a bare directory
        under where the mount was (a mount gone meanwhile would put it there)."""
        (path / name).write_text(text)
        os.sync()
        assert os.path.ismount(path), f"{path} stopped being a mount point while {name} was written to it"
        assert os.stat(path / name).st_dev == os.stat(path).st_dev != os.stat(path.parent).st_dev, f"{name} is not on the volume mounted at {path}"

    # --- the storage ------------------------------------------------------------------

    def handle_of(self, claim: str) -> str:
        pvc = self.api.get("pvc", claim)
        assert pvc is not None
        pv = self.api.get("pv", pvc["spec"]["volumeName"])
        assert pv is not None
        return str(pv["spec"]["csi"]["volumeHandle"])

    def storage_has_snapshot(self, snapshot_id: str) -> bool:
        reply = self.controller.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snapshot_id), timeout=30)
        return any(e.snapshot.snapshot_id == snapshot_id for e in reply.entries)

    def snapshots_of_volume(self, volume_id: str) -> list[str]:
        reply = self.controller.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=volume_id), timeout=30)
        return sorted(e.snapshot.snapshot_id for e in reply.entries)

    def storage_has_group(self, group_id: str) -> bool:
        try:
            self.group.GetVolumeGroupSnapshot(csi.GetVolumeGroupSnapshotRequest(group_snapshot_id=group_id), timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True
