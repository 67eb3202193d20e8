"""The PV controller against a real stack: one test per rule of the seed (BRIEF §2).

Each test uses its own StorageClass name (or, for class-less objects, its own stack) so
that no other test's volumes can match its claims.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.launcher import Stack
from tests.conftest import needs_root
from tests.controlplane.conftest import Api, annotations, phase, unique
from tests.controlplane.direct import direct_patch
from volplane.csi import resources_pb2 as pb

pytestmark = needs_root
Obj = dict[str, Any]


def pv(name: str, size: str, cls: str, *, policy: str = "Retain", path: str | None = None, modes: tuple[str, ...] = ("ReadWriteOnce",), **spec: Any) -> Obj:
    body: Obj = {"capacity": {"storage": size}, "accessModes": list(modes), "persistentVolumeReclaimPolicy": policy, "storageClassName": cls}
    body.update(spec)
    if not any(k in body for k in ("nfs", "hostPath", "local", "csi")):
        body["hostPath"] = {"path": path or f"/tmp/{name}"}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": body}


def pvc(name: str, size: str, cls: str | None, *, modes: tuple[str, ...] = ("ReadWriteOnce",), **spec: Any) -> Obj:
    body: Obj = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if cls is not None:
        body["storageClassName"] = cls
    body.update(spec)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": body}


def sc(name: str, provisioner: str, **fields: Any) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": provisioner, **fields}


def bound(obj: Obj | None) -> bool:
    return phase(obj) == "Bound"


def reasons(api: Api, kind: str, name: str) -> list[str]:
    return [e["reason"] for e in api.events(kind, name)]


def wait_event(api: Api, kind: str, name: str, reason: str, timeout: float = 20.0) -> Obj:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in api.events(kind, name):
            if e["reason"] == reason:
                return e
        time.sleep(0.2)
    raise AssertionError(f"no {reason} event on {kind}/{name}; events: {api.events(kind, name)}")


SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"


@pytest.fixture(scope="module")
def seed_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stack of its own: the seed's class-less objects must meet no other test's."""
    s = Stack(tmp_path_factory.mktemp("seed"))
    s.start()
    a = Api(s.api_endpoint)
    yield s, a
    a.close()
    s.stop()


