"""The volume manager's desired state of world: which pods want which volumes, through which plugin."""

from __future__ import annotations

from typing import Any

import pytest

from services.nodeagent.controllers.desired_state import PV, PVC, DesiredVolume, Unresolved, claim_keys, is_desired, resolve
from services.nodeagent.controllers.volumemanager import _index
from volplane.resources.kinds import Kind

Obj = dict[str, Any]


def pod(*volumes: Obj, node: str = "node-1", phase: str | None = None, deleting: bool = False) -> Obj:
    meta: Obj = {"name": "web", "namespace": "apps", "uid": "uid-1"}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    obj: Obj = {"kind": "Pod", "metadata": meta, "spec": {"nodeName": node, "volumes": list(volumes)}}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def claim_volume(name: str = "data", claim: str = "data", readonly: bool = False) -> Obj:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": readonly}}


def world(pvc: Obj | None = None, pv: Obj | None = None) -> Any:
    objects = {(PVC.name, "apps/data"): pvc, (PV.name, "pv-1"): pv}

    def get(kind: Kind, key: str) -> Obj | None:
        return objects.get((kind.name, key))

    return get


def bound_pvc(mode: str = "Filesystem") -> Obj:
    return {"metadata": {"name": "data", "namespace": "apps", "uid": "claim-uid"},
            "spec": {"volumeName": "pv-1", "volumeMode": mode}, "status": {"phase": "Bound"}}


def bound_pv(source: Obj, mode: str = "Filesystem", **spec: Any) -> Obj:
    return {"metadata": {"name": "pv-1"}, "spec": {
        "accessModes": ["ReadWriteMany", "ReadOnlyMany"], "volumeMode": mode, "mountOptions": ["noatime"],
        "claimRef": {"namespace": "apps", "name": "data", "uid": "claim-uid"}, **source, **spec}}


CSI_SOURCE = {"csi": {"driver": "csi.volplane.io", "volumeHandle": "vol-1", "fsType": "xfs", "volumeAttributes": {"k": "v"}}}


@pytest.mark.parametrize(("kwargs", "keep", "wanted"), [
    ({}, False, True),
    ({"node": "node-2"}, False, False),
    ({"deleting": True}, False, False),
    ({"phase": "Succeeded"}, False, False),
    ({"phase": "Failed"}, False, False),
    ({"phase": "Succeeded"}, True, True),
    ({"phase": "Running"}, False, True),
])
def test_a_pod_is_desired_when_scheduled_here_alive_and_not_terminated_unless_kept(kwargs: Obj, keep: bool, wanted: bool) -> None:
    assert is_desired(pod(**kwargs), "node-1", keep_terminated=keep) is wanted


def test_no_pod_is_not_desired() -> None:
    assert is_desired(None, "node-1", keep_terminated=True) is False


def test_bound_csi_claim_resolves_to_the_pv_with_capability_and_unique_name() -> None:
    volume = resolve(pod(claim_volume(readonly=True)), claim_volume(readonly=True), world(bound_pvc(), bound_pv(CSI_SOURCE)))
    assert isinstance(volume, DesiredVolume)
    assert (volume.plugin, volume.spec_name, volume.driver, volume.handle) == ("kubernetes.io/csi", "pv-1", "csi.volplane.io", "vol-1")
    assert volume.unique_name == "kubernetes.io/csi/csi.volplane.io^vol-1"
    assert volume.readonly and volume.access_mode == "ReadWriteMany" and volume.mount_options == ("noatime",)
    assert volume.source["fsType"] == "xfs" and not volume.block


def test_csi_read_only_in_the_pv_makes_the_volume_read_only() -> None:
    source = {"csi": {**CSI_SOURCE["csi"], "readOnly": True}}
    volume = resolve(pod(claim_volume()), claim_volume(), world(bound_pvc(), bound_pv(source)))
    assert isinstance(volume, DesiredVolume) and volume.readonly


