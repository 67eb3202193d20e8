"""The PV controller's pure decisions: delay binding, FindBestMatch, and what a bind writes.

    delay = should_delay_binding(claim, classes)
    pv = find_best_match(claim, volumes, delay=delay, node=selected_node_object)
    for step in bind_steps(pv, claim): ...     # the seed's six writes, in its order

Nothing here touches the log; ``pv_controller`` loads, decides with these and writes.
"""

from __future__ import annotations

from typing import Any

from volplane.resources.names import ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_SELECTED_NODE
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim, StorageClass
from volplane.resources.selectors import LabelSelector, node_affinity_allows

__all__ = ["bind_steps", "bound_to_claim", "capacity_of", "claim_ref", "find_best_match", "introduced_by", "request_of", "satisfies", "should_delay_binding"]


def request_of(claim: Obj) -> int:
    return PersistentVolumeClaim(claim).request


def capacity_of(pv: Obj) -> int:
    return PersistentVolume(pv).capacity


def claim_ref(claim: Obj) -> Obj:
    return PersistentVolumeClaim(claim).ref()


def should_delay_binding(claim: Obj, classes: dict[str, Obj]) -> bool:
    """The seed's DelayBinding: a selected node means the scheduler has spoken (no delay);
    no StorageClass means no delay; otherwise the class's volumeBindingMode decides."""
    pvc = PersistentVolumeClaim(claim)
    if ANN_SELECTED_NODE in pvc.annotations:
        return False
    sc = StorageClass.of(classes.get(pvc.storage_class)) if pvc.storage_class else None
    return sc is not None and sc.delays_binding


def bound_to_claim(pv: Obj, claim: Obj) -> bool:
    """Whether the PV's claimRef names this claim (a ref without uid is a user's pre-binding)."""
    ref = PersistentVolume(pv).claim_ref
    return ref is not None and ref.matches(PersistentVolumeClaim(claim))


def _modes_satisfied(pv: PersistentVolume, claim: PersistentVolumeClaim) -> bool:
    return set(claim.access_modes) <= set(pv.access_modes)


def find_best_match(claim: Obj, volumes: list[Obj], *, delay: bool, node: Obj | None) -> Obj | None:
    """The seed's FindBestMatchPVForClaim: the PV pre-bound to this claim if there is one;
    otherwise, among PVs of the same volumeMode, not bound to another claim, Available,
    selected by the claim's label selector, of the same class, offering its access modes
    (and admitting the selected node) — the smallest that holds the request."""
    pvc = PersistentVolumeClaim(claim)
    want = pvc.request
    mode = pvc.volume_mode
    selector = LabelSelector.from_spec(pvc.selector)
    cls = pvc.storage_class
    best: Obj | None = None
    best_size = 0
    for obj in volumes:
        # 2) first when it is cheap: bound to a claim of another name, read from the raw
        # object. Most PVs of a busy cluster are; building each one's view and parsing its
        # capacity made every claim's sync cost O(all PVs) in parsed objects.
        raw_ref = (obj.get("spec") or {}).get("claimRef")
        if raw_ref and raw_ref.get("name") != pvc.name:
            continue
        pv = PersistentVolume(obj)
        # 1) volumeMode.
        if pv.volume_mode != mode:
            continue
        size = pv.capacity
        if size < want:
            continue
        if node is not None and not node_affinity_allows(obj, node):
            continue
        # A volume marked for deletion is never handed out (Kubernetes' FindMatchingVolume).
        if pv.deleting:
            continue
        ref = pv.claim_ref
        if ref is not None and ref.matches(pvc):
            return obj  # a pre-bound pair is honoured whatever else is on offer
        # 2) bound to another claim.
        if ref is not None:
            continue
        # 3) phase.
        if pv.phase != "Available":
            continue
        # A delayed claim waits for the scheduler to pick a node before it takes a PV.
        if delay:
            continue
        # 4) label selector, 5) class, and the access modes.
        if not selector.matches(pv.labels) or pv.storage_class != cls or not _modes_satisfied(pv, pvc):
            continue
        # 6) the smallest that fits.
        if best is None or size < best_size:
            best, best_size = obj, size
    return best


