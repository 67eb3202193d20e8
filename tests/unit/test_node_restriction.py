"""NodeRestriction, as a pure rule: given the object as the log has it and the event a
node asks to append, allowed (the event to append) or PermissionDenied."""

from __future__ import annotations

from typing import Any

import pytest

from volplane.errors import InvalidArgument, PermissionDenied
from volplane.resources.authz import ROLES, admit_node_write, kubelet, role_subjects
from volplane.resources.events import EventRecorded, ObjectChanged, ObjectCreated, ObjectDeleted
from volplane.resources.kinds import KINDS, ref, resolve

Obj = dict[str, Any]
POD, NODE, PV = resolve("pod"), resolve("node"), resolve("pv")


def node_obj(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": "u-" + name, "labels": labels}, "status": {}}


def pod(name: str, node: str, **status: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "uid": "u-" + name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}, "status": status}


def changed(obj: Obj, manager: str = "kubelet/node-1") -> ObjectChanged:
    return ObjectChanged(object=obj, patch={}, manager=manager)


def test_a_node_may_change_its_pods_status_and_the_patch_is_recomputed() -> None:
    current = pod("p", "node-1")
    event = admit_node_write("node-1", ref(POD, "default", "p"), changed(pod("p", "node-1", phase="Running")), current, recorded=False)
    assert isinstance(event, ObjectChanged) and event.patch == {"status": {"phase": "Running"}}


def test_a_node_may_not_change_a_pod_bound_elsewhere_nor_its_pods_spec() -> None:
    with pytest.raises(PermissionDenied, match="bound to another node"):
        admit_node_write("node-1", ref(POD, "default", "p"), changed(pod("p", "node-2", phase="Failed")), pod("p", "node-2"), recorded=False)
    with pytest.raises(PermissionDenied, match="anything but the status"):
        admit_node_write("node-1", ref(POD, "default", "p"), changed(pod("p", "node-2")), pod("p", "node-1"), recorded=False)


def test_a_node_may_create_and_change_its_own_node_only() -> None:
    mine = ObjectCreated(object=node_obj("node-1"), manager=kubelet("node-1"))
    assert admit_node_write("node-1", ref(NODE, None, "node-1"), mine, None, recorded=False) is mine
    with pytest.raises(PermissionDenied, match='may not create Node/node-2'):
        admit_node_write("node-1", ref(NODE, None, "node-2"), ObjectCreated(object=node_obj("node-2"), manager=kubelet("node-1")), None, recorded=False)
    with pytest.raises(PermissionDenied, match='may not change Node/node-2'):
        admit_node_write("node-1", ref(NODE, None, "node-2"), changed(node_obj("node-2", a="b")), node_obj("node-2"), recorded=False)


def test_a_node_may_not_set_the_admins_restricted_labels() -> None:
    labelled = node_obj("node-1", **{"node-restriction.kubernetes.io/trusted": "yes"})
    with pytest.raises(PermissionDenied, match=r"node-restriction\.kubernetes\.io"):
        admit_node_write("node-1", ref(NODE, None, "node-1"), changed(labelled), node_obj("node-1"), recorded=False)


def test_a_node_deletes_nothing_and_writes_only_in_its_own_name() -> None:
    with pytest.raises(PermissionDenied, match="may not delete"):
        admit_node_write("node-1", ref(NODE, None, "node-1"), ObjectDeleted(object=node_obj("node-1"), manager=kubelet("node-1")), node_obj("node-1"), recorded=False)
    with pytest.raises(PermissionDenied, match='write as "persistentvolume-controller"'):
        admit_node_write("node-1", ref(POD, "default", "p"), changed(pod("p", "node-1", phase="x"), "persistentvolume-controller"), pod("p", "node-1"), recorded=False)


def test_a_node_records_lines_about_its_node_and_pods_only() -> None:
    line = EventRecorded(reason="R", message="m", source=kubelet("node-1"))
    assert admit_node_write("node-1", ref(POD, "default", "p"), line, pod("p", "node-1"), recorded=True) is line
    with pytest.raises(PermissionDenied, match="record events about"):
        admit_node_write("node-1", ref(POD, "default", "p"), line, pod("p", "node-2"), recorded=True)
    with pytest.raises(PermissionDenied, match="record events about"):
        admit_node_write("node-1", ref(PV, None, "v"), line, None, recorded=True)
    with pytest.raises(PermissionDenied, match="record a line as"):
        admit_node_write("node-1", ref(POD, "default", "p"), EventRecorded(reason="R", message="m", source="scheduler"), pod("p", "node-1"), recorded=True)


def test_an_object_on_the_wrong_subject_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="does not belong"):
        admit_node_write("node-1", ref(POD, "default", "q"), changed(pod("p", "node-1", phase="x")), pod("q", "node-1"), recorded=False)


def test_role_subjects_name_only_kinds_that_exist() -> None:
    tokens = {k.token for k in KINDS}
    for role in ROLES:
        for subject in role_subjects(role):
            assert subject in ("vp.ev.res.>", "vp.ev.rec.>") or subject.split(".")[3] in tokens
    assert "vp.ev.res.va.>" not in role_subjects("provisioner") and "vp.ev.res.pvc.>" not in role_subjects("attacher")
