"""The volume manager's desired state of world: which pods on this node want which volumes.

Pure functions over the objects in memory, so they are tested without a stack:

    is_desired(pod, "node-1", keep_terminated=False)     # on this node, not deleted, not terminated
    resolve(pod, pod["spec"]["volumes"][0], get)          # → DesiredVolume, or Unresolved(message)

``get(kind, key)`` returns an object (or None), as ``Informer.get`` does. A claim leads to
its bound PV, whose source picks the plugin: ``csi`` out of tree, ``nfs``, ``hostPath``
and ``local`` in tree; a pod's inline ``hostPath`` and ``nfs`` volumes need no claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from volplane.resources.kinds import BY_NAME
from volplane.resources.objects import Getter, Obj, PersistentVolume, PersistentVolumeClaim, Pod

__all__ = ["POD", "PV", "PVC", "DesiredVolume", "Unresolved", "claim_keys", "is_desired", "resolve"]

PV = BY_NAME["PersistentVolume"]
PVC = BY_NAME["PersistentVolumeClaim"]
POD = BY_NAME["Pod"]

CSI = "kubernetes.io/csi"
IN_TREE_SOURCES = {"nfs": "kubernetes.io/nfs", "hostPath": "kubernetes.io/host-path", "local": "kubernetes.io/local-volume"}


@dataclass(frozen=True)
class DesiredVolume:
    """One volume a pod wants mounted, with everything a plugin needs to mount it."""

    name: str  # the pod's name for it (spec.volumes[].name)
    spec_name: str  # the PV's name, or the pod volume's name for an inline volume
    plugin: str  # kubernetes.io/csi, kubernetes.io/host-path, …
    source: dict[str, Any] = field(hash=False)  # the PV's (or inline) source: {"driver": …, "volumeHandle": …}
    unique_name: str = ""
    block: bool = False
    readonly: bool = False
    access_mode: str = "ReadWriteOnce"
    mount_options: tuple[str, ...] = ()
    pv: Obj | None = field(default=None, hash=False, compare=False)

    @property
    def is_csi(self) -> bool:
        return self.plugin == CSI

    @property
    def driver(self) -> str:
        return str(self.source.get("driver", ""))

    @property
    def handle(self) -> str:
        return str(self.source.get("volumeHandle", ""))


@dataclass(frozen=True)
class Unresolved:
    """A pod volume that cannot be mounted (yet): ``hard`` when waiting will not help."""

    name: str
    message: str
    hard: bool = False


def is_desired(pod: Obj | None, node: str, *, keep_terminated: bool) -> bool:
    """Whether the pod's volumes belong mounted on ``node``: Kubernetes' DSW populator keeps a pod
    that is scheduled here, not being deleted, and not terminated (unless the node keeps the
    volumes of terminated pods, label volumes.kubernetes.io/keep-terminated-pod-volumes)."""
    p = Pod.of(pod)
    if p is None or p.node_name != node or not p.uid or p.deleting:
        return False
    return keep_terminated or not p.terminated


def claim_keys(pod: Obj) -> set[str]:
    """``namespace/claim`` of every claim the pod uses."""
    return Pod(pod).claim_keys


def resolve(pod: Obj, volume: Obj, get: Getter) -> DesiredVolume | Unresolved:
    name = volume["name"]
    claim = volume.get("persistentVolumeClaim")
    if claim is not None:
        return _resolve_claim(pod, name, claim, get)
    for key in ("hostPath", "nfs"):
        source = volume.get(key)
        if source is not None:
            plugin = IN_TREE_SOURCES[key]
            return DesiredVolume(
                name=name, spec_name=name, plugin=plugin, source=dict(source),
                unique_name=f"{plugin}/{Pod(pod).uid}-{name}", readonly=bool(source.get("readOnly", False)),
            )
    kinds = sorted(k for k in volume if k != "name")
    what = kinds[0] if kinds else "none"
    return Unresolved(name, f'volume source "{what}" is not supported here (persistentVolumeClaim, hostPath, nfs)', hard=True)


def _resolve_claim(pod: Obj, name: str, claim: Obj, get: Getter) -> DesiredVolume | Unresolved:
    p = Pod(pod)
    claim_name = claim["claimName"]
    claim_key = p.claim_key(claim_name)
    pvc = PersistentVolumeClaim.get(get, claim_key)
    if pvc is None:
        return Unresolved(name, f'persistentvolumeclaim "{claim_name}" not found')
    pv_name = pvc.volume_name
    if pvc.phase != "Bound" or not pv_name:
        return Unresolved(name, f'persistentvolumeclaim "{claim_name}" is not bound yet')
    pv = PersistentVolume.get(get, pv_name)
    if pv is None:
        return Unresolved(name, f'persistentvolume "{pv_name}" bound to claim "{claim_name}" not found')
    ref = pv.claim_ref
    if ref is None or not ref.matches(pvc):
        return Unresolved(name, f'persistentvolume "{pv_name}" is not bound to claim "{claim_key}" yet')
    spec = pv.spec
    block = pv.block
    if block != pvc.block:
        return Unresolved(name, f'volumeMode of claim "{claim_name}" does not match persistentvolume "{pv_name}"', hard=True)
    access_mode = (pv.access_modes or ["ReadWriteOnce"])[0]
    mount_options = tuple(pv.mount_options)

    def desired(plugin: str, source: Obj) -> DesiredVolume:
        return DesiredVolume(
            name=name, plugin=plugin, source=source, unique_name=pv.unique_name, readonly=bool(claim.get("readOnly") or source.get("readOnly")),
            spec_name=pv_name, access_mode=access_mode, mount_options=mount_options, pv=pv.raw, block=block,
        )

    if "csi" in spec:
        return desired(CSI, dict(spec["csi"]))
    for key, plugin in IN_TREE_SOURCES.items():
        if key in spec:
            if block:
                return Unresolved(name, f'persistentvolume "{pv_name}": volumeMode Block is not supported by {plugin}', hard=True)
            return desired(plugin, dict(spec[key]))
    return Unresolved(name, f'persistentvolume "{pv_name}" has no volume source this node can mount', hard=True)