def satisfies(pv: Obj, claim: Obj) -> str | None:
    """Why a PV named by a claim's volumeName cannot serve it, or None if it can
    (Kubernetes' checkVolumeSatisfyClaim, in its order and words)."""
    volume, pvc = PersistentVolume(pv), PersistentVolumeClaim(claim)
    if volume.deleting:
        return f'the volume is marked for deletion "{volume.name}"'
    if volume.capacity < pvc.request:
        return "requested PV is too small"
    if volume.storage_class != pvc.storage_class:
        return "storageClassName does not match"
    if volume.volume_mode != pvc.volume_mode:
        return "incompatible volumeMode"
    if not _modes_satisfied(volume, pvc):
        return "incompatible accessMode"
    return None


def bind_steps(pv: Obj, claim: Obj, *, pv_by_controller: bool, claim_by_controller: bool) -> list[tuple[str, Obj]]:
    """The seed's bind, as (object, merge patch) steps in its order; a step already done
    is left out, so running this again after a crash finishes the bind.

    ``pv_by_controller``: the controller, not a user, points the PV at the claim (so the
    PV gets ``bound-by-controller``); ``claim_by_controller``: likewise for the claim's
    volumeName."""
    volume, pvc = PersistentVolume(pv), PersistentVolumeClaim(claim)
    steps: list[tuple[str, Obj]] = []
    ref = pvc.ref()
    have = volume.claim_ref.raw if volume.claim_ref else {}
    if {k: have.get(k) for k in ("namespace", "name", "uid")} != {k: ref[k] for k in ("namespace", "name", "uid")}:
        steps.append(("pv", {"spec": {"claimRef": ref}}))  # 1. pv.spec.claimRef
    if volume.phase != "Bound":
        steps.append(("pv", {"status": {"phase": "Bound", "message": None, "reason": None}}))  # 2. pv phase Bound
    if pv_by_controller and volume.annotations.get(ANN_BOUND_BY_CONTROLLER) != "yes":
        steps.append(("pv", {"metadata": {"annotations": {ANN_BOUND_BY_CONTROLLER: "yes"}}}))  # 3. pv annotation
    if pvc.spec.get("volumeName") != volume.name:
        steps.append(("pvc", {"spec": {"volumeName": volume.name}}))  # 4. pvc.spec.volumeName
    bound_status: Obj = {"phase": "Bound", "accessModes": volume.spec["accessModes"]}
    if pvc.phase != "Bound":
        # Only as the claim becomes Bound (Kubernetes' updateClaimStatus): afterwards its
        # capacity is what the filesystem offers, which an expansion moves after the PV's
        # (docs/control-plane.md, "Expansion"); so is the class of attributes it has.
        bound_status["capacity"] = dict(volume.spec["capacity"])
        if volume.attributes_class:
            bound_status["currentVolumeAttributesClassName"] = volume.attributes_class
    if any(pvc.status.get(k) != v for k, v in bound_status.items()):
        steps.append(("pvc", {"status": bound_status}))  # 5. pvc phase Bound
    want = {ANN_BIND_COMPLETED: "yes"}
    if claim_by_controller:
        want[ANN_BOUND_BY_CONTROLLER] = "yes"
    if any(pvc.annotations.get(k) != v for k, v in want.items()):
        steps.append(("pvc", {"metadata": {"annotations": want}}))  # 6. pvc annotations
    return steps


def introduced_by(history: list[Obj], path: tuple[str, ...]) -> str | None:
    """The manager whose write last made ``path`` appear in the object (None: never set).

    Used only to finish a bind a crash interrupted: whether a PV's claimRef (or a claim's
    volumeName) was put there by a user or by the controller decides the
    bound-by-controller annotation, and the log is the one place that remembers."""
    who, present = None, False
    for event in history:
        if event.get("type") not in ("ObjectCreated", "ObjectChanged"):
            if event.get("type") == "ObjectDeleted":
                who, present = None, False
            continue
        value: Any = event["object"]
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value and not present:
            who = event.get("manager")
        present = bool(value)
    return who
