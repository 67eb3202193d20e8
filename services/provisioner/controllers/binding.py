"""The PV controller's pure decisions: delay binding, FindBestMatch, and what a bind writes.

    delay = should_delay_binding(claim, classes)
    pv = find_best_match(claim, volumes, delay=delay, node=selected_node_object)
    for step in bind_steps(pv, claim): ...     # the seed's six writes, in its order

Nothing here touches the log; ``pv_controller`` loads, decides with these and writes.
"""

from __future__ import annotations

from typing import Any

from volplane.resources.names import (
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_SELECTED_NODE,
    claim_class,
)
from volplane.resources.schema import quantity
from volplane.resources.selectors import LabelSelector, node_affinity_allows

__all__ = ["should_delay_binding", "find_best_match", "bound_to_claim", "bind_steps", "claim_ref", "request_of", "capacity_of"]

Obj = dict[str, Any]


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _ann(obj: Obj) -> dict[str, str]:
    return _meta(obj).get("annotations") or {}


def request_of(claim: Obj) -> int:
    return quantity(claim["spec"]["resources"]["requests"]["storage"])


def capacity_of(pv: Obj) -> int:
    return quantity(pv["spec"]["capacity"]["storage"])


def claim_ref(claim: Obj) -> Obj:
    meta = _meta(claim)
    return {"kind": "PersistentVolumeClaim", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1"}


def should_delay_binding(claim: Obj, classes: dict[str, Obj]) -> bool:
    """The seed's DelayBinding: a selected node means the scheduler has spoken (no delay);
    no StorageClass means no delay; otherwise the class's volumeBindingMode decides."""
    if ANN_SELECTED_NODE in _ann(claim):
        return False
    name = claim_class(claim)
    if not name:
        return False
    sc = classes.get(name)
    if sc is None:
        return False
    return sc.get("volumeBindingMode") == "WaitForFirstConsumer"


def bound_to_claim(pv: Obj, claim: Obj) -> bool:
    """Whether the PV's claimRef names this claim (a ref without uid is a user's pre-binding)."""
    ref = (pv.get("spec") or {}).get("claimRef")
    if not ref:
        return False
    meta = _meta(claim)
    if ref.get("name") != meta.get("name") or (ref.get("namespace") or "default") != meta.get("namespace"):
        return False
    return not ref.get("uid") or ref.get("uid") == meta.get("uid")


def _modes_satisfied(pv: Obj, claim: Obj) -> bool:
    return set(claim["spec"].get("accessModes") or []) <= set(pv["spec"].get("accessModes") or [])


def _pv_class(pv: Obj) -> str:
    return pv["spec"].get("storageClassName") or ""


def find_best_match(claim: Obj, volumes: list[Obj], *, delay: bool, node: Obj | None) -> Obj | None:
    """The seed's FindBestMatchPVForClaim: the PV pre-bound to this claim if there is one;
    otherwise, among PVs of the same volumeMode, not bound to another claim, Available,
    selected by the claim's label selector, of the same class, offering its access modes
    (and admitting the selected node) — the smallest that holds the request."""
    want = request_of(claim)
    mode = claim["spec"].get("volumeMode") or "Filesystem"
    selector = LabelSelector.from_spec(claim["spec"].get("selector"))
    cls = claim_class(claim)
    best: Obj | None = None
    for pv in volumes:
        spec = pv["spec"]
        # 1) volumeMode.
        if (spec.get("volumeMode") or "Filesystem") != mode:
            continue
        if capacity_of(pv) < want:
            continue
        if node is not None and not node_affinity_allows(pv, node):
            continue
        if bound_to_claim(pv, claim):
            return pv  # a pre-bound pair is honoured whatever else is on offer
        # 2) bound to another claim.
        if spec.get("claimRef"):
            continue
        # 3) phase.
        if ((pv.get("status") or {}).get("phase")) != "Available":
            continue
        # A delayed claim waits for the scheduler to pick a node before it takes a PV.
        if delay:
            continue
        # 4) label selector, 5) class, and the access modes.
        if not selector.matches(_meta(pv).get("labels")) or _pv_class(pv) != cls or not _modes_satisfied(pv, claim):
            continue
        # 6) the smallest that fits.
        if best is None or capacity_of(pv) < capacity_of(best):
            best = pv
    return best


def satisfies(pv: Obj, claim: Obj) -> str | None:
    """Why a PV named by a claim's volumeName cannot serve it, or None if it can."""
    if (pv["spec"].get("volumeMode") or "Filesystem") != (claim["spec"].get("volumeMode") or "Filesystem"):
        return "volumeMode does not match"
    if capacity_of(pv) < request_of(claim):
        return "requested PV is too small"
    if _pv_class(pv) != claim_class(claim):
        return "storageClassName does not match"
    if not _modes_satisfied(pv, claim):
        return "access modes do not match"
    return None


def bind_steps(pv: Obj, claim: Obj, *, pv_by_controller: bool, claim_by_controller: bool) -> list[tuple[str, Obj]]:
    """The seed's bind, as (object, merge patch) steps in its order; a step already done
    is left out, so running this again after a crash finishes the bind.

    ``pv_by_controller``: the controller, not a user, points the PV at the claim (so the
    PV gets ``bound-by-controller``); ``claim_by_controller``: likewise for the claim's
    volumeName."""
    steps: list[tuple[str, Obj]] = []
    ref = claim_ref(claim)
    have = pv["spec"].get("claimRef") or {}
    if {k: have.get(k) for k in ("namespace", "name", "uid")} != {k: ref[k] for k in ("namespace", "name", "uid")}:
        steps.append(("pv", {"spec": {"claimRef": ref}}))  # 1. pv.spec.claimRef
    if (pv.get("status") or {}).get("phase") != "Bound":
        steps.append(("pv", {"status": {"phase": "Bound", "message": None, "reason": None}}))  # 2. pv phase Bound
    if pv_by_controller and _ann(pv).get(ANN_BOUND_BY_CONTROLLER) != "yes":
        steps.append(("pv", {"metadata": {"annotations": {ANN_BOUND_BY_CONTROLLER: "yes"}}}))  # 3. pv annotation
    if claim["spec"].get("volumeName") != pv["metadata"]["name"]:
        steps.append(("pvc", {"spec": {"volumeName": pv["metadata"]["name"]}}))  # 4. pvc.spec.volumeName
    status = claim.get("status") or {}
    bound_status = {"phase": "Bound", "accessModes": pv["spec"]["accessModes"], "capacity": dict(pv["spec"]["capacity"])}
    if any(status.get(k) != v for k, v in bound_status.items()):
        steps.append(("pvc", {"status": bound_status}))  # 5. pvc phase Bound
    want = {ANN_BIND_COMPLETED: "yes"}
    if claim_by_controller:
        want[ANN_BOUND_BY_CONTROLLER] = "yes"
    ann = _ann(claim)
    if any(ann.get(k) != v for k, v in want.items()):
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
