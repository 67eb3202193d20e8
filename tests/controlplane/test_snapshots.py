"""VolumeSnapshots in the standalone control plane, on a running stack with real mounts:
the snapshot controller and CSI snapshotter roles, deletion policies, pre-provisioned
contents, and claims restored from a snapshot or cloned from a claim — their data read
back through a pod's mount."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import needs_root
from tests.controlplane.conftest import Api, phase, unique, until
from tests.controlplane.direct import direct_patch
from tests.controlplane.snapkit import DRIVER, SNAP_API, Kit, event_messages, finalizers, ready_to_use, reasons, status
from volplane.csi import csi_pb2 as csi

pytestmark = needs_root
Obj = dict[str, Any]

AS_SOURCE = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
BOUND = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
CONTENT_BOUND = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
PVC_AS_SOURCE = "snapshot.storage.kubernetes.io/pvc-as-source-protection"
CLONING = "provisioner.storage.kubernetes.io/cloning-protection"


@pytest.fixture
def kit(cp: Stack, api: Api) -> Iterator[Kit]:
    k = Kit(cp, api)
    yield k
    k.close()


def snapshot_source(name: str) -> Obj:
    return {"kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io", "name": name}


def claim_source(name: str) -> Obj:
    return {"kind": "PersistentVolumeClaim", "name": name}


def test_a_restored_claim_has_the_snapshot_s_data_and_a_clone_the_claim_s(api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class()
    source = kit.claim(cls)
    mount = kit.mounted(source)
    kit.write(mount, "before.txt", "taken with the snapshot")
    snap = kit.snapshot(source, snap_cls)
    name = snap["metadata"]["name"]
    kit.write(mount, "after.txt", "written after the snapshot")

    # Bound both ways, as the snapshot controller binds them, with Kubernetes' finalizers.
    content = kit.content_of(snap)
    assert content["metadata"]["name"] == f"snapcontent-{snap['metadata']['uid']}"
    assert content["spec"]["volumeSnapshotRef"]["uid"] == snap["metadata"]["uid"]
    assert content["spec"]["source"] == {"volumeHandle": kit.handle_of(source)}
    assert content["spec"]["deletionPolicy"] == "Delete" and content["spec"]["driver"] == DRIVER
    assert status(snap)["restoreSize"] == "64Mi" and status(content)["restoreSize"] == 64 * 2**20
    assert status(snap)["creationTime"] and isinstance(status(content)["creationTime"], int)
    assert kit.storage_has_snapshot(status(content)["snapshotHandle"])
    snap = api.wait("vs", name, lambda o: BOUND in finalizers(o))
    assert AS_SOURCE in finalizers(snap) and CONTENT_BOUND in finalizers(kit.content_of(snap))
    # The events follow the status writes that they tell of: waited for, not raced.
    until(lambda: reasons(api, "vs", name)[:3] == ["CreatingSnapshot", "SnapshotCreated", "SnapshotReady"], "the snapshot's three events")
    assert event_messages(api, "vs", name, "SnapshotReady") == [f"Snapshot default/{name} is ready to use."]
    # The claim was protected while it was being snapshotted, and is no longer.
    api.wait("pvc", source, lambda o: PVC_AS_SOURCE not in finalizers(o))

    restored = kit.claim(cls, source=snapshot_source(name))
    pvc = api.get("pvc", restored)
    assert pvc is not None and pvc["spec"]["dataSourceRef"] == snapshot_source(name)  # copied, as the API server does
    seen = kit.mounted(restored, node="node-2")
    assert (seen / "before.txt").read_text() == "taken with the snapshot"
    assert not (seen / "after.txt").exists()

    clone = kit.claim(cls, source=claim_source(source))
    seen = kit.mounted(clone, node="node-2")
    assert (seen / "before.txt").read_text() == "taken with the snapshot"
    assert (seen / "after.txt").read_text() == "written after the snapshot"
    # cloning-protection held the source while it was cloned, and goes once the clone is made.
    api.wait("pvc", source, lambda o: CLONING not in finalizers(o))
    until(lambda: "ProvisioningSucceeded" in reasons(api, "pvc", clone), "ProvisioningSucceeded on the clone")


def test_deleting_a_snapshot_with_policy_delete_deletes_its_content_and_the_snapshot_on_the_storage(api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class("Delete")
    snap = kit.snapshot(kit.claim(cls), snap_cls)
    content = kit.content_of(snap)
    handle = status(content)["snapshotHandle"]
    api.delete("vs", snap["metadata"]["name"])
    api.wait("vs", snap["metadata"]["name"], lambda o: o is None)
    assert api.get("vsc", content["metadata"]["name"]) is None  # the snapshot waited for its content
    assert not kit.storage_has_snapshot(handle)


def test_retain_keeps_the_content_and_the_snapshot_which_a_pre_provisioned_content_then_binds(cp: Stack, api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class("Retain")
    claim = kit.claim(cls)
    mount = kit.mounted(claim)
    kit.write(mount, "kept.txt", "outlives its VolumeSnapshot")
    snap = kit.snapshot(claim, snap_cls)
    retained = kit.content_of(snap)
    handle = status(retained)["snapshotHandle"]
    api.delete("vs", snap["metadata"]["name"])
    api.wait("vs", snap["metadata"]["name"], lambda o: o is None)
    retained = api.get("vsc", retained["metadata"]["name"])
    assert retained is not None and not retained["metadata"].get("deletionTimestamp")
    assert retained["metadata"]["annotations"]["snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"] == "yes"
    assert kit.storage_has_snapshot(handle)

    # An administrator's content for the snapshot that is still there, and a snapshot naming it.
    content, name = unique("pre"), unique("imported")
    api.apply({"apiVersion": SNAP_API, "kind": "VolumeSnapshotContent", "metadata": {"name": content},
               "spec": {"source": {"snapshotHandle": handle}, "driver": DRIVER, "deletionPolicy": "Delete",
                        "volumeSnapshotRef": {"name": name, "namespace": "default"}}})
    api.apply(kit.snapshot_doc(content=content, name=name))
    imported = api.wait("vs", name, ready_to_use, timeout=60)
    assert status(imported)["boundVolumeSnapshotContentName"] == content and status(imported)["restoreSize"] == "64Mi"
    bound = api.get("vsc", content)
    assert bound is not None and bound["spec"]["volumeSnapshotRef"]["uid"] == imported["metadata"]["uid"]
    assert CONTENT_BOUND in finalizers(bound) and status(bound)["snapshotHandle"] == handle

    restored = kit.claim(cls, source=snapshot_source(name))
    assert (kit.mounted(restored, node="node-2") / "kept.txt").read_text() == "outlives its VolumeSnapshot"

    # The retained content, deleted by hand, goes and leaves the storage alone; the
    # imported snapshot's (policy Delete) takes the storage's snapshot with it.
    api.delete("vsc", retained["metadata"]["name"])
    api.wait("vsc", retained["metadata"]["name"], lambda o: o is None)
    assert kit.storage_has_snapshot(handle)
    api.delete("vs", name)
    api.wait("vs", name, lambda o: o is None)
    api.wait("vsc", content, lambda o: o is None)
    assert not kit.storage_has_snapshot(handle)


def test_a_snapshot_of_a_missing_claim_says_so_and_is_taken_once_the_claim_exists(api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class()
    claim = unique("later")
    doc = kit.snapshot_doc(claim=claim, cls=snap_cls)
    api.apply(doc)
    name = doc["metadata"]["name"]
    failed = api.wait("vs", name, lambda o: "error" in status(o))
    message = f"Failed to create snapshot content with error snapshot controller failed to update {name} on API server: cannot get claim from snapshot"
    assert status(failed)["error"]["message"] == message and status(failed)["readyToUse"] is False
    until(lambda: message in event_messages(api, "vs", name, "SnapshotContentCreationFailed"), "the Warning event")
    api.apply(kit.claim_doc(cls, name=claim))
    snap = api.wait("vs", name, ready_to_use, timeout=90)
    assert "error" not in status(snap)


def test_a_snapshot_of_a_class_that_does_not_exist_names_it_and_leaves_the_claim_unprotected(api: Api, kit: Kit) -> None:
    claim = kit.claim(kit.storage_class())
    doc = kit.snapshot_doc(claim=claim, cls="no-such-class")
    api.apply(doc)
    name = doc["metadata"]["name"]
    failed = api.wait("vs", name, lambda o: "error" in status(o))
    assert 'volumesnapshotclass.snapshot.storage.k8s.io "no-such-class" not found' in status(failed)["error"]["message"]
    assert PVC_AS_SOURCE not in finalizers(api.get("pvc", claim))
    api.delete("vs", name)
    api.wait("vs", name, lambda o: o is None)


def test_a_snapshot_without_a_class_gets_the_default_class_of_its_driver(api: Api, kit: Kit) -> None:
    cls, default = kit.storage_class(), kit.snapshot_class("Delete", default=True)
    doc = kit.snapshot_doc(claim=kit.claim(cls))
    try:
        api.apply(doc)
        snap = api.wait("vs", doc["metadata"]["name"], ready_to_use, timeout=90)
        assert snap is not None and snap["spec"]["volumeSnapshotClassName"] == default
    finally:
        # Other tests' snapshots name their class; none must find two defaults.
        api.delete("vsclass", default)
        api.delete("vs", doc["metadata"]["name"])


def test_a_restore_smaller_than_the_snapshot_is_refused_and_holds_the_snapshot_s_deletion(api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class()
    snap = kit.snapshot(kit.claim(cls), snap_cls)
    name = snap["metadata"]["name"]
    small = kit.claim(cls, size="32Mi", source=snapshot_source(name), bound=False)
    expected = (f'failed to provision volume with StorageClass "{cls}": error getting handle for DataSource Type VolumeSnapshot by Name {name}: '
                f"requested volume size {32 * 2**20} is less than the size {64 * 2**20} for the source snapshot {name}")
    until(lambda: expected in event_messages(api, "pvc", small, "ProvisioningFailed"), "ProvisioningFailed on the claim")
    assert phase(api.get("pvc", small)) == "Pending"
    # The snapshot is being used to restore a claim: it waits for that claim.
    api.delete("vs", name)
    until(lambda: "Snapshot is being used to restore a PVC" in event_messages(api, "vs", name, "SnapshotDeletePending"), "SnapshotDeletePending")
    assert api.get("vs", name) is not None
    api.delete("pvc", small)
    api.wait("vs", name, lambda o: o is None)


def test_a_restore_waits_while_its_snapshot_is_not_ready(api: Api, kit: Kit) -> None:
    cls, late, snap_cls = kit.storage_class(), kit.storage_class(binding="WaitForFirstConsumer"), kit.snapshot_class()
    source = kit.claim(late, bound=False)
    doc = kit.snapshot_doc(claim=source, cls=snap_cls)
    api.apply(doc)
    name = doc["metadata"]["name"]
    waiting = api.wait("vs", name, lambda o: "error" in status(o))
    assert f"the PVC {source} is not yet bound to a PV" in status(waiting)["error"]["message"]
    restored = kit.claim(cls, source=snapshot_source(name), bound=False)
    until(lambda: any(f"snapshot {name} not bound" in m for m in event_messages(api, "pvc", restored, "ProvisioningFailed")), "ProvisioningFailed")
    assert phase(api.get("pvc", restored)) == "Pending"
    kit.mounted(source, node=None)  # a consumer: the source is provisioned and bound, the snapshot taken
    api.wait("vs", name, ready_to_use, timeout=90)
    api.wait("pvc", restored, lambda o: phase(o) == "Bound", timeout=90)


def test_a_snapshot_of_another_driver_is_not_restored(cp: Stack, api: Api, kit: Kit) -> None:
    cls = kit.storage_class()
    content, name = unique("foreign"), unique("foreign-snap")
    api.apply({"apiVersion": SNAP_API, "kind": "VolumeSnapshotContent", "metadata": {"name": content},
               "spec": {"source": {"snapshotHandle": "elsewhere-1"}, "driver": "other.example.com", "deletionPolicy": "Retain",
                        "volumeSnapshotRef": {"name": name, "namespace": "default"}}})
    api.apply(kit.snapshot_doc(content=content, name=name))
    api.wait("vs", name, lambda o: status(o).get("boundVolumeSnapshotContentName") == content)
    restored = kit.claim(cls, source=snapshot_source(name), bound=False)

    def refused() -> bool:
        return any(f"snapshot {name} not bound" in m and "other.example.com" in m for m in event_messages(api, "pvc", restored, "ProvisioningFailed"))

    until(refused, "ProvisioningFailed naming the other driver")
    assert phase(api.get("pvc", restored)) == "Pending"
    api.delete("pvc", restored)
    api.wait("pvc", restored, lambda o: o is None)
    api.delete("vs", name)
    api.wait("vs", name, lambda o: o is None)
    # No snapshotter serves other.example.com here: an administrator lets the content go.
    api.delete("vsc", content)
    direct_patch(cp, "vsc", content, {"metadata": {"finalizers": None}}, manager="test")
    api.wait("vsc", content, lambda o: o is None)


def test_a_clone_smaller_than_its_source_is_refused(api: Api, kit: Kit) -> None:
    cls = kit.storage_class()
    source = kit.claim(cls)
    clone = kit.claim(cls, size="32Mi", source=claim_source(source), bound=False)
    expected = ("error, new PVC request must be greater than or equal in size to the specified PVC data source, "
                f"requested {32 * 2**20} but source is {64 * 2**20}")
    until(lambda: any(expected in m for m in event_messages(api, "pvc", clone, "ProvisioningFailed")), "ProvisioningFailed")
    assert phase(api.get("pvc", clone)) == "Pending"
    assert CLONING not in finalizers(api.get("pvc", source))
    api.delete("pvc", clone)


def test_a_snapshot_cut_before_a_crash_is_found_again_by_its_name(api: Api, kit: Kit) -> None:
    """The CSI snapshotter calls CreateSnapshot with ``snapshot-<VolumeSnapshot uid>`` and then
    records the answer: had it died in between, its call again finds the same snapshot. Here
    the first call is made by hand while the snapshot waits for its class."""
    cls = kit.storage_class()
    claim = kit.claim(cls)
    volume = kit.handle_of(claim)
    late = unique("late-class")
    doc = kit.snapshot_doc(claim=claim, cls=late)
    api.apply(doc)
    name = doc["metadata"]["name"]
    snap = api.wait("vs", name, lambda o: "error" in status(o))
    first = kit.controller.CreateSnapshot(csi.CreateSnapshotRequest(name=f"snapshot-{snap['metadata']['uid']}", source_volume_id=volume), timeout=60).snapshot
    api.apply(kit._labelled({"apiVersion": SNAP_API, "kind": "VolumeSnapshotClass", "metadata": {"name": late}, "driver": DRIVER, "deletionPolicy": "Delete"}))
    snap = api.wait("vs", name, ready_to_use, timeout=90)
    assert status(kit.content_of(snap))["snapshotHandle"] == first.snapshot_id
    assert kit.snapshots_of_volume(volume) == [first.snapshot_id]


def test_a_snapshot_deleted_while_it_is_being_taken_leaves_nothing_behind(api: Api, kit: Kit) -> None:
    """Deleted at once, the snapshot meets its controllers at whatever step they are at (no
    finalizer yet, the claim protected, the content made, the cut in flight or recorded):
    each must end the same, with no content, no snapshot on the storage and the claim free."""
    cls, snap_cls = kit.storage_class(), kit.snapshot_class("Delete")
    claim = kit.claim(cls)
    volume = kit.handle_of(claim)
    doc = kit.snapshot_doc(claim=claim, cls=snap_cls)
    created = api.apply(doc)[0]
    api.delete("vs", doc["metadata"]["name"])
    api.wait("vs", doc["metadata"]["name"], lambda o: o is None, timeout=60)
    api.wait("vsc", f"snapcontent-{created['metadata']['uid']}", lambda o: o is None, timeout=60)
    assert kit.snapshots_of_volume(volume) == []  # a content lets go only once its snapshot is deleted
    api.wait("pvc", claim, lambda o: PVC_AS_SOURCE not in finalizers(o))


def test_a_killed_provisioner_takes_and_restores_the_snapshot_when_it_is_back(cp: Stack, api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class()
    claim = kit.claim(cls)
    kit.write(kit.mounted(claim), "survives.txt", "across the restart")
    doc = kit.snapshot_doc(claim=claim, cls=snap_cls)
    cp.stop_service("provisioner", kill=True)
    try:
        api.apply(doc)
        restored = kit.claim_doc(cls, source=snapshot_source(doc["metadata"]["name"]))
        api.apply(restored)
        assert not ready_to_use(api.get("vs", doc["metadata"]["name"]))
    finally:
        cp.start_service("provisioner")
        cp.wait_healthy(["provisioner"])
    api.wait("vs", doc["metadata"]["name"], ready_to_use, timeout=120)
    seen = kit.mounted(restored["metadata"]["name"], node="node-2")
    assert (seen / "survives.txt").read_text() == "across the restart"


def test_an_invalid_snapshot_is_refused_naming_the_field(api: Api) -> None:
    def refused(doc: Obj) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            api.apply(doc)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return str(caught.value.details())

    assert refused({"apiVersion": SNAP_API, "kind": "VolumeSnapshot", "metadata": {"name": "bad"}, "spec": {"source": {}}}) == (
        'VolumeSnapshot "bad": spec.source: exactly one of persistentVolumeClaimName and volumeSnapshotContentName must be set')
    assert refused({"apiVersion": SNAP_API, "kind": "VolumeSnapshotClass", "metadata": {"name": "bad"}, "driver": DRIVER, "deletionPolicy": "Keep"}) == (
        "VolumeSnapshotClass \"bad\": deletionPolicy: 'Keep': Input should be 'Delete' or 'Retain'")
    assert "spec.volumeSnapshotRef.namespace" in refused({
        "apiVersion": SNAP_API, "kind": "VolumeSnapshotContent", "metadata": {"name": "bad"},
        "spec": {"source": {"snapshotHandle": "x"}, "driver": DRIVER, "deletionPolicy": "Delete", "volumeSnapshotRef": {"name": "s"}}})


def volctl(cp: Stack, *args: str) -> str:
    env = {**cp.env, "VOLPLANE_API_ENDPOINT": cp.api_endpoint}
    out = subprocess.run([sys.executable, "-m", "volctl", *args], env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    return out.stdout


def table(text: str) -> list[dict[str, str]]:
    """A volctl table read by its header's column positions (cells may be empty)."""
    header, *lines = text.rstrip("\n").split("\n")
    words = list(re.finditer(r"\S+", header))
    names, starts = [w.group() for w in words], [w.start() for w in words]
    bounds = [*starts[1:], None]
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)} for line in lines]


