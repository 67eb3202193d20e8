"""The PV controller's pure decisions: delay binding, FindBestMatch, the bind's steps."""

from __future__ import annotations

from typing import Any

from services.provisioner.controllers.binding import bind_steps, find_best_match, introduced_by, satisfies, should_delay_binding

Obj = dict[str, Any]


def pv(name: str, size: str, *, cls: str = "", modes: tuple[str, ...] = ("ReadWriteOnce",), mode: str = "Filesystem", phase: str = "Available", labels: Obj | None = None, claim_ref: Obj | None = None, node: str | None = None) -> Obj:
    spec: Obj = {"capacity": {"storage": size}, "accessModes": list(modes), "storageClassName": cls, "volumeMode": mode, "hostPath": {"path": f"/tmp/{name}"}}
    if claim_ref:
        spec["claimRef"] = claim_ref
    if node:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    return {"kind": "PersistentVolume", "metadata": {"name": name, "labels": labels or {}}, "spec": spec, "status": {"phase": phase}}


def claim(size: str = "2Gi", *, cls: str | None = None, modes: tuple[str, ...] = ("ReadWriteOnce",), mode: str = "Filesystem", selector: Obj | None = None, annotations: Obj | None = None, volume: str = "") -> Obj:
    spec: Obj = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}, "volumeMode": mode, "volumeName": volume}
    if cls is not None:
        spec["storageClassName"] = cls
    if selector:
        spec["selector"] = selector
    return {"kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "default", "uid": "u-1", "annotations": annotations or {}}, "spec": spec}


def node(name: str) -> Obj:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}


def names(found: Obj | None) -> str | None:
    return None if found is None else found["metadata"]["name"]


def test_smallest_volume_that_holds_the_request_wins() -> None:
    vols = [pv("big", "10Gi"), pv("small", "1Gi"), pv("mid", "5Gi"), pv("fit", "3Gi")]
    assert names(find_best_match(claim("2Gi"), vols, delay=False, node=None)) == "fit"


def test_volume_mode_must_match() -> None:
    assert find_best_match(claim(mode="Block"), [pv("fs", "5Gi")], delay=False, node=None) is None
    assert names(find_best_match(claim(mode="Block"), [pv("fs", "5Gi"), pv("blk", "9Gi", mode="Block")], delay=False, node=None)) == "blk"


def test_volume_bound_to_another_claim_is_skipped() -> None:
    other = {"namespace": "default", "name": "other", "uid": "u-2"}
    assert find_best_match(claim(), [pv("taken", "5Gi", claim_ref=other)], delay=False, node=None) is None


def test_only_available_volumes_are_candidates() -> None:
    vols = [pv("released", "5Gi", phase="Released"), pv("failed", "5Gi", phase="Failed"), pv("new", "50Gi", phase="")]
    assert find_best_match(claim(), vols, delay=False, node=None) is None


def test_volume_marked_for_deletion_is_never_matched_even_when_pre_bound() -> None:
    mine = {"namespace": "default", "name": "data"}
    going = pv("going", "5Gi", claim_ref=mine)
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert find_best_match(claim(), [going], delay=False, node=None) is None


def test_satisfies_says_why_in_kubernetes_order() -> None:
    assert satisfies(pv("v", "3Gi"), claim("2Gi")) is None
    going = pv("v", "3Gi")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert satisfies(going, claim("9Gi")) == 'the volume is marked for deletion "v"'
    assert satisfies(pv("v", "1Gi", cls="gold", mode="Block"), claim("2Gi")) == "requested PV is too small"
    assert satisfies(pv("v", "3Gi", cls="gold", mode="Block"), claim()) == "storageClassName does not match"
    assert satisfies(pv("v", "3Gi", mode="Block"), claim(modes=("ReadWriteMany",))) == "incompatible volumeMode"
    assert satisfies(pv("v", "3Gi"), claim(modes=("ReadWriteMany",))) == "incompatible accessMode"


