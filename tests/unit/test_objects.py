"""The typed views read Kubernetes' shapes from the stored dicts, and never copy or change them."""

from __future__ import annotations

import copy
from typing import Any

from volplane.resources.kinds import BY_NAME, key_of, namespaced_key
from volplane.resources.objects import (
    ClaimRef,
    CSIDriver,
    Node,
    Obj,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    StorageClass,
    VolumeAttachment,
)

CLAIM: Obj = {
    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
    "metadata": {"name": "data", "namespace": "apps", "uid": "u-1", "annotations": {"volume.kubernetes.io/selected-node": "node-1"}},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast", "volumeName": "pv-1"},
    "status": {"phase": "Bound"},
}
VOLUME: Obj = {
    "apiVersion": "v1", "kind": "PersistentVolume",
    "metadata": {"name": "pv-1", "labels": {"tier": "gold"}, "finalizers": ["external-attacher/csi.volplane.io"]},
    "spec": {
        "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "volumeMode": "Block",
        "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "fast",
        "csi": {"driver": "csi.volplane.io", "volumeHandle": "vol-1"},
        "claimRef": {"namespace": "apps", "name": "data", "uid": "u-1"},
    },
    "status": {"phase": "Bound"},
}


def test_a_view_reads_the_object_it_wraps_without_copying_or_changing_it() -> None:
    before = copy.deepcopy(VOLUME)
    pv = PersistentVolume(VOLUME)
    assert pv.raw is VOLUME and pv.spec is VOLUME["spec"]
    assert (pv.name, pv.phase, pv.labels, pv.finalizers) == ("pv-1", "Bound", {"tier": "gold"}, ["external-attacher/csi.volplane.io"])
    assert (pv.capacity, pv.volume_mode, pv.block, pv.storage_class, pv.reclaim_policy) == (2 * 2**30, "Block", True, "fast", "Delete")
    assert pv.csi_driver == "csi.volplane.io" and pv.plugin == "kubernetes.io/csi"
    assert pv.unique_name == "kubernetes.io/csi/csi.volplane.io^vol-1"
    assert before == VOLUME


def test_a_claim_reads_its_request_class_volume_and_selected_node() -> None:
    claim = PersistentVolumeClaim(CLAIM)
    assert (claim.request, claim.storage_class, claim.volume_name, claim.selected_node) == (2**30, "fast", "pv-1", "node-1")
    assert claim.volume_mode == "Filesystem" and not claim.block
    assert claim.ref() == {"kind": "PersistentVolumeClaim", "namespace": "apps", "name": "data", "uid": "u-1", "apiVersion": "v1"}


def test_keys_are_the_keys_kinds_gives_the_objects() -> None:
    assert PersistentVolumeClaim(CLAIM).key == key_of(CLAIM) == "apps/data"
    assert PersistentVolume(VOLUME).key == key_of(VOLUME) == "pv-1"
    assert namespaced_key(None, "data") == "default/data"


def test_missing_sections_read_as_kubernetes_defaults() -> None:
    bare: dict[str, Any] = {"kind": "PersistentVolumeClaim", "metadata": {"name": "x"}, "spec": None}
    claim = PersistentVolumeClaim(bare)
    assert (claim.namespace, claim.key, claim.uid, claim.phase) == ("default", "default/x", "", "")
    assert (claim.annotations, claim.labels, claim.finalizers, claim.deleting) == ({}, {}, [], False)
    assert (claim.volume_name, claim.volume_mode, claim.access_modes, claim.storage_class) == ("", "Filesystem", [], "")
    pv = PersistentVolume({"metadata": {"name": "pv"}})
    assert pv.claim_ref is None and pv.csi is None and pv.mount_options == []


def test_of_and_get_keep_a_missing_object_missing() -> None:
    objects = {("PersistentVolume", "pv-1"): VOLUME}
    assert PersistentVolume.of(None) is None
    assert PersistentVolume.get(lambda kind, key: objects.get((kind.name, key)), "pv-1") is not None
    assert PersistentVolume.get(lambda kind, key: objects.get((kind.name, key)), "pv-2") is None
    assert PersistentVolume.KIND is BY_NAME["PersistentVolume"]


def test_a_claim_ref_names_a_claim_by_namespace_name_and_uid_when_it_has_one() -> None:
    claim = PersistentVolumeClaim(CLAIM)
    assert ClaimRef({"namespace": "apps", "name": "data", "uid": "u-1"}).matches(claim)
    assert ClaimRef({"namespace": "apps", "name": "data"}).matches(claim)  # a user's pre-binding
    assert not ClaimRef({"namespace": "apps", "name": "data", "uid": "u-2"}).matches(claim)
    assert not ClaimRef({"name": "data"}).matches(claim)  # no namespace is "default"
    assert ClaimRef({"name": "data"}).key == "default/data"


def test_a_pod_names_its_claims_in_its_namespace() -> None:
    pod = Pod({
        "kind": "Pod", "metadata": {"name": "web", "namespace": "apps", "uid": "p-1"},
        "spec": {"nodeName": "node-1", "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}, {"name": "t", "hostPath": {"path": "/tmp"}}]},
        "status": {"phase": "Succeeded"},
    })
    assert pod.claims == [("d", "data")] and pod.claim_keys == {"apps/data"}
    assert pod.node_name == "node-1" and pod.terminated and len(pod.volumes) == 2


def test_a_node_is_ready_by_its_condition_and_lists_volumes_in_use() -> None:
    node = Node({
        "kind": "Node", "metadata": {"name": "node-1", "annotations": {"csi.volume.kubernetes.io/nodeid": '{"csi.volplane.io": "n1"}'}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "volumesInUse": ["kubernetes.io/csi/d^h"]},
    })
    assert node.ready and not node.unschedulable
    assert node.volumes_in_use == ["kubernetes.io/csi/d^h"] and node.csi_node_id("csi.volplane.io") == "n1"
    assert not Node({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}).ready


def test_an_attachment_reads_its_volume_node_and_outcome() -> None:
    va = VolumeAttachment({
        "kind": "VolumeAttachment", "metadata": {"name": "csi-1"},
        "spec": {"attacher": "d", "nodeName": "node-1", "source": {"persistentVolumeName": "pv-1"}},
        "status": {"attached": True, "attachmentMetadata": {"dev": "/dev/loop1"}, "detachError": {"message": "busy"}},
    })
    assert (va.attacher, va.node_name, va.pv_name, va.attached) == ("d", "node-1", "pv-1", True)
    assert va.attachment_metadata == {"dev": "/dev/loop1"}
    assert va.error("detachError") == "busy" and va.error("attachError") == ""


def test_a_storage_class_keeps_its_fields_at_the_top_level() -> None:
    sc = StorageClass({"kind": "StorageClass", "metadata": {"name": "wait"}, "provisioner": "p", "volumeBindingMode": "WaitForFirstConsumer"})
    assert (sc.provisioner, sc.reclaim_policy, sc.delays_binding, sc.parameters, sc.mount_options) == ("p", "Delete", True, {}, [])
    assert not StorageClass({"metadata": {"name": "now"}, "volumeBindingMode": "Immediate"}).delays_binding


def test_a_csi_driver_attaches_unless_it_says_otherwise() -> None:
    assert CSIDriver({"metadata": {"name": "d"}}).attach_required
    assert not CSIDriver({"metadata": {"name": "d"}, "spec": {"attachRequired": False}}).attach_required