def test_volctl_prints_snapshots_in_kubectl_s_columns_and_describes_them(cp: Stack, api: Api, kit: Kit) -> None:
    cls, snap_cls = kit.storage_class(), kit.snapshot_class()
    claim = kit.claim(cls)
    snap = kit.snapshot(claim, snap_cls)
    name, content = snap["metadata"]["name"], status(snap)["boundVolumeSnapshotContentName"]
    [row] = table(volctl(cp, "get", "vs", name))
    assert list(row) == ["NAME", "READYTOUSE", "SOURCEPVC", "SOURCESNAPSHOTCONTENT", "RESTORESIZE", "SNAPSHOTCLASS", "SNAPSHOTCONTENT", "CREATIONTIME", "AGE"]
    assert row == {**row, "NAME": name, "READYTOUSE": "true", "SOURCEPVC": claim, "SOURCESNAPSHOTCONTENT": "", "RESTORESIZE": "64Mi",
                   "SNAPSHOTCLASS": snap_cls, "SNAPSHOTCONTENT": content}
    [row] = table(volctl(cp, "get", "volumesnapshotcontent", content))
    assert row == {"NAME": content, "READYTOUSE": "true", "RESTORESIZE": str(64 * 2**20), "DELETIONPOLICY": "Delete", "DRIVER": DRIVER,
                   "VOLUMESNAPSHOTCLASS": snap_cls, "VOLUMESNAPSHOT": name, "VOLUMESNAPSHOTNAMESPACE": "default", "AGE": row["AGE"]}
    [row] = table(volctl(cp, "get", "vsclass", snap_cls))
    assert row == {"NAME": snap_cls, "DRIVER": DRIVER, "DELETIONPOLICY": "Delete", "AGE": row["AGE"]}
    until(lambda: "SnapshotReady" in reasons(api, "vs", name), "SnapshotReady")  # recorded just after the status it tells of
    described = volctl(cp, "describe", "vs", name)
    assert "SnapshotReady" in described and f"boundVolumeSnapshotContentName: {content}" in described