def test_seed_static_example_binds_with_the_seeds_writes_in_order(seed_stack: Any) -> None:
    _stack, api = seed_stack
    api.apply((SEED / "static-pv.yaml").read_text())
    api.apply((SEED / "static-pvc.yaml").read_text())
    # Bound is the fifth write; the claim's annotations are the sixth and last.
    claim = api.wait("pvc", "nfs-pvc", lambda o: bound(o) and "pv.kubernetes.io/bind-completed" in annotations(o))
    volume = api.wait("pv", "nfs-pv", bound)
    assert claim["spec"]["volumeName"] == "nfs-pv"
    assert claim["status"]["capacity"] == {"storage": "10Gi"} and claim["status"]["accessModes"] == ["ReadWriteOnce"]
    assert annotations(claim) == {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}
    assert annotations(volume) == {"pv.kubernetes.io/bound-by-controller": "yes"}
    assert volume["spec"]["claimRef"]["name"] == "nfs-pvc" and volume["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
    # The six writes, in the seed's order, one event each.
    entries = sorted(
        ((seq_of(api, kind, name, patch), kind, patch) for kind, name in (("pv", "nfs-pv"), ("pvc", "nfs-pvc")) for patch in bind_patches(api, kind, name)),
        key=lambda t: t[0],
    )
    assert [(kind, sorted(_paths(patch))) for _, kind, patch in entries] == [
        ("pv", ["spec.claimRef"]),
        ("pv", ["status.phase"]),
        ("pv", ["metadata.annotations.pv.kubernetes.io/bound-by-controller"]),
        ("pvc", ["spec.volumeName"]),
        ("pvc", ["status.accessModes", "status.capacity", "status.phase"]),
        ("pvc", ["metadata.annotations.pv.kubernetes.io/bind-completed", "metadata.annotations.pv.kubernetes.io/bound-by-controller"]),
    ]


def bind_patches(api: Api, kind: str, name: str) -> list[Obj]:
    return [e["patch"] for _, e in api.history(kind, name) if e.get("reason") == "bind"]


def seq_of(api: Api, kind: str, name: str, patch: Obj) -> int:
    """The log position of the bind write ``patch`` on the object."""
    for entry in api.stub.History(pb.ObjectRef(kind=kind, name=name)).entries:
        event = json.loads(entry.json)
        if event.get("patch") == patch and event.get("reason") == "bind":
            return entry.seq
    raise AssertionError(patch)


def _paths(patch: Obj, prefix: str = "") -> list[str]:
    out = []
    for key, value in patch.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not key.endswith("claimRef") and not key.endswith("capacity"):
            out += _paths(value, path + ".")
        else:
            out.append(path)
    return out


def test_seed_static_release_retain_then_claim_ref_removed_makes_it_available(seed_stack: Any) -> None:
    _stack, api = seed_stack
    api.wait("pv", "nfs-pv", bound)
    api.delete("pvc", "nfs-pvc")
    released = api.wait("pv", "nfs-pv", lambda o: phase(o) == "Released")
    assert released["spec"]["claimRef"]["name"] == "nfs-pvc"  # Retain keeps the volume and its claimRef
    time.sleep(1.0)
    assert phase(api.get("pv", "nfs-pv")) == "Released"
    # A user removes the claimRef (a merge patch with null): Available again.
    api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "nfs-pv"}, "spec": {"claimRef": None}})
    assert "claimRef" not in api.wait("pv", "nfs-pv", lambda o: phase(o) == "Available")["spec"]


def test_seed_dynamic_example_binds_through_the_claims_annotated_class(seed_stack: Any) -> None:
    _stack, api = seed_stack
    api.apply((SEED / "dynamic-sc.yaml").read_text())
    api.apply((SEED / "dynamic-pvc.yaml").read_text())
    # Its class is "example-nfs" (the beta annotation wins): missing until volplane.yaml.
    wait_event(api, "pvc", "nfs", "ProvisioningFailed")
    assert phase(api.get("pvc", "nfs")) == "Pending"
    api.apply((SEED / "volplane.yaml").read_text())
    claim = api.wait("pvc", "nfs", bound)
    volume = api.get("pv", claim["spec"]["volumeName"])
    assert volume is not None and claim["spec"]["volumeName"] == f"pvc-{claim['metadata']['uid']}"
    assert volume["spec"]["capacity"] == {"storage": "10Mi"} and volume["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete" and volume["spec"]["claimRef"]["name"] == "nfs"
    assert annotations(volume) == {"pv.kubernetes.io/bound-by-controller": "yes", "pv.kubernetes.io/provisioned-by": "kubernetes.io/host-path"}
    assert annotations(claim)["volume.beta.kubernetes.io/storage-provisioner"] == "kubernetes.io/host-path"
    assert Path(volume["spec"]["hostPath"]["path"]).is_dir()
    assert "ProvisioningSucceeded" in reasons(api, "pvc", "nfs")
    # Delete: the in-tree deleter removes the directory, then the PV goes.
    api.delete("pvc", "nfs")
    api.wait("pv", volume["metadata"]["name"], lambda o: o is None)
    assert not Path(volume["spec"]["hostPath"]["path"]).exists()


def test_smallest_matching_volume_wins(api: Api) -> None:
    cls = unique("small")
    names = {size: unique("pv") for size in ("1Gi", "5Gi", "3Gi", "20Gi")}
    for size, name in names.items():
        api.apply(pv(name, size, cls))
    # The controller binds a claim to the best volume it knows of, as Kubernetes' does: wait
    # until it has seen all four (Available), or a claim may meet a slow informer's three.
    for name in names.values():
        api.wait("pv", name, lambda o: phase(o) == "Available")
    claim = unique("c")
    api.apply(pvc(claim, "2Gi", cls))
    assert api.wait("pvc", claim, bound)["spec"]["volumeName"] == names["3Gi"]


def test_filters_volume_mode_selector_and_access_modes(api: Api) -> None:
    cls = unique("filters")
    block, plain, labelled, rwx = (unique(p) for p in ("block", "plain", "labelled", "rwx"))
    api.apply(pv(block, "1Gi", cls, volumeMode="Block", local={"path": "/dev/null"}, nodeAffinity={"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-1"]}]}]}}))
    api.apply(pv(plain, "2Gi", cls))
    api.apply({**pv(labelled, "4Gi", cls), "metadata": {"name": labelled, "labels": {"tier": "gold"}}})
    api.apply(pv(rwx, "8Gi", cls, modes=("ReadWriteOnce", "ReadWriteMany")))
    c1, c2, c3 = unique("c"), unique("c"), unique("c")
    api.apply(pvc(c1, "1Gi", cls, selector={"matchLabels": {"tier": "gold"}}))
    assert api.wait("pvc", c1, bound)["spec"]["volumeName"] == labelled
    api.apply(pvc(c2, "1Gi", cls, modes=("ReadWriteMany",)))
    assert api.wait("pvc", c2, bound)["spec"]["volumeName"] == rwx
    api.apply(pvc(c3, "1Gi", cls, volumeMode="Block"))
    assert api.wait("pvc", c3, bound)["spec"]["volumeName"] == block
    assert phase(api.get("pv", plain)) == "Available"


