"""The AD controller's desired state of world, as pure functions: given objects → then nodes."""

from __future__ import annotations

from typing import Any

from services.attacher.controllers.desired import (
    attach_driver,
    attachments_of,
    claim_bound_to,
    desired_nodes,
    is_attached,
    multi_attach_allowed,
    pod_volumes_desired,
)
from volplane.resources.names import LABEL_KEEP_TERMINATED

Obj = dict[str, Any]
DRIVER = "csi.volplane.io"


def pv(name: str = "pv-1", *, modes: tuple[str, ...] = ("ReadWriteOnce",), claim: str = "data", uid: str = "", source: Obj | None = None) -> Obj:
    ref: Obj = {"namespace": "default", "name": claim}
    if uid:
        ref["uid"] = uid
    return {
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {"accessModes": list(modes), "claimRef": ref, **(source or {"csi": {"driver": DRIVER, "volumeHandle": "vol-1"}})},
        "status": {"phase": "Bound"},
    }


def pvc(name: str = "data", *, volume: str = "pv-1", phase: str = "Bound", uid: str = "u-1") -> Obj:
    return {"kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default", "uid": uid}, "spec": {"volumeName": volume}, "status": {"phase": phase}}


def pod(name: str, node: str = "node-1", *, claim: str = "data", phase: str = "", deleting: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "default"}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"phase": phase} if phase else {},
    }


def node(name: str, *, keep: bool = False) -> Obj:
    return {"kind": "Node", "metadata": {"name": name, "labels": {LABEL_KEEP_TERMINATED: ""} if keep else {}}}


def driver(name: str = DRIVER, *, attach: bool = True) -> Obj:
    return {"kind": "CSIDriver", "metadata": {"name": name}, "spec": {"attachRequired": attach}}


def va(node_name: str, pv_name: str = "pv-1", *, attached: bool = False, deleting: bool = False) -> Obj:
    meta: Obj = {"name": f"csi-{node_name}"}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"attacher": DRIVER, "nodeName": node_name, "source": {"persistentVolumeName": pv_name}}, "status": {"attached": attached}}


CLAIMS = {"default/data": pvc()}


def test_scheduled_pod_wants_its_bound_volume_on_its_node() -> None:
    assert desired_nodes(pv(), [pod("web")], CLAIMS, {}, {}) == {"node-1": ("default/web",)}


def test_pods_on_two_nodes_want_the_volume_on_both_and_are_listed_per_node() -> None:
    pods = [pod("b", "node-2"), pod("a", "node-1"), pod("c", "node-1")]
    assert desired_nodes(pv(), pods, CLAIMS, {}, {}) == {"node-1": ("default/a", "default/c"), "node-2": ("default/b",)}


def test_unscheduled_deleted_and_terminated_pods_want_nothing() -> None:
    pods = [pod("pending", ""), pod("going", deleting=True), pod("done", phase="Succeeded"), pod("crashed", phase="Failed")]
    assert desired_nodes(pv(), pods, CLAIMS, {}, {}) == {}


def test_a_node_labelled_keep_terminated_keeps_terminated_pods_volumes() -> None:
    nodes = {"node-1": node("node-1", keep=True), "node-2": node("node-2")}
    pods = [pod("done", "node-1", phase="Succeeded"), pod("other", "node-2", phase="Failed")]
    assert desired_nodes(pv(), pods, CLAIMS, nodes, {}) == {"node-1": ("default/done",)}


def test_keep_terminated_never_keeps_a_deleted_pods_volumes() -> None:
    nodes = {"node-1": node("node-1", keep=True)}
    assert desired_nodes(pv(), [pod("gone", phase="Succeeded", deleting=True)], CLAIMS, nodes, {}) == {}


def test_keep_terminated_as_a_node_annotation_counts_too() -> None:
    annotated = {"metadata": {"name": "node-1", "annotations": {LABEL_KEEP_TERMINATED: "true"}}}
    assert pod_volumes_desired(pod("done", phase="Succeeded"), annotated)


def test_a_claim_that_is_not_bound_to_this_pv_wants_nothing() -> None:
    assert desired_nodes(pv(), [pod("web")], {"default/data": pvc(phase="Pending")}, {}, {}) == {}
    assert desired_nodes(pv(), [pod("web")], {"default/data": pvc(volume="")}, {}, {}) == {}
    assert desired_nodes(pv(), [pod("web")], {"default/data": pvc(volume="pv-2")}, {}, {}) == {}
    assert desired_nodes(pv(), [pod("web", claim="missing")], CLAIMS, {}, {}) == {}


def test_the_pv_must_point_back_at_the_claim() -> None:
    assert not claim_bound_to(pvc(), pv(claim="someone-else"))
    assert not claim_bound_to(pvc(uid="u-1"), pv(uid="u-2"))
    assert claim_bound_to(pvc(uid="u-1"), pv(uid="u-1"))
    assert claim_bound_to(pvc(uid="u-1"), pv())  # no uid on the claimRef: name and namespace decide


def test_a_pod_in_another_namespace_does_not_use_the_claim() -> None:
    other = pod("web")
    other["metadata"]["namespace"] = "prod"
    assert desired_nodes(pv(), [other], CLAIMS, {}, {}) == {}


def test_only_csi_volumes_that_need_attaching_are_wanted() -> None:
    nfs = pv(source={"nfs": {"server": "nfs.example", "path": "/x"}})
    host = pv(source={"hostPath": {"path": "/tmp/x"}})
    local = pv(source={"local": {"path": "/mnt/x"}})
    for volume in (nfs, host, local):
        assert attach_driver(volume, {}) is None
        assert desired_nodes(volume, [pod("web")], CLAIMS, {}, {}) == {}
    assert desired_nodes(pv(), [pod("web")], CLAIMS, {}, {DRIVER: driver(attach=False)}) == {}
    assert desired_nodes(pv(), [pod("web")], CLAIMS, {}, {DRIVER: driver(attach=True)}) == {"node-1": ("default/web",)}


def test_a_driver_without_a_csidriver_object_needs_attaching() -> None:
    assert attach_driver(pv(), {}) == DRIVER
    assert attach_driver(pv(), {"other": driver("other", attach=False)}) == DRIVER


def test_only_many_node_access_modes_allow_multi_attach() -> None:
    assert not multi_attach_allowed(pv(modes=("ReadWriteOnce",)))
    assert not multi_attach_allowed(pv(modes=("ReadWriteOncePod",)))
    assert multi_attach_allowed(pv(modes=("ReadWriteMany",)))
    assert multi_attach_allowed(pv(modes=("ReadWriteOnce", "ReadOnlyMany")))
    assert not multi_attach_allowed({"spec": {}})


def test_the_actual_state_is_the_volumes_attachments_by_node() -> None:
    vas = [va("node-1"), va("node-2", attached=True), va("node-1", "pv-2")]
    have = attachments_of("pv-1", vas)
    assert sorted(have) == ["node-1", "node-2"]
    assert not is_attached(have["node-1"])
    assert is_attached(have["node-2"])
    assert not is_attached(va("node-3", attached=True, deleting=True))
    assert not is_attached(None)


def test_no_pv_wants_nothing() -> None:
    assert desired_nodes(None, [pod("web")], CLAIMS, {}, {}) == {}
