"""A claim's status while its volume is expanded or modified, in Kubernetes' names: the
condition types, ``status.allocatedResourceStatuses`` (Kubernetes ≥ 1.32, KEP 1790) and
``status.modifyVolumeStatus`` (KEP 3751), and the merge patches that move a claim from one
state to the next. The external-resizer role (provisioner) and the kubelet's node
expansion (nodeagent) both write them, so they live here once.

    patch = controller_resize_in_progress(claim, "2Gi")   # {"status": {...}}: Resizing, allocatedResources
    await objects.update(claim, patch, reason="resize")
    resize_status(claim)                                   # "ControllerResizeInProgress"

Every function is pure: it reads the claim (a dict) and returns the patch that makes its
status say the next thing. Conditions are a list, which a merge patch replaces whole, so a
patch carries the claim's whole new list: the conditions of other writers are kept, and a
condition that is already there with the same status keeps its lastTransitionTime.
"""

from __future__ import annotations

from typing import Any

from volplane.events import now_ns
from volplane.resources.schema import quantity
from volplane.resources.store import rfc3339

__all__ = [
    "CONTROLLER_RESIZE_ERROR",
    "CONTROLLER_RESIZE_INFEASIBLE",
    "CONTROLLER_RESIZE_IN_PROGRESS",
    "FS_RESIZE_PENDING",
    "MODIFYING_VOLUME",
    "MODIFY_INFEASIBLE",
    "MODIFY_IN_PROGRESS",
    "MODIFY_PENDING",
    "MODIFY_VOLUME_ERROR",
    "NODE_RESIZE_ERROR",
    "NODE_RESIZE_IN_PROGRESS",
    "NODE_RESIZE_PENDING",
    "RESIZING",
    "allocated",
    "capacity",
    "condition_of",
    "controller_resize_error",
    "controller_resize_in_progress",
    "controller_resize_infeasible",
    "modify_completed",
    "modify_error",
    "modify_status",
    "node_resize_error",
    "node_resize_in_progress",
    "node_resize_pending",
    "resize_finished",
    "resize_status",
]

Obj = dict[str, Any]

# PersistentVolumeClaimConditionType.
RESIZING = "Resizing"
FS_RESIZE_PENDING = "FileSystemResizePending"
CONTROLLER_RESIZE_ERROR = "ControllerResizeError"
NODE_RESIZE_ERROR = "NodeResizeError"
MODIFYING_VOLUME = "ModifyingVolume"
MODIFY_VOLUME_ERROR = "ModifyVolumeError"
_RESIZE_CONDITIONS = (RESIZING, FS_RESIZE_PENDING, CONTROLLER_RESIZE_ERROR, NODE_RESIZE_ERROR)
_MODIFY_CONDITIONS = (MODIFYING_VOLUME, MODIFY_VOLUME_ERROR)

# ClaimResourceStatus: status.allocatedResourceStatuses["storage"].
CONTROLLER_RESIZE_IN_PROGRESS = "ControllerResizeInProgress"
CONTROLLER_RESIZE_INFEASIBLE = "ControllerResizeInfeasible"
NODE_RESIZE_PENDING = "NodeResizePending"
NODE_RESIZE_IN_PROGRESS = "NodeResizeInProgress"

# PersistentVolumeClaimModifyVolumeStatus: status.modifyVolumeStatus.status.
MODIFY_PENDING = "Pending"
MODIFY_IN_PROGRESS = "InProgress"
MODIFY_INFEASIBLE = "Infeasible"

_STORAGE = "storage"
# The condition the external-resizer sets when the node has to finish, in its words.
_FS_PENDING_MESSAGE = "Waiting for user to (re-)start a pod to finish file system resize of volume on node."


def _status(claim: Obj) -> Obj:
    return claim.get("status") or {}


def resize_status(claim: Obj) -> str:
    """``status.allocatedResourceStatuses["storage"]``, "" when no resize is under way."""
    return str((_status(claim).get("allocatedResourceStatuses") or {}).get(_STORAGE) or "")


def allocated(claim: Obj) -> int | None:
    """Bytes of ``status.allocatedResources["storage"]``: the size a resize was last started for."""
    size = (_status(claim).get("allocatedResources") or {}).get(_STORAGE)
    return None if size is None else quantity(size)


def capacity(claim: Obj) -> int:
    """Bytes of ``status.capacity["storage"]``: what the volume offers the claim now (0 before binding)."""
    size = (_status(claim).get("capacity") or {}).get(_STORAGE)
    return 0 if size is None else quantity(size)


def condition_of(claim: Obj, kind: str) -> Obj | None:
    return next((c for c in _status(claim).get("conditions") or [] if c.get("type") == kind), None)