def test_pre_bound_pairs_are_honoured(api: Api) -> None:
    cls = unique("prebound")
    small, big, other = unique("small"), unique("big"), unique("other")
    api.apply(pv(small, "1Gi", cls))
    api.apply(pv(big, "9Gi", cls))
    by_claim = unique("c")
    api.apply(pvc(by_claim, "1Gi", cls, volumeName=big))
    claim = api.wait("pvc", by_claim, bound)
    assert claim["spec"]["volumeName"] == big
    # The user set volumeName: the claim is not "bound by controller"; the PV is.
    assert "pv.kubernetes.io/bound-by-controller" not in annotations(claim)
    assert annotations(api.get("pv", big))["pv.kubernetes.io/bound-by-controller"] == "yes"
    by_volume = unique("c")
    api.apply({**pv(other, "5Gi", cls), "spec": {**pv(other, "5Gi", cls)["spec"], "claimRef": {"namespace": "default", "name": by_volume}}})
    api.apply(pvc(by_volume, "1Gi", cls))
    assert api.wait("pvc", by_volume, bound)["spec"]["volumeName"] == other
    assert "pv.kubernetes.io/bound-by-controller" not in annotations(api.get("pv", other))


def test_claim_without_class_or_match_waits_pending(api: Api) -> None:
    claim = unique("c")
    api.apply(pvc(claim, "1Ti", None, modes=("ReadOnlyMany",)))
    wait_event(api, "pvc", claim, "FailedBinding")
    assert phase(api.get("pvc", claim)) == "Pending"


def test_immediate_class_binds_without_a_consumer(api: Api) -> None:
    cls = unique("now")
    api.apply(sc(cls, "kubernetes.io/no-provisioner", volumeBindingMode="Immediate"))
    volume = unique("pv")
    api.apply(pv(volume, "1Gi", cls))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    assert api.wait("pvc", claim, bound)["spec"]["volumeName"] == volume


def test_no_provisioner_class_never_provisions(api: Api) -> None:
    cls = unique("none")
    api.apply(sc(cls, "kubernetes.io/no-provisioner"))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    wait_event(api, "pvc", claim, "ProvisioningFailed")
    assert phase(api.get("pvc", claim)) == "Pending"
    assert not [v for v in api.list("pv") if (v["spec"].get("claimRef") or {}).get("name") == claim]


