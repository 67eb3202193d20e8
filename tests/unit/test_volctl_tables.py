"""volctl's layout: kubectl's AGE, its tabwriter's column rules, and the get columns."""

from __future__ import annotations

import pytest

from volctl.columns import rows
from volctl.tables import age, describe_block, human_age, table, tabwrite
from volplane.resources.kinds import resolve

MIN, H, D = 60, 3600, 86400


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"), (4, "4s"), (119, "119s"),               # exact seconds for two minutes
        (120, "2m"), (5 * MIN + 3, "5m3s"),                # minutes and seconds below ten minutes
        (10 * MIN + 59, "10m"), (179 * MIN, "179m"),       # whole minutes below three hours
        (3 * H, "3h"), (3 * H + 5 * MIN, "3h5m"),          # hours and minutes below eight hours
        (8 * H + 30 * MIN, "8h"), (47 * H, "47h"),         # whole hours below two days
        (2 * D, "2d"), (2 * D + 5 * H, "2d5h"),            # days and hours below eight days
        (8 * D + 5 * H, "8d"), (400 * D, "400d"),          # whole days below two years
        (730 * D, "2y"), (731 * D, "2y1d"), (9 * 365 * D, "9y"),
        (-1, "0s"),                                        # a clock a second behind is "now"
        (-5, "<invalid>"),
    ],
)
def test_age_reads_as_kubectls(seconds: int, shown: str) -> None:
    assert human_age(seconds) == shown


def test_age_of_a_timestamp_counts_from_it_and_is_unknown_without_one() -> None:
    created = "2024-05-01T10:00:00Z"
    now = 1714557600.0 + 3 * H + 5 * MIN  # 2024-05-01T13:05:00Z
    assert age(created, now=now) == "3h5m"
    assert age(None) == age("not a time") == "<unknown>"


def test_columns_are_left_aligned_three_spaces_apart_and_last_cells_unpadded() -> None:
    out = table([["NAME", "CAPACITY", "AGE"], ["nfs-pv", "10Gi", "4s"], ["a-much-longer-name", "1Mi", "12d"]])
    assert out.split("\n") == [
        "NAME                 CAPACITY   AGE",
        "nfs-pv               10Gi       4s",
        "a-much-longer-name   1Mi        12d",
    ]


def test_a_narrow_column_is_still_six_wide_as_in_kubectl() -> None:
    assert table([["PV", "X"], ["", "y"]]).split("\n") == ["PV    X", "      y"]


def test_an_empty_cell_keeps_its_column() -> None:
    out = table([["NAME", "CLAIM", "AGE"], ["a", "", "1s"]]).split("\n")
    assert out[1].index("1s") == out[0].index("AGE")


def test_describe_aligns_each_block_and_nested_lines_start_a_new_one() -> None:
    text = "Name:\tnfs-pv\nAccess Modes:\tRWO\nSource:\n    Type:\tNFS\n    Server:\t10.0.0.1\nEvents:\t<none>"
    assert describe_block(text).split("\n") == [
        "Name:          nfs-pv",
        "Access Modes:  RWO",
        "Source:",
        "    Type:    NFS",
        "    Server:  10.0.0.1",
        "Events:      <none>",
    ]


def test_continuation_lines_align_under_their_key() -> None:
    lines = tabwrite([["Labels:", "a=1"], ["", "b=2"], ["Annotations:", "<none>"]], padding=2)
    assert lines == ["Labels:       a=1", "              b=2", "Annotations:  <none>"]


def test_pv_row_has_kubectls_header_and_short_access_modes_in_kubectls_order() -> None:
    pv = {
        "kind": "PersistentVolume", "metadata": {"name": "nfs-pv", "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"namespace": "default", "name": "nfs-pvc"}},
        "status": {"phase": "Bound"},
    }
    header, row = rows(resolve("pv"), [pv], now=1714557600.0 + 4)
    assert header == ["NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "REASON", "AGE"]
    assert row == ["nfs-pv", "10Gi", "RWO,RWX", "Retain", "Bound", "default/nfs-pvc", "", "<unset>", "", "4s"]


def test_an_unbound_claim_shows_no_capacity_and_its_annotated_class() -> None:
    claim = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "nfs", "namespace": "default", "annotations": {"volume.beta.kubernetes.io/storage-class": "example-nfs"}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Mi"}}, "storageClassName": "nfs-sc"},
    }
    _, row = rows(resolve("pvc"), [claim], with_kind=True, all_namespaces=True, now=0)
    assert row == ["default", "persistentvolumeclaim/nfs", "Pending", "", "", "", "example-nfs", "<unset>", "<unknown>"]


def test_pod_ready_counts_ready_volumes() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "web"}, "spec": {"nodeName": "node-1", "volumes": [{"name": "a"}, {"name": "b"}]},
           "status": {"phase": "Running", "volumes": [{"name": "a", "ready": True}, {"name": "b", "ready": False}]}}
    header, row = rows(resolve("pods"), [pod], wide=True, now=0)
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert row[:3] == ["web", "1/2", "Running"] and row[6] == "node-1"
