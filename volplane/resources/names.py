"""Kubernetes' names for the annotations, labels, finalizers and paths the control loops
share, and the small derivations every loop needs (a claim's class, a PV's plugin,
a VolumeAttachment's name). Values are Kubernetes' own, so objects read the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "ANN_BETA_STORAGE_CLASS",
    "ANN_BETA_STORAGE_PROVISIONER",
    "ANN_BIND_COMPLETED",
    "ANN_BOUND_BY_CONTROLLER",
    "ANN_CONTROLLER_ENDPOINT",
    "ANN_CSI_NODE_IDS",
    "ANN_DEFAULT_GROUP_SNAPSHOT_CLASS",
    "ANN_DEFAULT_SNAPSHOT_CLASS",
    "ANN_GROUP_SNAPSHOT_BEING_CREATED",
    "ANN_GROUP_SNAPSHOT_BEING_DELETED",
    "ANN_NODE_ENDPOINT",
    "ANN_PROVISIONED_BY",
    "ANN_SELECTED_NODE",
    "ANN_SNAPSHOT_BEING_CREATED",
    "ANN_SNAPSHOT_BEING_DELETED",
    "ANN_STORAGE_PROVISIONER",
    "FINALIZER_CLONE_SOURCE",
    "FINALIZER_CONTENT_BOUND",
    "FINALIZER_GROUP_CONTENT_BOUND",
    "FINALIZER_GROUP_SNAPSHOT_BOUND",
    "FINALIZER_PVC_AS_SOURCE",
    "FINALIZER_SNAPSHOT_AS_SOURCE",
    "FINALIZER_SNAPSHOT_BOUND",
    "FINALIZER_SNAPSHOT_IN_GROUP",
    "GROUP_SNAPSHOT_GROUP",
    "LABEL_HOSTNAME",
    "LABEL_KEEP_TERMINATED",
    "OWN_DRIVER",
    "SNAPSHOT_GROUP",
    "attacher_finalizer",
    "claim_class",
    "csi_node_id",
    "plugin_of",
    "pod_claims",
    "pod_terminated",
    "unique_volume_name",
    "va_name",
]

# PV controller (pkg/controller/volume/persistentvolume in Kubernetes).
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
# The CSI node ids of a Node, per driver (written by the node's agent, read by attachers).
ANN_CSI_NODE_IDS = "csi.volume.kubernetes.io/nodeid"
# volplane's own: where a CSIDriver listens. The node endpoint may contain "{node}".
ANN_CONTROLLER_ENDPOINT = "volplane.io/controller-endpoint"
ANN_NODE_ENDPOINT = "volplane.io/node-endpoint"
LABEL_KEEP_TERMINATED = "volumes.kubernetes.io/keep-terminated-pod-volumes"
LABEL_HOSTNAME = "kubernetes.io/hostname"

OWN_DRIVER = "csi.volplane.io"

# Snapshots (kubernetes-csi/external-snapshotter, pkg/utils; external-provisioner).
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
GROUP_SNAPSHOT_GROUP = "groupsnapshot.storage.k8s.io"
ANN_DEFAULT_SNAPSHOT_CLASS = "snapshot.storage.kubernetes.io/is-default-class"
ANN_DEFAULT_GROUP_SNAPSHOT_CLASS = "groupsnapshot.storage.kubernetes.io/is-default-class"
ANN_SNAPSHOT_BEING_CREATED = "snapshot.storage.kubernetes.io/volumesnapshot-being-created"
ANN_SNAPSHOT_BEING_DELETED = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"
ANN_GROUP_SNAPSHOT_BEING_CREATED = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-created"
ANN_GROUP_SNAPSHOT_BEING_DELETED = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted"
FINALIZER_SNAPSHOT_AS_SOURCE = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
FINALIZER_SNAPSHOT_BOUND = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
FINALIZER_SNAPSHOT_IN_GROUP = "snapshot.storage.kubernetes.io/volumesnapshot-in-group-protection"
FINALIZER_CONTENT_BOUND = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
FINALIZER_PVC_AS_SOURCE = "snapshot.storage.kubernetes.io/pvc-as-source-protection"
FINALIZER_GROUP_SNAPSHOT_BOUND = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection"
FINALIZER_GROUP_CONTENT_BOUND = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection"
FINALIZER_CLONE_SOURCE = "provisioner.storage.kubernetes.io/cloning-protection"


def claim_class(pvc: dict[str, Any]) -> str:
    """The claim's StorageClass name: the beta annotation wins over spec.storageClassName,
    as in Kubernetes; "" means no class."""
    ann = (pvc.get("metadata") or {}).get("annotations") or {}
    if ANN_BETA_STORAGE_CLASS in ann:
        return str(ann[ANN_BETA_STORAGE_CLASS])
    return str((pvc.get("spec") or {}).get("storageClassName") or "")


def plugin_of(spec: dict[str, Any]) -> str:
    """The volume plugin of a PV spec or a pod's inline volume."""
    if "csi" in spec:
        return "kubernetes.io/csi"
    if "nfs" in spec:
        return "kubernetes.io/nfs"
    if "local" in spec:
        return "kubernetes.io/local-volume"
    if "hostPath" in spec:
        return "kubernetes.io/host-path"
    return "unknown"


def unique_volume_name(pv: dict[str, Any]) -> str:
    """Kubernetes' unique volume name: ``kubernetes.io/csi/<driver>^<handle>`` for CSI,
    ``<plugin>/<pv name>`` otherwise (what Node.status.volumesInUse lists)."""
    spec = pv.get("spec") or {}
    if "csi" in spec:
        return f"kubernetes.io/csi/{spec['csi']['driver']}^{spec['csi']['volumeHandle']}"
    return f"{plugin_of(spec)}/{pv['metadata']['name']}"


def va_name(pv_name: str, driver: str, node: str) -> str:
    """``csi-<sha256(pv name + driver + node)>``, Kubernetes' VolumeAttachment name."""
    return "csi-" + hashlib.sha256(f"{pv_name}{driver}{node}".encode()).hexdigest()


def attacher_finalizer(driver: str) -> str:
    return "external-attacher/" + driver.replace("/", "-")


def csi_node_id(node: dict[str, Any], driver: str) -> str | None:
    """The node's id for ``driver``, from the Node's csi.volume.kubernetes.io/nodeid annotation."""
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(ANN_CSI_NODE_IDS)
    try:
        return json.loads(raw).get(driver) if raw else None
    except (ValueError, AttributeError):
        return None


def pod_terminated(pod: dict[str, Any]) -> bool:
    return ((pod.get("status") or {}).get("phase")) in ("Succeeded", "Failed")


def pod_claims(pod: dict[str, Any]) -> list[tuple[str, str]]:
    """(pod volume name, claim name) of every claim the pod uses."""
    out = []
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        claim = vol.get("persistentVolumeClaim")
        if claim:
            out.append((vol["name"], claim["claimName"]))
    return out
