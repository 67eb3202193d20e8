"""The AD controller's desired and actual state of world, as pure functions of objects.

    want = desired_nodes(pv, pods, claims, nodes, drivers)   # {"node-1": ("default/web",)}
    have = attachments_of("pvc-1", vas)                      # {"node-1": <VolumeAttachment>}
    multi_attach_allowed(pv)                                 # False for ReadWriteOnce only

Kubernetes keeps the desired state of world (node → volume → pods) as a cache that its
populator (FindAndRemoveDeletedPods, FindAndAddActivePods) and PVC worker patch after
each change. Here the same answer is computed afresh, per volume, from the informer's
objects every time the volume is synced, so a missed or repeated event cannot leave a
stale entry behind: what the populator removes (deleted and terminated pods, pods whose
claim was unbound) is simply never added.

Objects are Kubernetes-shaped dicts as the informer holds them; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from volplane.resources.names import LABEL_KEEP_TERMINATED, pod_claims, pod_terminated

__all__ = [
    "Obj",
    "MULTI_NODE_MODES",
    "attach_driver",
    "multi_attach_allowed",
    "keeps_terminated_pod_volumes",
    "pod_volumes_desired",
    "claim_bound_to",
    "desired_nodes",
    "attachments_of",
    "is_attached",
    "is_deleting",
]

Obj = dict[str, Any]

# Kubernetes' isMultiAttachAllowed: a PV may be attached to several nodes only when one
# of its access modes is a many-node mode; ReadWriteOnce and ReadWriteOncePod are not.
MULTI_NODE_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})


def _meta(obj: Obj | None) -> Obj:
    return (obj or {}).get("metadata") or {}


def _spec(obj: Obj | None) -> Obj:
    return (obj or {}).get("spec") or {}


def _key(obj: Obj) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def is_deleting(obj: Obj | None) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def attach_driver(pv: Obj | None, drivers: Mapping[str, Obj]) -> str | None:
    """The CSI driver that attaches ``pv``, or None when the volume is never attached.

    Only CSI volumes attach; a driver whose CSIDriver object says ``attachRequired:
    false`` skips attaching, and a driver without a CSIDriver object needs it (as in
    Kubernetes). nfs, hostPath and local volumes have nothing to attach.

    >>> attach_driver({"spec": {"csi": {"driver": "d", "volumeHandle": "h"}}}, {})
    'd'
    >>> attach_driver({"spec": {"nfs": {"server": "s", "path": "/"}}}, {}) is None
    True
    """
    csi = _spec(pv).get("csi")
    if not csi:
        return None
    driver = csi.get("driver") or ""
    if _spec(drivers.get(driver)).get("attachRequired", True) is False:
        return None
    return driver or None


def multi_attach_allowed(pv: Obj | None) -> bool:
    """Whether ``pv`` may be attached to more than one node at a time."""
    return any(mode in MULTI_NODE_MODES for mode in _spec(pv).get("accessModes") or ())


def keeps_terminated_pod_volumes(node: Obj | None) -> bool:
    """A Node labelled ``volumes.kubernetes.io/keep-terminated-pod-volumes`` keeps the
    volumes of its terminated pods attached. The value does not matter, only that the
    label is there. Kubernetes reads the same key from the Node's annotations, so that
    place counts too."""
    meta = _meta(node)
    return LABEL_KEEP_TERMINATED in (meta.get("labels") or {}) or LABEL_KEEP_TERMINATED in (meta.get("annotations") or {})


def pod_volumes_desired(pod: Obj, node: Obj | None) -> bool:
    """Whether the pod's volumes belong in the desired state of world: it is scheduled
    (spec.nodeName), not being deleted, and not terminated — unless its node keeps the
    volumes of terminated pods (FindAndRemoveDeletedPods removes the others)."""
    if not _spec(pod).get("nodeName") or is_deleting(pod):
        return False
    return not pod_terminated(pod) or keeps_terminated_pod_volumes(node)


def claim_bound_to(claim: Obj | None, pv: Obj) -> bool:
    """Whether ``claim`` is bound to ``pv``, as Kubernetes requires before it attaches a
    claim's volume: claim phase Bound with spec.volumeName naming the PV, and the PV's
    claimRef pointing back at the claim (its uid too, when both sides carry one)."""
    if claim is None or ((claim.get("status") or {}).get("phase")) != "Bound":
        return False
    pv_name = _meta(pv).get("name")
    if not pv_name or _spec(claim).get("volumeName") != pv_name:
        return False
    ref = _spec(pv).get("claimRef") or {}
    meta = _meta(claim)
    if ref.get("name") != meta.get("name") or (ref.get("namespace") or "default") != (meta.get("namespace") or "default"):
        return False
    return not (ref.get("uid") and meta.get("uid") and ref["uid"] != meta["uid"])


def desired_nodes(
    pv: Obj | None,
    pods: Iterable[Obj],
    claims: Mapping[str, Obj],
    nodes: Mapping[str, Obj],
    drivers: Mapping[str, Obj],
) -> dict[str, tuple[str, ...]]:
    """The desired state of world for one volume: node → the pods there that need it.

    ``pods`` may hold any pods (those using other volumes are ignored); ``claims`` are
    keyed ``namespace/name``, ``nodes`` and ``drivers`` by name. A volume nothing attaches
    (see ``attach_driver``) is wanted nowhere; a pod on a node without a Node object
    still counts (Node objects only add the keep-terminated label here).
    """
    if pv is None or attach_driver(pv, drivers) is None:
        return {}
    want: dict[str, set[str]] = {}
    for pod in pods:
        node = _spec(pod).get("nodeName") or ""
        if not pod_volumes_desired(pod, nodes.get(node)):
            continue
        namespace = _meta(pod).get("namespace") or "default"
        for _, claim_name in pod_claims(pod):
            if claim_bound_to(claims.get(f"{namespace}/{claim_name}"), pv):
                want.setdefault(node, set()).add(_key(pod))
    return {node: tuple(sorted(keys)) for node, keys in sorted(want.items())}


def attachments_of(pv_name: str, vas: Iterable[Obj]) -> dict[str, Obj]:
    """The actual state of world for one volume: node → its VolumeAttachment, for every
    attachment of ``pv_name`` whether attaching, attached or detaching."""
    out: dict[str, Obj] = {}
    for va in vas:
        spec = _spec(va)
        if (spec.get("source") or {}).get("persistentVolumeName") == pv_name and spec.get("nodeName"):
            out[spec["nodeName"]] = va
    return out


def is_attached(va: Obj | None) -> bool:
    """Attached and staying so: the external attacher said attached, nobody is detaching."""
    return va is not None and bool((va.get("status") or {}).get("attached")) and not is_deleting(va)
