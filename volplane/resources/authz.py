"""Who may write which object: Kubernetes' NodeRestriction for nodes, its RBAC roles for
the controllers, in one place.

    objects = ObjectStore(store, manager="kubelet/node-1", append=NodeWrites(bus, "node-1").append)
    await objects.update(pod, {"status": {...}})      # goes to apigw, which checks and appends
    admit_node_write("node-1", subject, event, current)   # PermissionDenied unless NodeRestriction allows it

A node's NATS user may not append to object subjects at all: object subjects carry no
node, so "the pods bound to me" cannot be a subject permission. Its writes go as requests
on ``vp.cmd.objects.node.<node>.append`` — a subject only that node's user may publish to,
so the subject names the node — to apigw (``services.apigw.object_writes``), which checks
each against the object as the log has it at the version the write is conditioned on and
only then appends it. The controllers append themselves, each limited by its NATS user to
the object kinds of its role (``ROLES``, turned into subjects by ``role_subjects``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from volplane import codec, subjects
from volplane.bus import Bus
from volplane.errors import InvalidArgument, PermissionDenied, Unavailable
from volplane.events import Event, Frozen
from volplane.resources import patch as patches
from volplane.resources.events import EventRecorded, ObjectChanged, ObjectCreated, ObjectDeleted
from volplane.resources.kinds import BY_NAME, RECORDED_EVENTS, RESOURCE_EVENTS, Ref
from volplane.resources.schema import validate

__all__ = ["ROLES", "AppendObjectEvent", "NodeWrites", "admit_node_write", "kubelet", "role_subjects"]

_PATIENCE = 60.0  # seconds a node's write waits for an apigw to answer
# Labels with this prefix are the cluster admin's statement about a node (Kubernetes'
# NodeRestriction: a kubelet may not set them), e.g. to steer workloads to trusted nodes.
_RESTRICTED_LABELS = "node-restriction.kubernetes.io/"

# The kinds each controller process writes, and those whose timelines it records on —
# what its code does (grep ObjectStore writes in services/*/controllers and
# services/scheduler), as Kubernetes' system:controller:* roles list them:
#   provisioner: the PV controller and external-provisioner (PVs: create, bind, release,
#     delete; claims: status, spec.volumeName, annotations), the scheduler (a pod's
#     spec.nodeName, a claim's selected-node annotation), the snapshot controller and CSI
#     snapshotter (VolumeSnapshots, VolumeSnapshotContents and their group kinds: create,
#     bind, status, finalizers, delete; a claim's snapshot and clone protection).
#   attacher: the attach/detach controller and external-attacher (VolumeAttachments,
#     a Node's status.volumesAttached, the PV finalizer while attached).
#   apigw: the resource API, whose callers it authorizes itself (services.apigw.access).
# A node (the kubelet's part) has no kind here: its writes go through NodeWrites.
_SNAPSHOT_KINDS = ("VolumeSnapshot", "VolumeSnapshotContent", "VolumeGroupSnapshot", "VolumeGroupSnapshotContent")
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "provisioner": (
        ("PersistentVolume", "PersistentVolumeClaim", "Pod", *_SNAPSHOT_KINDS),
        ("PersistentVolume", "PersistentVolumeClaim", "Pod", *_SNAPSHOT_KINDS),
    ),
    "attacher": (("VolumeAttachment", "Node", "PersistentVolume"), ("VolumeAttachment", "Pod")),
    "apigw": (("*",), ("*",)),
}


def role_subjects(role: str) -> tuple[str, ...]:
    """The object subjects ``role`` may publish to: ``vp.ev.res.pv.>``, ``vp.ev.rec.pod.>`` …"""
    writes, records = ROLES[role]
    if writes == ("*",):
        return (RESOURCE_EVENTS, RECORDED_EVENTS)
    return (
        *(BY_NAME[k].events for k in writes),
        *(f"vp.ev.rec.{BY_NAME[k].token}.>" for k in records),
    )


def kubelet(node: str) -> str:
    """The manager (and a timeline line's source) of a node's writes, as Kubernetes names it."""
    return f"kubelet/{node}"


class AppendObjectEvent(Frozen):
    """A node's append, as it would go to the log: the object's (or timeline's) subject,
    the version it is conditioned on (None for a timeline line) and the encoded event."""

    subject: str
    expected: int | None
    data: bytes


class NodeWrites:
    """A node's appends, sent to the authorizing writer instead of the log."""

    def __init__(self, bus: Bus, node: str) -> None:
        self._bus = bus
        self._subject = subjects.node_object_write(node)

    async def append(self, subject: str, event: Event, expected: int | None) -> int:
        """The appended event's sequence, as ``EventStore.append`` returns it.

        While no apigw answers (starting, restarting) the append is asked again for up to
        a minute, as a kubelet waits for its API server. Asking again is safe: a versioned
        append that did land the first time now fails with ConcurrencyConflict (its
        caller reloads), and a timeline line is the same message to the log's duplicate
        window."""
        command = AppendObjectEvent(subject=subject, expected=expected, data=codec.encode(event))
        deadline = time.monotonic() + _PATIENCE
        pause = 0.1
        while True:
            try:
                return int(await self._bus.request(self._subject, command, timeout=30.0))
            except Unavailable:
                if time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


def _denied(node: str, what: str) -> PermissionDenied:
    return PermissionDenied(
        f'node "{node}" may not {what} (NodeRestriction: a node changes only its own Node, the status of pods bound to it '
        "and the resize status of the claims they use)"
    )


def _bound_to(obj: dict[str, Any] | None, node: str) -> bool:
    return obj is not None and obj.get("kind") == "Pod" and (obj.get("spec") or {}).get("nodeName") == node


def _restricted_labels(obj: dict[str, Any]) -> dict[str, Any]:
    labels = obj["metadata"].get("labels") or {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and k.startswith(_RESTRICTED_LABELS)}


# What a node may change of a claim its pods use: the fields the kubelet's node expansion
# writes (Kubernetes' NodeRestriction admitPVCStatus lets through these and nothing else).
CLAIM_STATUS_BY_NODE = ("capacity", "conditions", "allocatedResourceStatuses", "allocatedResources")


def _without_claim_status(obj: dict[str, Any]) -> dict[str, Any]:
    """The claim without the status fields a node may write (nor its resourceVersion)."""
    bare = _without(obj, "status")
    status = {k: v for k, v in (obj.get("status") or {}).items() if k not in CLAIM_STATUS_BY_NODE}
    return {**bare, "status": status}


def _without(obj: dict[str, Any], field: str) -> dict[str, Any]:
    """The object without ``field`` ("" for none) nor its resourceVersion (a position)."""
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**{k: v for k, v in obj.items() if k != field}, "metadata": meta}


def admit_node_write(
    node: str, ref: Ref, event: Event, current: dict[str, Any] | None, *, recorded: bool, claim_used: bool = False
) -> Event:
    """NodeRestriction: the event ``node`` may append about ``ref``, whose newest object is
    ``current`` — or PermissionDenied saying what it tried.

    Allowed: creating and changing its own Node (not its uid); changing only the status
    of a pod bound to it (``spec.nodeName``), which it may not unbind; changing only
    ``status.capacity``, ``conditions`` and ``allocatedResource[Statuse]s`` of a claim
    that a pod bound to it uses (``claim_used``, which the caller looks up: the node
    authorizer's pod → claim edge in Kubernetes), as the kubelet does when it finishes
    an expansion; timeline lines about its Node, its pods and those claims. Every write
    carries the node's own manager name. A change's merge patch is recomputed from the
    objects, so its history is the truth. Nodes delete nothing here."""
    own = kubelet(node)
    is_node = ref.kind.name == "Node" and ref.name == node
    if recorded:
        if not isinstance(event, EventRecorded):
            raise InvalidArgument(f"{ref.recorded}: not a timeline line")
        if event.source != own:
            raise _denied(node, f'record a line as "{event.source[:64]}"')
        used_claim = ref.kind.name == "PersistentVolumeClaim" and claim_used
        if not (is_node or used_claim or (ref.kind.name == "Pod" and _bound_to(current, node))):
            raise _denied(node, f"record events about {ref}")
        return event
    if not isinstance(event, ObjectCreated | ObjectChanged | ObjectDeleted):
        raise InvalidArgument(f"{ref.subject}: not an object event")
    if event.manager != own:
        raise _denied(node, f'write as "{event.manager[:64]}"')
    if isinstance(event, ObjectDeleted):
        raise _denied(node, f"delete {ref}")
    new = validate(dict(event.object))
    if new.get("kind") != ref.kind.name or new["metadata"].get("name") != ref.name or (ref.kind.namespaced and new["metadata"].get("namespace") != ref.namespace):
        raise InvalidArgument(f"the object does not belong on {ref.subject}")
    if isinstance(event, ObjectCreated):
        if not is_node:
            raise _denied(node, f"create {ref}")
        if _restricted_labels(new):
            raise _denied(node, f"set the {_RESTRICTED_LABELS}* labels of {ref}")
        return event
    if current is None:
        raise _denied(node, f"change {ref}, which does not exist")
    if new["metadata"].get("uid") != current["metadata"].get("uid"):
        raise _denied(node, f"change the uid of {ref}")
    if is_node:
        before, after = (_restricted_labels(o) for o in (current, new))
        if before != after:
            raise _denied(node, f"change the {_RESTRICTED_LABELS}* labels of {ref}")
    elif ref.kind.name == "PersistentVolumeClaim":
        if not claim_used:
            raise _denied(node, f"change {ref} (no pod bound to it uses the claim)")
        if _without_claim_status(new) != _without_claim_status(current):
            raise _denied(node, f"change anything but status.{', status.'.join(CLAIM_STATUS_BY_NODE)} of {ref}")
    else:
        if ref.kind.name != "Pod" or not _bound_to(current, node):
            raise _denied(node, f"change {ref}" + (" (bound to another node)" if ref.kind.name == "Pod" else ""))
        if _without(new, "status") != _without(current, "status"):
            raise _denied(node, f"change anything but the status of {ref}")
    return ObjectChanged(object=new, patch=patches.diff(_without(current, ""), new), manager=own, reason=event.reason)
