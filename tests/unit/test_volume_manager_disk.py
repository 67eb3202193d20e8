"""The volume manager's actual state of world as the disk holds it, its pod status patches and
its NFS check — no mounts needed: records and directories in a temporary kubelet dir."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import services.nodeagent.controllers.volume_plugins as plugins
from services.nodeagent.controllers import kubelet_paths
from services.nodeagent.controllers.kubelet_paths import KubeletDir
from services.nodeagent.controllers.pod_status import VOLUMES_READY, status_patch, volume_entry
from services.nodeagent.controllers.volume_plugins import nfs_unsupported


def test_layout_follows_the_shared_node_paths(tmp_path: Path) -> None:
    paths = KubeletDir(tmp_path)
    sha = hashlib.sha256(b"vol-1").hexdigest()
    assert paths.global_mount("csi.volplane.io", "vol-1") == tmp_path / f"plugins/kubernetes.io/csi/csi.volplane.io/{sha}/globalmount"
    assert paths.pod_volume("u1", "kubernetes.io/csi", "pv-1", block=False) == tmp_path / "pods/u1/volumes/kubernetes.io~csi/pv-1"
    assert paths.pod_volume("u1", "kubernetes.io/csi", "pv-1", block=True) == tmp_path / "pods/u1/volumeDevices/kubernetes.io~csi/pv-1"


def test_a_record_written_before_its_mount_is_found_with_or_without_the_directory(tmp_path: Path) -> None:
    paths = KubeletDir(tmp_path)
    first = paths.pod_volume("u1", "kubernetes.io/csi", "pv-1", block=False)
    second = paths.pod_volume("u2", "kubernetes.io/host-path", "logs", block=False)
    paths.write_pod_volume_data(first, {"podNamespace": "apps", "podName": "web", "uniqueName": "kubernetes.io/csi/d^vol-1"})
    second.mkdir(parents=True)  # a directory whose record a crash never wrote
    found = {v.path: v for v in paths.pod_volumes()}
    assert set(found) == {first, second}
    assert found[first].pod_key == "apps/web" and found[first].unique_name == "kubernetes.io/csi/d^vol-1"
    assert (found[first].plugin, found[first].pod_uid, found[first].block) == ("kubernetes.io/csi", "u1", False)
    assert found[second].pod_key == "" and found[second].data == {}


def test_a_half_written_record_names_its_volume_and_goes_with_it(tmp_path: Path) -> None:
    paths = KubeletDir(tmp_path)
    target = paths.pod_volume("u1", "kubernetes.io/csi", "pv.tmp", block=False)
    target.parent.mkdir(parents=True)
    paths.data_of(target).with_name(target.name + ".vol_data.json.tmp").write_text("{")
    [volume] = paths.pod_volumes()
    assert volume.path == target and volume.data == {}
    paths.remove_pod_volume(volume)
    assert not (tmp_path / "pods").exists() or not any((tmp_path / "pods").iterdir())


def test_removing_a_pod_volume_removes_its_record_and_the_empty_pod_tree_only(tmp_path: Path) -> None:
    paths = KubeletDir(tmp_path)
    a = paths.pod_volume("u1", "kubernetes.io/csi", "pv-1", block=False)
    b = paths.pod_volume("u1", "kubernetes.io/host-path", "logs", block=False)
    for target in (a, b):
        paths.write_pod_volume_data(target, {"podName": "web"})
        target.mkdir()
    (b / "data").write_text("never removed")
    volumes = {v.path: v for v in paths.pod_volumes()}
    paths.remove_pod_volume(volumes[a])
    assert not a.exists() and not paths.data_of(a).exists() and (tmp_path / "pods/u1").exists()
    paths.remove_pod_volume(volumes[b])
    assert (b / "data").read_text() == "never removed"  # only empty directories are removed


def test_devices_are_found_by_their_global_directory_and_removed_with_their_record(tmp_path: Path) -> None:
    paths = KubeletDir(tmp_path)
    gm = paths.global_mount("csi.volplane.io", "vol-1")
    paths.write_device_data(gm, {"uniqueName": "kubernetes.io/csi/csi.volplane.io^vol-1"})
    gm.mkdir()
    [device] = paths.devices()
    assert (device.path, device.driver, device.unique_name) == (gm, "csi.volplane.io", "kubernetes.io/csi/csi.volplane.io^vol-1")
    paths.remove_device(device)
    assert paths.devices() == [] and not gm.parent.parent.exists()


def test_removed_records_leave_nothing_in_the_read_cache(tmp_path: Path) -> None:
    """Records are read through a cache (each is read once): a pod volume or device removed
    takes its entry with it, so the cache holds what is on the disk, not every pod ever mounted."""
    paths = KubeletDir(tmp_path)
    for i in range(50):
        target = paths.pod_volume(f"u{i}", "kubernetes.io/csi", "pv-1", block=False)
        gm = paths.global_mount("csi.volplane.io", f"vol-{i}")
        paths.write_pod_volume_data(target, {"podName": f"web-{i}"})
        paths.write_device_data(gm, {"uniqueName": f"kubernetes.io/csi/csi.volplane.io^vol-{i}"})
        target.mkdir()
        gm.mkdir()
        assert paths.read_pod_volume_data(target) and paths.read_device_data(gm)  # cached now
        [volume] = [v for v in paths.pod_volumes() if v.path == target]
        [device] = [d for d in paths.devices() if d.path == gm]
        paths.remove_pod_volume(volume)
        paths.remove_device(device)
    assert not any(str(path).startswith(str(tmp_path)) for path in kubelet_paths._RECORDS)


def test_status_patch_is_none_when_converged_and_keeps_other_conditions() -> None:
    volumes = [volume_entry("data", True, "/p", "")]
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}
    patch = status_patch(pod, volumes)
    assert patch is not None
    conditions = patch["status"]["conditions"]
    assert conditions[0] == {"type": "PodScheduled", "status": "True"}
    assert conditions[1]["type"] == VOLUMES_READY and conditions[1]["status"] == "True"
    assert status_patch({"status": patch["status"]}, volumes) is None


def test_a_volume_not_ready_makes_the_condition_false_with_its_message() -> None:
    patch = status_patch({}, [volume_entry("a", True, "/a", ""), volume_entry("b", False, "", "NFS is not supported")])
    assert patch is not None
    [condition] = patch["status"]["conditions"]
    assert condition["status"] == "False" and condition["message"] == "NFS is not supported"


def test_nfs_is_unsupported_without_nfs_in_proc_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "filesystems"
    fake.write_text("nodev\tsysfs\n\text4\n")
    monkeypatch.setattr(plugins.glob, "glob", lambda pattern: [])  # no nfs module to load either
    assert nfs_unsupported(fake) == "NFS is not supported on this node (no nfs in /proc/filesystems)"
