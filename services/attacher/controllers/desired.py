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

from volplane.resources.names import LABEL_KEEP_TERMINATED
from volplane.resources.objects import CSIDriver, Node, Obj, Object, PersistentVolume, PersistentVolumeClaim, Pod, VolumeAttachment

__all__ = [
    "MULTI_NODE_MODES",
    "Obj",
    "attach_driver",
    "attachments_of",
    "claim_bound_to",
    "desired_nodes",
    "is_attached",
    "is_deleting",
    "keeps_terminated_pod_volumes",
    "multi_attach_allowed",
    "pod_volumes_desired",
]

# Kubernetes' isMultiAttachAllowed: a PV may be attached to several nodes only when one
# of its access modes is a many-node mode; ReadWriteOnce and ReadWriteOncePod are not.
MULTI_NODE_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})


def is_deleting(obj: Obj | None) -> bool:
    return obj is not None and Object(obj).deleting


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
    volume = PersistentVolume.of(pv)
    if volume is None or volume.csi is None:
        return None
    driver = volume.csi_driver
    csidriver = CSIDriver.of(drivers.get(driver))
    if csidriver is not None and not csidriver.attach_required:
        return None
    return driver or None


def multi_attach_allowed(pv: Obj | None) -> bool:
    """Whether ``pv`` may be attached to more than one node at a time."""
    return pv is not None and any(mode in MULTI_NODE_MODES for mode in PersistentVolume(pv).access_modes)


def keeps_terminated_pod_volumes(node: Obj | None) -> bool:
    """A Node labelled ``volumes.kubernetes.io/keep-terminated-pod-volumes`` keeps the
    volumes of its terminated pods attached. The value does not matter, only that the
    label is there. Kubernetes reads the same key from the Node's annotations, so that
    place counts too."""
    n = Node.of(node)
    return n is not None and (LABEL_KEEP_TERMINATED in n.labels or LABEL_KEEP_TERMINATED in n.annotations)


def pod_volumes_desired(pod: Obj, node: Obj | None) -> bool:
    """Whether the pod's volumes belong in the desired state of world: it is scheduled
    (spec.nodeName), not being deleted, and not terminated — unless its node keeps the
    volumes of terminated pods (FindAndRemoveDeletedPods removes the others)."""
    p = Pod(pod)
    if not p.node_name or p.deleting:
        return False
    return not p.terminated or keeps_terminated_pod_volumes(node)


def claim_bound_to(claim: Obj | None, pv: Obj) -> bool:
    """Whether ``claim`` is bound to ``pv``, as Kubernetes requires before it attaches a
    claim's volume: claim phase Bound with spec.volumeName naming the PV, and the PV's
    claimRef pointing back at the claim (its uid too, when it carries one)."""
    pvc = PersistentVolumeClaim.of(claim)
    if pvc is None or pvc.phase != "Bound":
        return False
    volume = PersistentVolume(pv)
    if not volume.name or pvc.volume_name != volume.name:
        return False
    ref = volume.claim_ref
    return ref is not None and ref.matches(pvc)


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
    for obj in pods:
        pod = Pod(obj)
        node = pod.node_name
        if not pod_volumes_desired(obj, nodes.get(node)):
            continue
        for _, claim_name in pod.claims:
            if claim_bound_to(claims.get(pod.claim_key(claim_name)), pv):
                want.setdefault(node, set()).add(pod.key)
    return {node: tuple(sorted(keys)) for node, keys in sorted(want.items())}


def attachments_of(pv_name: str, vas: Iterable[Obj]) -> dict[str, Obj]:
    """The actual state of world for one volume: node → its VolumeAttachment, for every
    attachment of ``pv_name`` whether attaching, attached or detaching."""
    out: dict[str, Obj] = {}
    for obj in vas:
        va = VolumeAttachment(obj)
        if va.pv_name == pv_name and va.node_name:
            out[va.node_name] = obj
    return out


def is_attached(va: Obj | None) -> bool:
    """Attached and staying so: the external attacher said attached, nobody is detaching."""
    attachment = VolumeAttachment.of(va)
    return attachment is not None and attachment.attached and not attachment.deleting