def test_block_claim_resolves_to_a_block_volume() -> None:
    volume = resolve(pod(claim_volume()), claim_volume(), world(bound_pvc("Block"), bound_pv(CSI_SOURCE, "Block")))
    assert isinstance(volume, DesiredVolume) and volume.block


@pytest.mark.parametrize(("pvc", "pv", "says", "hard"), [
    (None, None, 'persistentvolumeclaim "data" not found', False),
    ({**bound_pvc(), "status": {"phase": "Pending"}}, None, "is not bound yet", False),
    (bound_pvc(), None, 'persistentvolume "pv-1" bound to claim "data" not found', False),
    (bound_pvc(), {**bound_pv(CSI_SOURCE), "spec": {**bound_pv(CSI_SOURCE)["spec"], "claimRef": {"namespace": "apps", "name": "other"}}}, "is not bound to claim", False),
    (bound_pvc("Block"), bound_pv(CSI_SOURCE), "volumeMode", True),
    (bound_pvc("Block"), bound_pv({"hostPath": {"path": "/x"}}, "Block"), "Block is not supported", True),
])
def test_a_claim_that_does_not_lead_to_a_volume_is_unresolved_with_the_reason(pvc: Obj | None, pv: Obj | None, says: str, hard: bool) -> None:
    result = resolve(pod(claim_volume()), claim_volume(), world(pvc, pv))
    assert isinstance(result, Unresolved) and says in result.message and result.hard is hard


@pytest.mark.parametrize(("key", "plugin"), [("nfs", "kubernetes.io/nfs"), ("hostPath", "kubernetes.io/host-path"), ("local", "kubernetes.io/local-volume")])
def test_in_tree_pv_sources_pick_their_plugin(key: str, plugin: str) -> None:
    volume = resolve(pod(claim_volume()), claim_volume(), world(bound_pvc(), bound_pv({key: {"path": "/srv", "server": "s"}})))
    assert isinstance(volume, DesiredVolume)
    assert (volume.plugin, volume.spec_name, volume.unique_name) == (plugin, "pv-1", f"{plugin}/pv-1")


def test_inline_host_path_and_nfs_need_no_claim_and_are_named_after_the_pod_volume() -> None:
    host = {"name": "logs", "hostPath": {"path": "/var/log", "type": "Directory"}}
    nfs = {"name": "share", "nfs": {"server": "10.0.0.1", "path": "/export", "readOnly": True}}
    a, b = (resolve(pod(host, nfs), v, world()) for v in (host, nfs))
    assert isinstance(a, DesiredVolume) and (a.plugin, a.spec_name, a.source["type"]) == ("kubernetes.io/host-path", "logs", "Directory")
    assert isinstance(b, DesiredVolume) and (b.plugin, b.spec_name, b.readonly) == ("kubernetes.io/nfs", "share", True)
    assert a.unique_name != b.unique_name


def test_other_inline_sources_are_refused_with_their_name() -> None:
    result = resolve(pod(), {"name": "scratch", "emptyDir": {}}, world())
    assert isinstance(result, Unresolved) and result.hard and '"emptyDir"' in result.message


def test_claim_keys_are_namespaced() -> None:
    assert claim_keys(pod(claim_volume(), claim_volume("b", "other"))) == {"apps/data", "apps/other"}


def test_an_index_entry_left_with_nothing_goes() -> None:
    """claim → pods and volume → claims hold what is here, not every claim ever seen."""
    index: dict[str, set[str]] = {}
    for i in range(100):
        _index(index, f"ns/claim-{i}", f"pod:ns/web-{i}", True)
        _index(index, f"ns/claim-{i}", f"pod:ns/job-{i}", True)
        _index(index, f"ns/claim-{i}", f"pod:ns/web-{i}", False)
        assert index[f"ns/claim-{i}"] == {f"pod:ns/job-{i}"}
        _index(index, f"ns/claim-{i}", f"pod:ns/job-{i}", False)
    _index(index, "ns/never-added", "pod:ns/x", False)
    assert index == {}
