"""external-snapshotter's kinds without a server: how they are spelled, validated (the
field named on error), defaulted, and printed by volctl in their CRDs' columns."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from services.provisioner.controllers.group_snapshot_controller import format_selector, member_names
from volctl.columns import rows
from volctl.describe import describe
from volctl.refs import type_name
from volplane.errors import InvalidArgument
from volplane.resources.kinds import resolve
from volplane.resources.schema import validate

Obj = dict[str, Any]
CREATED = "2024-05-01T10:00:00Z"
NOW = 1714557600.0 + 90  # ninety seconds after CREATED
SNAP = "snapshot.storage.k8s.io/v1"
GROUP = "groupsnapshot.storage.k8s.io/v1"


def claim(**spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "restored"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, **spec}}


def refused(doc: Obj) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validate(doc)
    return caught.value.message


@pytest.mark.parametrize(("spelling", "kind", "group"), [
    ("vs", "VolumeSnapshot", "volumesnapshot.snapshot.storage.k8s.io"),
    ("volumesnapshots.snapshot.storage.k8s.io", "VolumeSnapshot", "volumesnapshot.snapshot.storage.k8s.io"),
    ("vsc", "VolumeSnapshotContent", "volumesnapshotcontent.snapshot.storage.k8s.io"),
    ("vscs", "VolumeSnapshotContent", "volumesnapshotcontent.snapshot.storage.k8s.io"),
    ("vsclass", "VolumeSnapshotClass", "volumesnapshotclass.snapshot.storage.k8s.io"),
    ("vsclasses", "VolumeSnapshotClass", "volumesnapshotclass.snapshot.storage.k8s.io"),
    ("vgs", "VolumeGroupSnapshot", "volumegroupsnapshot.groupsnapshot.storage.k8s.io"),
    ("vgsc", "VolumeGroupSnapshotContent", "volumegroupsnapshotcontent.groupsnapshot.storage.k8s.io"),
    ("vgsclass", "VolumeGroupSnapshotClass", "volumegroupsnapshotclass.groupsnapshot.storage.k8s.io"),
])
def test_kubectl_s_spellings_name_the_snapshot_kinds(spelling: str, kind: str, group: str) -> None:
    assert resolve(spelling).name == kind
    assert type_name(resolve(spelling)) == group


def test_a_valid_snapshot_class_keeps_its_fields_at_the_top() -> None:
    cls = validate({"apiVersion": SNAP, "kind": "VolumeSnapshotClass", "metadata": {"name": "c"}, "driver": "csi.volplane.io",
                    "deletionPolicy": "Retain", "parameters": {"a": "b"}})
    assert (cls["driver"], cls["deletionPolicy"], cls["parameters"]) == ("csi.volplane.io", "Retain", {"a": "b"})


@pytest.mark.parametrize(("doc", "message"), [
    ({"apiVersion": SNAP, "kind": "VolumeSnapshotClass", "metadata": {"name": "c"}, "driver": "csi.volplane.io"},
     'VolumeSnapshotClass "c": deletionPolicy: Field required'),
    ({"apiVersion": SNAP, "kind": "VolumeSnapshotClass", "metadata": {"name": "c"}, "driver": "a/b", "deletionPolicy": "Delete"},
     "VolumeSnapshotClass \"c\": driver: 'a/b' is not a CSI driver name"),
    ({"apiVersion": SNAP, "kind": "VolumeSnapshot", "metadata": {"name": "s"},
      "spec": {"source": {"persistentVolumeClaimName": "a", "volumeSnapshotContentName": "b"}}},
     'VolumeSnapshot "s": spec.source: exactly one of persistentVolumeClaimName and volumeSnapshotContentName must be set'),
    ({"apiVersion": SNAP, "kind": "VolumeSnapshot", "metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "A"}}},
     "VolumeSnapshot \"s\": spec.source.persistentVolumeClaimName: 'A' is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"),
    ({"apiVersion": SNAP, "kind": "VolumeSnapshot", "metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "a"}, "volumeSnapshotClassName": ""}},
     'VolumeSnapshot "s": spec.volumeSnapshotClassName: volumeSnapshotClassName must not be the empty string when set'),
    ({"apiVersion": SNAP, "kind": "VolumeSnapshotContent", "metadata": {"name": "c"},
      "spec": {"source": {}, "driver": "d", "deletionPolicy": "Delete", "volumeSnapshotRef": {"name": "s", "namespace": "default"}}},
     'VolumeSnapshotContent "c": spec.source: exactly one of volumeHandle and snapshotHandle must be set'),
    ({"apiVersion": SNAP, "kind": "VolumeSnapshotContent", "metadata": {"name": "c"},
      "spec": {"source": {"volumeHandle": "v"}, "driver": "d", "volumeSnapshotRef": {"name": "s", "namespace": "default"}}},
     'VolumeSnapshotContent "c": spec.deletionPolicy: Field required'),
    ({"apiVersion": GROUP, "kind": "VolumeGroupSnapshotContent", "metadata": {"name": "c"},
      "spec": {"source": {"volumeHandles": []}, "driver": "d", "deletionPolicy": "Delete", "volumeGroupSnapshotRef": {"name": "g", "namespace": "default"}}},
     'VolumeGroupSnapshotContent "c": spec.source.volumeHandles: List should have at least 1 item after validation, not 0'),
    ({"apiVersion": "snapshot.storage.k8s.io/v1beta1", "kind": "VolumeSnapshot", "metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "a"}}},
     "VolumeSnapshot \"s\": apiVersion: 'snapshot.storage.k8s.io/v1beta1' is not 'snapshot.storage.k8s.io/v1'"),
])
def test_an_invalid_snapshot_object_is_refused_naming_its_field(doc: Obj, message: str) -> None:
    assert refused(doc) == message


@pytest.mark.parametrize("version", ["groupsnapshot.storage.k8s.io/v1beta1", "groupsnapshot.storage.k8s.io/v1beta2", GROUP])
def test_group_snapshot_documents_of_the_beta_versions_are_stored_in_the_newest(version: str) -> None:
    doc = validate({"apiVersion": version, "kind": "VolumeGroupSnapshot", "metadata": {"name": "g"}, "spec": {"source": {"selector": {"matchLabels": {"a": "b"}}}}})
    assert doc["apiVersion"] == GROUP and doc["metadata"]["namespace"] == "default"


def test_a_claim_s_data_source_is_copied_to_its_ref_and_back_as_the_api_server_does() -> None:
    source = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}
    assert validate(claim(dataSource=source))["spec"]["dataSourceRef"] == source
    assert validate(claim(dataSourceRef=source))["spec"]["dataSource"] == source
    clone = {"kind": "PersistentVolumeClaim", "name": "src"}
    assert validate(claim(dataSourceRef=clone))["spec"]["dataSource"] == clone
    # A ref into another namespace is not copied into dataSource (which has none).
    assert "dataSource" not in validate(claim(dataSourceRef={**source, "namespace": "other"}))["spec"]


def test_a_claim_s_data_source_is_checked() -> None:
    assert refused(claim(dataSource={"kind": "VolumeSnapshot", "name": "s"})) == (
        "PersistentVolumeClaim \"restored\": spec.dataSource.kind: 'VolumeSnapshot': must be 'PersistentVolumeClaim' when referencing the default apiGroup")
    assert refused(claim(dataSource={"kind": "PersistentVolumeClaim", "name": "a"}, dataSourceRef={"kind": "PersistentVolumeClaim", "name": "b"})) == (
        'PersistentVolumeClaim "restored": spec.dataSource: must match dataSourceRef')
    assert refused(claim(dataSource={"kind": "PersistentVolumeClaim"})) == 'PersistentVolumeClaim "restored": spec.dataSource.name: Field required'


def test_a_group_s_members_are_named_as_external_snapshotter_names_them() -> None:
    vs, vsc = member_names("uid-1", "vol-1")
    digest = hashlib.sha256(b"uid-1vol-1").hexdigest()
    assert (vs, vsc) == (f"snapshot-{digest}", f"snapcontent-{digest}")


def test_selectors_print_as_kubernetes_prints_them() -> None:
    assert format_selector({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"
    assert format_selector({"matchExpressions": [{"key": "t", "operator": "In", "values": ["x", "y"]}, {"key": "gone", "operator": "DoesNotExist"}]}) == (
        "t in (x,y),!gone")
    assert format_selector({}) == "<none>"


# --- volctl get: the CRDs' additionalPrinterColumns ------------------------------------------------


def test_volume_snapshots_print_in_the_crd_s_columns_empty_where_a_field_is_not_set() -> None:
    ready = {"apiVersion": SNAP, "kind": "VolumeSnapshot", "metadata": {"name": "snap", "namespace": "default", "creationTimestamp": CREATED},
             "spec": {"source": {"persistentVolumeClaimName": "data"}, "volumeSnapshotClassName": "fast"},
             "status": {"readyToUse": True, "restoreSize": "64Mi", "boundVolumeSnapshotContentName": "snapcontent-1", "creationTime": CREATED}}
    new = {"apiVersion": SNAP, "kind": "VolumeSnapshot", "metadata": {"name": "imported", "namespace": "default", "creationTimestamp": CREATED},
           "spec": {"source": {"volumeSnapshotContentName": "pre"}}}
    assert rows(resolve("vs"), [ready, new], now=NOW) == [
        ["NAME", "READYTOUSE", "SOURCEPVC", "SOURCESNAPSHOTCONTENT", "RESTORESIZE", "SNAPSHOTCLASS", "SNAPSHOTCONTENT", "CREATIONTIME", "AGE"],
        ["snap", "true", "data", "", "64Mi", "fast", "snapcontent-1", "90s", "90s"],
        ["imported", "", "", "pre", "", "", "", "", "90s"],
    ]
    assert rows(resolve("vs"), [ready], now=NOW, all_namespaces=True)[0][:2] == ["NAMESPACE", "NAME"]


def test_contents_and_classes_print_in_their_crds_columns() -> None:
    content = {"apiVersion": SNAP, "kind": "VolumeSnapshotContent", "metadata": {"name": "snapcontent-1", "creationTimestamp": CREATED},
               "spec": {"source": {"volumeHandle": "v"}, "driver": "csi.volplane.io", "deletionPolicy": "Delete", "volumeSnapshotClassName": "fast",
                        "volumeSnapshotRef": {"name": "snap", "namespace": "default"}},
               "status": {"readyToUse": False, "restoreSize": 67108864}}
    assert rows(resolve("vsc"), [content], now=NOW) == [
        ["NAME", "READYTOUSE", "RESTORESIZE", "DELETIONPOLICY", "DRIVER", "VOLUMESNAPSHOTCLASS", "VOLUMESNAPSHOT", "VOLUMESNAPSHOTNAMESPACE", "AGE"],
        ["snapcontent-1", "false", "67108864", "Delete", "csi.volplane.io", "fast", "snap", "default", "90s"],
    ]
    cls = {"apiVersion": SNAP, "kind": "VolumeSnapshotClass", "metadata": {"name": "fast", "creationTimestamp": CREATED},
           "driver": "csi.volplane.io", "deletionPolicy": "Retain"}
    assert rows(resolve("vsclass"), [cls], now=NOW) == [["NAME", "DRIVER", "DELETIONPOLICY", "AGE"], ["fast", "csi.volplane.io", "Retain", "90s"]]
    group = {"apiVersion": GROUP, "kind": "VolumeGroupSnapshot", "metadata": {"name": "g", "namespace": "default", "creationTimestamp": CREATED},
             "spec": {"source": {"selector": {"matchLabels": {"app": "db"}}}, "volumeGroupSnapshotClassName": "groups"},
             "status": {"readyToUse": True, "boundVolumeGroupSnapshotContentName": "groupsnapcontent-1", "creationTime": CREATED}}
    assert rows(resolve("vgs"), [group], now=NOW) == [
        ["NAME", "READYTOUSE", "VOLUMEGROUPSNAPSHOTCLASS", "VOLUMEGROUPSNAPSHOTCONTENT", "CREATIONTIME", "AGE"],
        ["g", "true", "groups", "groupsnapcontent-1", "90s", "90s"],
    ]
    group_content = {"apiVersion": GROUP, "kind": "VolumeGroupSnapshotContent", "metadata": {"name": "groupsnapcontent-1", "creationTimestamp": CREATED},
                     "spec": {"source": {"volumeHandles": ["a"]}, "driver": "csi.volplane.io", "deletionPolicy": "Delete",
                              "volumeGroupSnapshotClassName": "groups", "volumeGroupSnapshotRef": {"name": "g", "namespace": "default"}}}
    assert rows(resolve("vgsc"), [group_content], now=NOW) == [
        ["NAME", "READYTOUSE", "DELETIONPOLICY", "DRIVER", "VOLUMEGROUPSNAPSHOTCLASS", "VOLUMEGROUPSNAPSHOTNAMESPACE", "VOLUMEGROUPSNAPSHOT", "AGE"],
        ["groupsnapcontent-1", "", "Delete", "csi.volplane.io", "groups", "default", "g", "90s"],
    ]


def test_describe_shows_a_class_s_top_level_fields_and_a_snapshot_s_spec_and_status() -> None:
    cls = {"apiVersion": SNAP, "kind": "VolumeSnapshotClass", "metadata": {"name": "fast", "creationTimestamp": CREATED},
           "driver": "csi.volplane.io", "deletionPolicy": "Retain", "parameters": {"tier": "gold"}}
    text = describe(cls, [], now=NOW)
    assert "driver:" in text and "csi.volplane.io" in text and "deletionPolicy:" in text and "tier: gold" in text
    snap = {"apiVersion": SNAP, "kind": "VolumeSnapshot", "metadata": {"name": "snap", "namespace": "default", "creationTimestamp": CREATED},
            "spec": {"source": {"persistentVolumeClaimName": "data"}}, "status": {"readyToUse": True}}
    text = describe(snap, [], now=NOW)
    assert "persistentVolumeClaimName: data" in text and "readyToUse: true" in text