def _condition(kind: str, message: str = "") -> Obj:
    out: Obj = {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": rfc3339(now_ns())}
    if message:
        out["message"] = message
    return {k: v for k, v in out.items() if v is not None}


def _merged(claim: Obj, new: list[Obj], family: tuple[str, ...], *, keep_old: bool) -> list[Obj]:
    """The claim's conditions with ``new`` in place: conditions outside ``family`` are kept;
    one of ``family`` that ``new`` names keeps its lastTransitionTime when its status stays,
    and the others of ``family`` go unless ``keep_old`` (Kubernetes' MergeResizeConditionOnPVC)."""
    wanted = {c["type"]: c for c in new}
    out: list[Obj] = []
    for old in _status(claim).get("conditions") or []:
        kind = old.get("type")
        if kind not in family:
            out.append(old)
        elif kind in wanted:
            fresh = wanted.pop(kind)
            out.append({**fresh, "lastTransitionTime": old["lastTransitionTime"]} if old.get("status") == fresh["status"] and old.get("lastTransitionTime") else fresh)
        elif keep_old:
            out.append(old)
    return out + list(wanted.values())


def _statuses(claim: Obj, value: str | None) -> Obj | None:
    """allocatedResourceStatuses with storage set to ``value`` (None: removed; the map goes when empty)."""
    statuses = dict(_status(claim).get("allocatedResourceStatuses") or {})
    if value is None:
        statuses.pop(_STORAGE, None)
    else:
        statuses[_STORAGE] = value
    return statuses or None


def _patch(status: Obj) -> Obj:
    # None in a merge patch removes the field; an empty list of conditions goes as None too.
    return {"status": {k: (v if v != [] else None) for k, v in status.items()}}


# -- expansion -------------------------------------------------------------------------


def controller_resize_in_progress(claim: Obj, size: str) -> Obj:
    """The external-resizer starts: Resizing, ControllerResizeInProgress, allocatedResources = ``size``."""
    return _patch({
        "conditions": _merged(claim, [_condition(RESIZING)], _RESIZE_CONDITIONS, keep_old=False),
        "allocatedResourceStatuses": _statuses(claim, CONTROLLER_RESIZE_IN_PROGRESS),
        "allocatedResources": {**(_status(claim).get("allocatedResources") or {}), _STORAGE: size},
    })


def node_resize_pending(claim: Obj) -> Obj:
    """The controller part is done and the node has to grow the filesystem: FileSystemResizePending."""
    return _patch({
        "conditions": _merged(claim, [_condition(FS_RESIZE_PENDING, _FS_PENDING_MESSAGE)], _RESIZE_CONDITIONS, keep_old=False),
        "allocatedResourceStatuses": _statuses(claim, NODE_RESIZE_PENDING),
    })


def node_resize_in_progress(claim: Obj) -> Obj:
    """The kubelet calls NodeExpandVolume now."""
    return _patch({"allocatedResourceStatuses": _statuses(claim, NODE_RESIZE_IN_PROGRESS)})


def resize_finished(claim: Obj, size: str) -> Obj:
    """All done: ``status.capacity`` is ``size``, the resize conditions and status go."""
    return _patch({
        "capacity": {**(_status(claim).get("capacity") or {}), _STORAGE: size},
        "conditions": _merged(claim, [], _RESIZE_CONDITIONS, keep_old=False),
        "allocatedResourceStatuses": _statuses(claim, None),
    })


def controller_resize_infeasible(claim: Obj, message: str) -> Obj:
    """The driver refused the size for good (INVALID_ARGUMENT, OUT_OF_RANGE, NOT_FOUND): the
    user may lower the request again, down to just above status.capacity."""
    return _patch({
        "conditions": _merged(claim, [_condition(CONTROLLER_RESIZE_ERROR, f"failed to expand pvc with {message}")], _RESIZE_CONDITIONS, keep_old=True),
        "allocatedResourceStatuses": _statuses(claim, CONTROLLER_RESIZE_INFEASIBLE),
    })


def controller_resize_error(claim: Obj, message: str) -> Obj:
    """Another final error of ControllerExpandVolume: said on the claim, and retried."""
    return _patch({"conditions": _merged(claim, [_condition(CONTROLLER_RESIZE_ERROR, f"failed to expand pvc with {message}")], _RESIZE_CONDITIONS, keep_old=True)})


def node_resize_error(claim: Obj, message: str) -> Obj:
    """A final error of NodeExpandVolume: said on the claim, and retried."""
    return _patch({"conditions": _merged(claim, [_condition(NODE_RESIZE_ERROR, f"failed to expand pvc with {message}")], _RESIZE_CONDITIONS, keep_old=True)})


# -- modification (VolumeAttributesClass) ----------------------------------------------


def modify_status(claim: Obj, status: str, target: str, error: str = "") -> Obj:
    """``modifyVolumeStatus {targetVolumeAttributesClassName, status}``; InProgress and
    Infeasible also say so in the ModifyingVolume condition, Pending leaves the conditions."""
    out: Obj = {"modifyVolumeStatus": {"targetVolumeAttributesClassName": target, "status": status}}
    if status == MODIFY_IN_PROGRESS:
        out["conditions"] = _merged(claim, [_condition(MODIFYING_VOLUME, "ModifyVolume operation in progress.")], _MODIFY_CONDITIONS, keep_old=True)
    elif status == MODIFY_INFEASIBLE:
        message = f"ModifyVolume failed with error: {error}. Waiting for retry."
        out["conditions"] = _merged(claim, [_condition(MODIFYING_VOLUME, message)], _MODIFY_CONDITIONS, keep_old=True)
    return _patch(out)


def modify_error(claim: Obj, error: str) -> Obj:
    """ControllerModifyVolume failed: the ModifyVolumeError condition says with what."""
    message = f"ModifyVolume failed with error: {error}. Waiting for retry."
    return _patch({"conditions": _merged(claim, [_condition(MODIFY_VOLUME_ERROR, message)], _MODIFY_CONDITIONS, keep_old=True)})


def modify_completed(claim: Obj, target: str) -> Obj:
    """The volume has ``target``'s attributes: currentVolumeAttributesClassName, no modifyVolumeStatus,
    no modify conditions."""
    return _patch({
        "currentVolumeAttributesClassName": target,
        "modifyVolumeStatus": None,
        "conditions": _merged(claim, [], _MODIFY_CONDITIONS, keep_old=False),
    })
