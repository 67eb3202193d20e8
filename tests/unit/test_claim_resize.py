"""Expansion and VolumeAttributesClass as pure rules: what the external-resizer expands to,
the claim statuses on the way, the API's update rules, and NodeRestriction for claims."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.provisioner.controllers.external_resizer import target_size
from volplane.errors import InvalidArgument, PermissionDenied
from volplane.resources import claim_status as cs
from volplane.resources.admission import admit_update
from volplane.resources.authz import admit_node_write, kubelet
from volplane.resources.events import EventRecorded, ObjectChanged
from volplane.resources.kinds import Ref, ref, resolve
from volplane.resources.patch import merge
from volplane.resources.schema import validate

Obj = dict[str, Any]
PVC = resolve("pvc")


def pvc(request: str = "1Gi", capacity: str | None = "1Gi", phase: str = "Bound", **status: Any) -> Obj:
    st: Obj = {"phase": phase, **status}
    if capacity is not None:
        st["capacity"] = {"storage": capacity}
    # As the log has it: validated, with Kubernetes' defaults.
    return validate({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "default", "uid": "u1"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": request}}, "storageClassName": "fast", "volumeName": "pv-1"},
                     "status": st})


def pv(size: str = "1Gi") -> Obj:
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "csi": {"driver": "csi.volplane.io", "volumeHandle": "h"}}}


def after(claim: Obj, patch: Obj) -> Obj:
    out: Obj = merge(claim, patch)
    return out


GiB = 2**30


# -- target_size: Kubernetes' expandAndRecover ------------------------------------------


@pytest.mark.parametrize(
    ("claim", "volume", "expected"),
    [
        (pvc("2Gi"), pv("1Gi"), 2 * GiB),  # a new request
        (pvc("1Gi"), pv("1Gi"), None),  # nothing asked for
        (pvc("2Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "NodeResizePending"}), pv("2Gi"), None),
        (pvc("3Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "NodeResizePending"}), pv("2Gi"), None),
        (pvc("3Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "NodeResizePending"}), pv("1Gi"), 2 * GiB),
        (pvc("2Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "ControllerResizeInProgress"}), pv("1Gi"), 2 * GiB),
        (pvc("2Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "ControllerResizeInProgress"}), pv("2Gi"), 2 * GiB),
        (pvc("2Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "ControllerResizeInfeasible"}), pv("1Gi"), None),
        (pvc("3Gi", allocatedResources={"storage": "2Gi"}, allocatedResourceStatuses={"storage": "ControllerResizeInfeasible"}), pv("1Gi"), 3 * GiB),
        # An uncertain failure goes on with what was asked; after a final one, the new request.
        (pvc("3Gi", allocatedResources={"storage": "5Gi"}, allocatedResourceStatuses={"storage": "ControllerResizeInProgress"}), pv("1Gi"), 5 * GiB),
        (pvc("3Gi", allocatedResources={"storage": "5Gi"}, allocatedResourceStatuses={"storage": "ControllerResizeInProgress"},
             conditions=[{"type": "ControllerResizeError", "status": "True"}]), pv("1Gi"), 3 * GiB),
    ],
    ids=["new", "nothing", "node-turn", "node-turn-new-request-waits", "node-in-flight-first", "controller-in-progress",
         "crash-after-pv-write", "infeasible-waits", "infeasible-new-request", "uncertain-keeps-size", "final-takes-new-request"],
)
def test_the_size_to_expand_to(claim: Obj, volume: Obj, expected: int | None) -> None:
    assert target_size(claim, volume) == expected


# -- claim statuses ---------------------------------------------------------------------


def test_a_resize_walks_through_kubernetes_statuses_and_ends_clean() -> None:
    claim = pvc("2Gi", conditions=[{"type": "Other", "status": "True"}])
    claim = after(claim, cs.controller_resize_in_progress(claim, "2Gi"))
    assert cs.resize_status(claim) == cs.CONTROLLER_RESIZE_IN_PROGRESS and cs.allocated(claim) == 2 * GiB
    assert [c["type"] for c in claim["status"]["conditions"]] == ["Other", "Resizing"]
    claim = after(claim, cs.node_resize_pending(claim))
    assert [c["type"] for c in claim["status"]["conditions"]] == ["Other", "FileSystemResizePending"]
    claim = after(claim, cs.node_resize_in_progress(claim))
    assert cs.resize_status(claim) == cs.NODE_RESIZE_IN_PROGRESS
    claim = after(claim, cs.resize_finished(claim, "2Gi"))
    assert cs.capacity(claim) == 2 * GiB and cs.resize_status(claim) == ""
    assert "allocatedResourceStatuses" not in claim["status"] and claim["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert [c["type"] for c in claim["status"]["conditions"]] == ["Other"]


def test_a_condition_that_stays_keeps_its_transition_time() -> None:
    claim = pvc("2Gi", conditions=[{"type": "Resizing", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}])
    again = after(claim, cs.controller_resize_in_progress(claim, "2Gi"))
    assert again["status"]["conditions"] == [{"type": "Resizing", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]


def test_a_modification_walks_through_kubernetes_statuses_and_ends_clean() -> None:
    claim = pvc(currentVolumeAttributesClassName="gold")
    pending = after(claim, cs.modify_status(claim, cs.MODIFY_PENDING, "silver"))
    assert pending["status"]["modifyVolumeStatus"] == {"targetVolumeAttributesClassName": "silver", "status": "Pending"}
    assert "conditions" not in pending["status"]
    busy = after(pending, cs.modify_status(pending, cs.MODIFY_IN_PROGRESS, "silver"))
    assert [(c["type"], c["message"]) for c in busy["status"]["conditions"]] == [("ModifyingVolume", "ModifyVolume operation in progress.")]
    failed = after(busy, cs.modify_error(busy, "boom"))
    assert [c["type"] for c in failed["status"]["conditions"]] == ["ModifyingVolume", "ModifyVolumeError"]
    done = after(failed, cs.modify_completed(failed, "silver"))
    assert done["status"]["currentVolumeAttributesClassName"] == "silver"
    assert "modifyVolumeStatus" not in done["status"] and "conditions" not in done["status"]


# -- the API's update rules -------------------------------------------------------------


def admit(current: Obj, change: Obj, *, classes: dict[str, Obj] | None = None) -> None:
    async def read(r: Ref) -> tuple[Obj | None, int]:
        return (classes or {}).get(r.name), 0

    asyncio.run(admit_update(current, merge(current, change), read))


def sc(allow: bool | None) -> Obj:
    out: Obj = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": "csi.volplane.io"}
    if allow is not None:
        out["allowVolumeExpansion"] = allow
    return out


def grow(size: str) -> Obj:
    return {"spec": {"resources": {"requests": {"storage": size}}}}


def test_a_bound_claim_of_an_expandable_class_may_grow() -> None:
    admit(pvc(), grow("2Gi"), classes={"fast": sc(True)})


@pytest.mark.parametrize("allow", [False, None])
def test_a_claim_of_a_class_without_allow_volume_expansion_may_not_grow(allow: bool | None) -> None:
    with pytest.raises(PermissionDenied, match="only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"):
        admit(pvc(), grow("2Gi"), classes={"fast": sc(allow)})
    with pytest.raises(PermissionDenied):
        admit(pvc(), grow("2Gi"))  # no such class


def test_a_request_may_go_down_only_while_above_status_capacity() -> None:
    admit(pvc("4Gi", "1Gi"), grow("2Gi"))  # recovering from a failed expansion
    for size in ("1Gi", "512Mi"):
        with pytest.raises(InvalidArgument, match=r"spec\.resources\.requests\.storage: Forbidden: field can not be less than status\.capacity"):
            admit(pvc("4Gi", "1Gi"), grow(size))


def test_an_unbound_claim_keeps_its_request_and_class() -> None:
    for change in (grow("2Gi"), {"spec": {"volumeAttributesClassName": "gold"}}):
        with pytest.raises(InvalidArgument, match=r"spec is immutable after creation except resources\.requests and volumeAttributesClassName for bound claims"):
            admit(pvc(capacity=None, phase="Pending"), change, classes={"fast": sc(True)})


def test_a_claims_class_in_effect_cannot_be_taken_away_but_may_change() -> None:
    claim = merge(pvc(currentVolumeAttributesClassName="gold"), {"spec": {"volumeAttributesClassName": "gold"}})
    admit(claim, {"spec": {"volumeAttributesClassName": "silver"}})
    with pytest.raises(InvalidArgument, match=r"update to nil is forbidden when status\.currentVolumeAttributesClassName is not nil"):
        admit(claim, {"spec": {"volumeAttributesClassName": None}})


# -- NodeRestriction for claims ----------------------------------------------------------


def test_a_node_whose_pod_uses_a_claim_may_write_its_resize_status_only() -> None:
    claim_ref = ref(PVC, "default", "data")
    current = pvc("2Gi", allocatedResourceStatuses={"storage": "NodeResizePending"})
    done = merge(current, cs.resize_finished(current, "2Gi"))
    event = admit_node_write("node-1", claim_ref, ObjectChanged(object=done, patch={}, manager=kubelet("node-1")), current, recorded=False, claim_used=True)
    assert isinstance(event, ObjectChanged) and event.patch["status"]["capacity"] == {"storage": "2Gi"}
    for change in ({"status": {"phase": "Lost"}}, {"spec": {"volumeName": "other"}}, {"metadata": {"labels": {"a": "b"}}}):
        with pytest.raises(PermissionDenied, match=r"may not change anything but status\.capacity"):
            admit_node_write("node-1", claim_ref, ObjectChanged(object=merge(current, change), patch={}, manager=kubelet("node-1")), current, recorded=False, claim_used=True)
    with pytest.raises(PermissionDenied, match="no pod bound to it uses the claim"):
        admit_node_write("node-1", claim_ref, ObjectChanged(object=done, patch={}, manager=kubelet("node-1")), current, recorded=False)
    line = EventRecorded(reason="FileSystemResizeSuccessful", message="m", source=kubelet("node-1"))
    assert admit_node_write("node-1", claim_ref, line, current, recorded=True, claim_used=True) is line
    with pytest.raises(PermissionDenied, match="record events about"):
        admit_node_write("node-1", claim_ref, line, current, recorded=True)


# -- volctl ------------------------------------------------------------------------------


def test_volctl_lists_attributes_classes_in_kubectls_columns() -> None:
    from volctl.columns import rows

    gold = {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass", "metadata": {"name": "gold", "creationTimestamp": "2024-05-01T10:00:00Z"},
            "driverName": "csi.volplane.io", "parameters": {"writeIOPS": "100"}}
    assert rows(resolve("vac"), [gold], now=1714557600.0 + 120) == [["NAME", "DRIVERNAME", "AGE"], ["gold", "csi.volplane.io", "2m"]]


def test_volctl_describes_a_claims_class_and_conditions() -> None:
    from volctl.describe import describe

    claim = merge(pvc("2Gi", currentVolumeAttributesClassName="gold"), {"spec": {"volumeAttributesClassName": "gold"}})
    claim = after(claim, cs.node_resize_pending(claim))
    text = describe(claim, [], now=0.0)
    assert "VolumeAttributesClass:  gold" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("Type"))
    assert header.split() == ["Type", "Status", "LastProbeTime", "LastTransitionTime", "Reason", "Message"]
    row = next(line for line in text.splitlines() if line.strip().startswith("FileSystemResizePending"))
    assert "True" in row and "Waiting for user to (re-)start a pod to finish file system resize of volume on node." in row