def test_wait_for_first_consumer_delays_until_a_pod_picks_a_node(api: Api) -> None:
    cls = unique("wffc")
    api.apply(sc(cls, "kubernetes.io/no-provisioner", volumeBindingMode="WaitForFirstConsumer"))
    volume = unique("pv")
    affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-2"]}]}]}}
    api.apply(pv(volume, "1Gi", cls, nodeAffinity=affinity))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    wait_event(api, "pvc", claim, "WaitForFirstConsumer")
    assert phase(api.get("pvc", claim)) == "Pending" and phase(api.get("pv", volume)) == "Available"
    for node in ("node-1", "node-2"):
        api.wait("node", node, lambda o: o is not None, timeout=60)
    pod = unique("pod")
    api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod}, "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
    scheduled = api.wait("pod", pod, lambda o: bool(o and o["spec"].get("nodeName")))
    assert scheduled["spec"]["nodeName"] == "node-2"  # the only node the volume admits
    claim_obj = api.wait("pvc", claim, bound)
    assert annotations(claim_obj)["volume.kubernetes.io/selected-node"] == "node-2"
    assert claim_obj["spec"]["volumeName"] == volume
    api.delete("pod", pod)


def test_host_path_provisioning_and_recycle(cp: Stack, api: Api) -> None:
    cls = unique("recycle")
    api.apply(sc(cls, "kubernetes.io/host-path", reclaimPolicy="Recycle"))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    volume = api.get("pv", api.wait("pvc", claim, bound)["spec"]["volumeName"])
    assert volume is not None
    path = Path(volume["spec"]["hostPath"]["path"])
    assert path.parent == cp.run_dir / "hostpath"
    (path / "junk").write_text("x")
    (path / "dir").mkdir()
    api.delete("pvc", claim)
    recycled = api.wait("pv", volume["metadata"]["name"], lambda o: phase(o) == "Available")
    assert "claimRef" not in recycled["spec"] and path.is_dir() and list(path.iterdir()) == []
    assert "VolumeRecycled" in reasons(api, "pv", volume["metadata"]["name"])


def test_block_claims_are_refused_by_host_path(api: Api) -> None:
    cls = unique("hpblock")
    api.apply(sc(cls, "kubernetes.io/host-path"))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls, volumeMode="Block"))
    event = wait_event(api, "pvc", claim, "ProvisioningFailed")
    assert "block" in event["message"]
    assert phase(api.get("pvc", claim)) == "Pending"


@pytest.mark.parametrize(
    ("policy", "source", "reason"),
    [
        ("Delete", {"nfs": {"server": "192.0.2.1", "path": "/x"}}, "VolumeFailedDelete"),
        ("Recycle", {"nfs": {"server": "192.0.2.1", "path": "/x"}}, "VolumeFailedRecycle"),
        ("Scrub", {}, "VolumeUnknownReclaimPolicy"),
        ("Delete", {"hostPath": {"path": "/etc"}}, "VolumeFailedDelete"),
    ],
)
def test_failed_reclaim_marks_the_volume_failed(api: Api, policy: str, source: Obj, reason: str) -> None:
    cls = unique("fail")
    volume = unique("pv")
    api.apply(pv(volume, "1Gi", cls, policy=policy, **source))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    api.wait("pvc", claim, bound)
    api.delete("pvc", claim)
    failed = api.wait("pv", volume, lambda o: phase(o) == "Failed")
    assert failed["status"]["reason"] == reason
    assert reason in reasons(api, "pv", volume)
    assert Path("/etc/passwd").exists()


def test_volume_deleted_under_bound_claim_makes_it_lost_until_it_returns(api: Api) -> None:
    cls = unique("lost")
    volume = unique("pv")
    api.apply(pv(volume, "1Gi", cls))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    api.wait("pvc", claim, bound)
    api.delete("pv", volume)
    api.wait("pvc", claim, lambda o: phase(o) == "Lost")
    assert "ClaimLost" in reasons(api, "pvc", claim)
    api.apply(pv(volume, "1Gi", cls))  # a PV of the same name comes back
    assert api.wait("pvc", claim, bound)["spec"]["volumeName"] == volume
    assert api.wait("pv", volume, bound)["spec"]["claimRef"]["name"] == claim