def test_label_selector_filters() -> None:
    vols = [pv("plain", "3Gi"), pv("fast", "8Gi", labels={"tier": "fast"})]
    sel = {"matchLabels": {"tier": "fast"}}
    assert names(find_best_match(claim(selector=sel), vols, delay=False, node=None)) == "fast"
    expr = {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fast"]}]}
    assert names(find_best_match(claim(selector=expr), vols, delay=False, node=None)) == "plain"


def test_storage_class_must_be_the_same() -> None:
    vols = [pv("gold", "3Gi", cls="gold"), pv("none", "4Gi")]
    assert names(find_best_match(claim(cls="gold"), vols, delay=False, node=None)) == "gold"
    assert names(find_best_match(claim(), vols, delay=False, node=None)) == "none"
    # The beta annotation names the class even when spec.storageClassName says otherwise.
    beta = claim(cls="none-such", annotations={"volume.beta.kubernetes.io/storage-class": "gold"})
    assert names(find_best_match(beta, vols, delay=False, node=None)) == "gold"


def test_access_modes_must_be_offered() -> None:
    vols = [pv("rwo", "3Gi"), pv("rwx", "9Gi", modes=("ReadWriteOnce", "ReadWriteMany"))]
    assert names(find_best_match(claim(modes=("ReadWriteMany",)), vols, delay=False, node=None)) == "rwx"


def test_selected_node_must_be_admitted_by_node_affinity() -> None:
    vols = [pv("on-a", "3Gi", node="a"), pv("on-b", "5Gi", node="b")]
    assert names(find_best_match(claim(), vols, delay=False, node=node("b"))) == "on-b"


def test_pre_bound_volume_is_honoured_over_a_smaller_fit() -> None:
    mine = {"namespace": "default", "name": "data"}
    vols = [pv("fit", "3Gi"), pv("prebound", "50Gi", claim_ref=mine, phase="Available")]
    assert names(find_best_match(claim(), vols, delay=False, node=None)) == "prebound"


def test_delayed_claim_takes_no_volume_but_its_pre_bound_one() -> None:
    mine = {"namespace": "default", "name": "data", "uid": "u-1"}
    assert find_best_match(claim(), [pv("free", "3Gi")], delay=True, node=None) is None
    assert names(find_best_match(claim(), [pv("mine", "3Gi", claim_ref=mine)], delay=True, node=None)) == "mine"


def test_delay_binding_rules() -> None:
    classes = {"wait": {"volumeBindingMode": "WaitForFirstConsumer"}, "now": {"volumeBindingMode": "Immediate"}}
    assert should_delay_binding(claim(cls="wait"), classes)
    assert not should_delay_binding(claim(cls="now"), classes)
    assert not should_delay_binding(claim(), classes)  # no class: no delay
    selected = claim(cls="wait", annotations={"volume.kubernetes.io/selected-node": "a"})
    assert not should_delay_binding(selected, classes)  # the scheduler has chosen


def test_bind_writes_the_seeds_six_steps_in_order() -> None:
    steps = bind_steps(pv("v", "3Gi"), claim(), pv_by_controller=True, claim_by_controller=True)
    assert [(t, next(iter(p))) for t, p in steps] == [("pv", "spec"), ("pv", "status"), ("pv", "metadata"), ("pvc", "spec"), ("pvc", "status"), ("pvc", "metadata")]
    assert steps[0][1]["spec"]["claimRef"]["uid"] == "u-1"
    assert steps[2][1] == {"metadata": {"annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}}}
    assert steps[5][1]["metadata"]["annotations"] == {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}


def test_bind_after_a_crash_writes_only_what_is_missing() -> None:
    ref = {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data", "uid": "u-1", "apiVersion": "v1"}
    half = pv("v", "3Gi", claim_ref=ref, phase="Bound")
    steps = bind_steps(half, claim(), pv_by_controller=True, claim_by_controller=True)
    assert [t for t, _ in steps] == ["pv", "pvc", "pvc", "pvc"]
    assert next(iter(steps[0][1])) == "metadata"


def test_user_pre_binding_gets_no_bound_by_controller() -> None:
    steps = bind_steps(pv("v", "3Gi"), claim(volume="v"), pv_by_controller=True, claim_by_controller=False)
    assert steps[-1][1]["metadata"]["annotations"] == {"pv.kubernetes.io/bind-completed": "yes"}


def test_introduced_by_finds_who_set_a_field_first() -> None:
    history = [
        {"type": "ObjectCreated", "manager": "volctl", "object": {"spec": {}}},
        {"type": "ObjectChanged", "manager": "persistentvolume-controller", "object": {"spec": {"claimRef": {"name": "x"}}}},
        {"type": "ObjectChanged", "manager": "volctl", "object": {"spec": {"claimRef": {"name": "x", "uid": "1"}}}},
        {"type": "EventRecorded", "reason": "r"},
    ]
    assert introduced_by(history, ("spec", "claimRef")) == "persistentvolume-controller"
    assert introduced_by(history[:1], ("spec", "claimRef")) is None
