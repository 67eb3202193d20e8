"""VolumeGroupSnapshots in the standalone control plane, on a running stack with real
mounts: a label selector over claims → one consistent cut (CreateVolumeGroupSnapshot) →
a VolumeSnapshot and a VolumeSnapshotContent per member, restorable; deletion per policy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import needs_root
from tests.controlplane.conftest import Api, unique, until
from tests.controlplane.snapkit import DRIVER, GROUP_API, Kit, event_messages, finalizers, ready_to_use, reasons, status

pytestmark = needs_root
Obj = dict[str, Any]

IN_GROUP = "snapshot.storage.kubernetes.io/volumesnapshot-in-group-protection"
GROUP_BOUND = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-bound-protection"
GROUP_CONTENT_BOUND = "groupsnapshot.storage.kubernetes.io/volumegroupsnapshotcontent-bound-protection"


@pytest.fixture
def kit(cp: Stack, api: Api) -> Iterator[Kit]:
    k = Kit(cp, api)
    yield k
    k.close()


def group_doc(kit: Kit, selector: Obj, cls: str | None = None, api_version: str = GROUP_API) -> Obj:
    spec: Obj = {"source": {"selector": selector}}
    if cls:
        spec["volumeGroupSnapshotClassName"] = cls
    return kit._labelled({"apiVersion": api_version, "kind": "VolumeGroupSnapshot", "metadata": {"name": unique("group")}, "spec": spec})


def members(api: Api, group: Obj, count: int) -> list[Obj]:
    """The group's ``count`` member VolumeSnapshots (those it owns). Lists read a projection
    that may lag behind the log the group was just read from: polled, not raced."""
    uid = group["metadata"]["uid"]
    found: list[Obj] = []

    def listed() -> bool:
        found[:] = [s for s in api.list("vs") if any(o.get("uid") == uid for o in s["metadata"].get("ownerReferences") or [])]
        return len(found) == count

    until(listed, f"{count} members of {group['metadata']['name']} listed")
    return found


def gone(api: Api, snapshots: list[Obj]) -> bool:
    """Whether every one of these VolumeSnapshots is gone (single reads: the log itself)."""
    return all(api.get("vs", s["metadata"]["name"]) is None for s in snapshots)


def test_a_group_snapshot_cuts_every_selected_claim_at_once_and_its_members_restore(api: Api, kit: Kit) -> None:
    cls, group_cls = kit.storage_class(), kit.snapshot_class("Delete", kind="VolumeGroupSnapshotClass")
    app = unique("db")
    data, logs = kit.claim(cls, labels={"app": app}), kit.claim(cls, labels={"app": app})
    kit.claim(cls, labels={"app": "other"})  # not selected
    for claim in (data, logs):
        kit.write(kit.mounted(claim), f"{claim}.txt", f"in {claim}")
    doc = group_doc(kit, {"matchLabels": {"app": app}}, group_cls, api_version="groupsnapshot.storage.k8s.io/v1beta2")
    api.apply(doc)
    name = doc["metadata"]["name"]
    group = api.wait("vgs", name, ready_to_use, timeout=120)
    assert group is not None and group["apiVersion"] == GROUP_API  # stored in the newest version
    uid = group["metadata"]["uid"]

    content = api.get("vgsc", status(group)["boundVolumeGroupSnapshotContentName"])
    assert content is not None and content["metadata"]["name"] == f"groupsnapcontent-{uid}"
    assert sorted(content["spec"]["source"]["volumeHandles"]) == sorted(kit.handle_of(c) for c in (data, logs))
    assert content["spec"]["volumeGroupSnapshotRef"]["uid"] == uid and GROUP_CONTENT_BOUND in finalizers(content)
    handle = status(content)["volumeGroupSnapshotHandle"]
    assert kit.storage_has_group(handle) and len(status(content)["volumeSnapshotInfoList"]) == 2
    api.wait("vgs", name, lambda o: GROUP_BOUND in finalizers(o))
    # The events follow the status writes that they tell of: waited for, not raced.
    until(lambda: reasons(api, "vgs", name)[:3] == ["CreatingGroupSnapshot", "GroupSnapshotCreated", "GroupSnapshotReady"], "the group's three events")

    # One VolumeSnapshot and one VolumeSnapshotContent per member, named as external-snapshotter names them.
    snaps = members(api, group, 2)
    assert sorted(s["spec"]["source"]["persistentVolumeClaimName"] for s in snaps) == sorted((data, logs))
    for snap in snaps:
        volume = kit.handle_of(snap["spec"]["source"]["persistentVolumeClaimName"])
        digest = hashlib.sha256(f"{uid}{volume}".encode()).hexdigest()
        assert snap["metadata"]["name"] == f"snapshot-{digest}"
        snap = api.wait("vs", snap["metadata"]["name"], ready_to_use)
        assert status(snap)["volumeGroupSnapshotName"] == name and IN_GROUP in finalizers(snap)
        member = kit.content_of(snap)
        assert member["metadata"]["name"] == f"snapcontent-{digest}"
        assert status(member)["volumeGroupSnapshotHandle"] == handle and member["spec"]["volumeSnapshotRef"]["uid"] == snap["metadata"]["uid"]
        assert member["spec"]["sourceVolumeMode"] == "Filesystem"  # what a restore's volumeMode is checked against

    # A member is restored like any snapshot: the data of its claim at the cut.
    snap = next(s for s in snaps if s["spec"]["source"]["persistentVolumeClaimName"] == logs)
    restored = kit.claim(cls, source={"kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io", "name": snap["metadata"]["name"]})
    assert (kit.mounted(restored, node="node-2") / f"{logs}.txt").read_text() == f"in {logs}"

    # A member goes with its group, not alone.
    api.delete("vs", snap["metadata"]["name"])
    until(lambda: event_messages(api, "vs", snap["metadata"]["name"], "SnapshotDeletePending"), "SnapshotDeletePending on the member")
    api.delete("pvc", restored)
    api.wait("pvc", restored, lambda o: o is None)
    api.delete("vgs", name)
    api.wait("vgs", name, lambda o: o is None, timeout=120)
    assert gone(api, snaps)  # deleted before their group
    assert api.get("vgsc", content["metadata"]["name"]) is None
    assert not kit.storage_has_group(handle)
    assert all(not kit.storage_has_snapshot(i["snapshotHandle"]) for i in status(content)["volumeSnapshotInfoList"])


def test_a_retained_group_snapshot_leaves_its_contents_which_a_pre_provisioned_group_then_binds(api: Api, kit: Kit) -> None:
    cls, group_cls = kit.storage_class(), kit.snapshot_class("Retain", kind="VolumeGroupSnapshotClass")
    app = unique("kept")
    kit.claim(cls, labels={"app": app})
    doc = group_doc(kit, {"matchExpressions": [{"key": "app", "operator": "In", "values": [app]}]}, group_cls)
    api.apply(doc)
    group = api.wait("vgs", doc["metadata"]["name"], ready_to_use, timeout=120)
    content = status(group)["boundVolumeGroupSnapshotContentName"]
    snaps = members(api, group, 1)
    member_contents = [status(s)["boundVolumeSnapshotContentName"] for s in snaps]
    # Bound, it is protected whatever its policy: its deletion deletes its members first.
    api.wait("vgs", doc["metadata"]["name"], lambda o: GROUP_BOUND in finalizers(o))
    api.delete("vgs", doc["metadata"]["name"])
    api.wait("vgs", doc["metadata"]["name"], lambda o: o is None, timeout=120)
    assert gone(api, snaps)  # deleted before their group, their retained contents staying
    kept = api.get("vgsc", content)
    assert kept is not None and not kept["metadata"].get("deletionTimestamp")
    handle = status(kept)["volumeGroupSnapshotHandle"]
    assert kit.storage_has_group(handle)
    assert all(api.get("vsc", c) is not None for c in member_contents)

    # An administrator's content for the group snapshot still on the storage, and a group
    # snapshot naming it: bound, read with GetVolumeGroupSnapshot, its member made again.
    imported, name = unique("pre-group"), unique("imported")
    snapshot_ids = [i["snapshotHandle"] for i in status(kept)["volumeSnapshotInfoList"]]
    api.apply({"apiVersion": GROUP_API, "kind": "VolumeGroupSnapshotContent", "metadata": {"name": imported},
               "spec": {"source": {"groupSnapshotHandles": {"volumeGroupSnapshotHandle": handle, "volumeSnapshotHandles": snapshot_ids}},
                        "driver": DRIVER, "deletionPolicy": "Delete", "volumeGroupSnapshotRef": {"name": name, "namespace": "default"}}})
    api.apply(kit._labelled({"apiVersion": GROUP_API, "kind": "VolumeGroupSnapshot", "metadata": {"name": name},
                             "spec": {"source": {"volumeGroupSnapshotContentName": imported}}}))
    again = api.wait("vgs", name, ready_to_use, timeout=120)
    assert again is not None and status(again)["boundVolumeGroupSnapshotContentName"] == imported
    [member] = members(api, again, 1)
    assert status(kit.content_of(api.wait("vs", member["metadata"]["name"], ready_to_use)))["snapshotHandle"] == snapshot_ids[0]
    # The retained objects go by hand, leaving the storage; the import (Delete) takes it with it.
    for c in member_contents:
        api.delete("vsc", c)
    api.delete("vgsc", content)
    api.wait("vgsc", content, lambda o: o is None)
    assert kit.storage_has_group(handle)
    api.delete("vgs", name)
    api.wait("vgs", name, lambda o: o is None, timeout=120)
    api.wait("vgsc", imported, lambda o: o is None)
    assert not kit.storage_has_group(handle)
    for c in member_contents:
        api.wait("vsc", c, lambda o: o is None)


def test_a_group_snapshot_without_a_class_gets_the_default_class_of_its_driver(api: Api, kit: Kit) -> None:
    cls, default = kit.storage_class(), kit.snapshot_class("Delete", kind="VolumeGroupSnapshotClass", default=True)
    app = unique("defaulted")
    kit.claim(cls, labels={"app": app})
    doc = group_doc(kit, {"matchLabels": {"app": app}})
    try:
        api.apply(doc)
        group = api.wait("vgs", doc["metadata"]["name"], ready_to_use, timeout=120)
        assert group is not None and group["spec"]["volumeGroupSnapshotClassName"] == default
        content = api.get("vgsc", status(group)["boundVolumeGroupSnapshotContentName"])
        assert content is not None and content["spec"]["volumeGroupSnapshotClassName"] == default
    finally:
        # Other tests' group snapshots name their class; none must find two defaults.
        api.delete("vgsclass", default)
        api.delete("vgs", doc["metadata"]["name"])


def test_a_group_snapshot_whose_selector_matches_no_claim_says_so(api: Api, kit: Kit) -> None:
    group_cls = kit.snapshot_class("Delete", kind="VolumeGroupSnapshotClass")
    nobody = unique("nobody")
    doc = group_doc(kit, {"matchLabels": {"app": nobody}}, group_cls)
    api.apply(doc)
    failed = api.wait("vgs", doc["metadata"]["name"], lambda o: "error" in status(o))
    message = f"failed to create group snapshot content with error label selector app={nobody} for group snapshot not applied to any PVC"
    assert status(failed)["error"]["message"] == message and status(failed)["readyToUse"] is False
    until(lambda: message in event_messages(api, "vgs", doc["metadata"]["name"], "GroupSnapshotContentCreationFailed"), "the Warning event")


def test_the_group_kinds_are_validated_naming_the_field(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        api.apply({"apiVersion": GROUP_API, "kind": "VolumeGroupSnapshot", "metadata": {"name": "bad"},
                   "spec": {"source": {"selector": {"matchLabels": {"a": "b"}}, "volumeGroupSnapshotContentName": "c"}}})
    assert caught.value.details() == 'VolumeGroupSnapshot "bad": spec.source: exactly one of selector and volumeGroupSnapshotContentName must be set'
    with pytest.raises(grpc.RpcError) as caught:
        api.apply({"apiVersion": "groupsnapshot.storage.k8s.io/v1alpha1", "kind": "VolumeGroupSnapshotClass", "metadata": {"name": "bad"},
                   "driver": DRIVER, "deletionPolicy": "Delete"})
    assert "apiVersion: 'groupsnapshot.storage.k8s.io/v1alpha1' is not 'groupsnapshot.storage.k8s.io/v1'" in str(caught.value.details())