def test_dynamic_csi_provisioning_and_delete(cp: Stack, api: Api) -> None:
    cls = unique("csi")
    api.apply(sc(cls, "csi.volplane.io"))
    claim = unique("c")
    api.apply(pvc(claim, "64Mi", cls))
    bound_claim = api.wait("pvc", claim, bound, timeout=60)
    ann = annotations(bound_claim)
    assert ann["volume.beta.kubernetes.io/storage-provisioner"] == "csi.volplane.io"
    assert ann["volume.kubernetes.io/storage-provisioner"] == "csi.volplane.io"
    volume = api.get("pv", bound_claim["spec"]["volumeName"])
    assert volume is not None and annotations(volume)["pv.kubernetes.io/provisioned-by"] == "csi.volplane.io"
    handle = volume["spec"]["csi"]["volumeHandle"]
    image = cp.pool_dir("shared") / f"{handle}.img"
    assert image.exists() and volume["spec"]["capacity"] == {"storage": "64Mi"}
    api.delete("pvc", claim)
    api.wait("pv", volume["metadata"]["name"], lambda o: o is None, timeout=60)
    assert not image.exists()  # CSI DeleteVolume ran before the PV went


def test_claims_of_another_provisioner_are_left_alone(api: Api) -> None:
    cls = unique("other")
    api.apply(sc(cls, "other.example.com/x"))
    claim = unique("c")
    api.apply(pvc(claim, "1Gi", cls))
    wait_event(api, "pvc", claim, "ExternalProvisioning")
    assert annotations(api.get("pvc", claim))["volume.beta.kubernetes.io/storage-provisioner"] == "other.example.com/x"
    time.sleep(1.0)
    assert "Provisioning" not in reasons(api, "pvc", claim)
    assert phase(api.get("pvc", claim)) == "Pending"
    # A CSIDriver that answers to that name takes it over.
    api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "csi.volplane.io", "annotations": {"volplane.io/provisioner-names": "other.example.com/x"}}, "spec": {"attachRequired": True}})
    try:
        provisioned = api.get("pv", api.wait("pvc", claim, bound, timeout=60)["spec"]["volumeName"])
        assert provisioned is not None and provisioned["spec"]["csi"]["driver"] == "csi.volplane.io"
        assert annotations(provisioned)["pv.kubernetes.io/provisioned-by"] == "other.example.com/x"
    finally:
        api.delete("csidriver", "csi.volplane.io")


def test_a_bind_interrupted_by_a_crash_is_finished_after_restart(cp: Stack, api: Api) -> None:
    cls = unique("crash")
    volume, claim = unique("pv"), unique("c")
    cp.stop_service("provisioner", kill=True)
    try:
        api.apply(pv(volume, "1Gi", cls))
        created = api.apply(pvc(claim, "1Gi", cls))[0]
        # The controller had written the first two of the six steps when it died.
        ref = {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": "default", "name": claim, "uid": created["metadata"]["uid"]}
        direct_patch(cp, "pv", volume, {"spec": {"claimRef": ref}}, manager="persistentvolume-controller")
        direct_patch(cp, "pv", volume, {"status": {"phase": "Bound"}}, manager="persistentvolume-controller")
    finally:
        cp.start_service("provisioner")
        cp.wait_healthy(["provisioner"])
    bound_claim = api.wait("pvc", claim, lambda o: "pv.kubernetes.io/bind-completed" in annotations(o or {"metadata": {}}))
    assert bound_claim["spec"]["volumeName"] == volume and phase(bound_claim) == "Bound"
    # The log says the controller set the claimRef, so the PV gets its annotation too.
    assert annotations(api.get("pv", volume))["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert annotations(bound_claim)["pv.kubernetes.io/bound-by-controller"] == "yes"
