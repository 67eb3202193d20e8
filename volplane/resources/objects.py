"""Typed views of the objects the control loops read, in Kubernetes' shapes.

    pv = PersistentVolume(obj)                         # a view of a dict the informer holds
    pv.claim_ref.key if pv.claim_ref else None         # "default/data"
    claim = PersistentVolumeClaim.get(informer.get, "default/data")   # None when there is none
    claim.volume_name, claim.request, claim.storage_class
    Pod(obj).claim_keys                                # {"default/data"}
    Node(obj).ready; VolumeAttachment(obj).pv_name; StorageClass(obj).delays_binding
    await objects.update(pv.raw, patch, reason="bind")  # writes take the dict itself

A view wraps the object the informer (or the store) holds and copies nothing: reading
through it is a dict lookup, writes still hand the dict (``view.raw``) to ``ObjectStore``,
so the stored bytes are exactly what they were. Views are chosen over parsed models for
that reason and for speed: the loops look at every PV of the cluster on each FindBestMatch,
and wrapping one costs three dict lookups.

Every accessor tolerates a missing or null section (an object is validated when it is
written, but a hand-made object in a test or a placeholder Node need not be complete)
and answers with Kubernetes' default: an empty string, list or mapping, ``Filesystem``
for a volumeMode, ``default`` for a namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from volplane.resources import names
from volplane.resources.kinds import BY_NAME, Kind, namespaced_key
from volplane.resources.schema import quantity

__all__ = [
    "CSIDriver",
    "ClaimRef",
    "Getter",
    "Node",
    "Obj",
    "Object",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "StorageClass",
    "VolumeAttachment",
    "VolumeAttributesClass",
]

Obj = dict[str, Any]
# ``Informer.get``'s shape: (kind, key) → the object or None; pure functions take one of these.
Getter = Callable[[Kind, str], Obj | None]

V = TypeVar("V", bound="Object")

FILESYSTEM = "Filesystem"


class Object:
    """What every kind has: ``metadata``, ``spec`` and ``status`` (each ``{}`` when absent)."""

    __slots__ = ("metadata", "raw", "spec", "status")
    KIND: ClassVar[Kind]

    def __init__(self, raw: Obj) -> None:
        self.raw = raw
        self.metadata: Obj = raw.get("metadata") or {}
        self.spec: Obj = raw.get("spec") or {}
        self.status: Obj = raw.get("status") or {}

    @classmethod
    def of(cls: type[V], raw: Obj | None) -> V | None:
        """The view of ``raw``, or None for no object (what ``Informer.get`` returns for a missing key)."""
        return None if raw is None else cls(raw)

    @classmethod
    def get(cls: type[V], get: Getter, key: str) -> V | None:
        """``PersistentVolume.get(informer.get, "pvc-1")``: look the object up by this view's kind."""
        return cls.of(get(cls.KIND, key))

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        """The namespace (``default`` when unset) of a namespaced kind; "" for a cluster-scoped one."""
        return (self.metadata.get("namespace") or "default") if self.KIND.namespaced else ""

    @property
    def key(self) -> str:
        """``namespace/name`` (or ``name``): Kubernetes' cache key, the key loops queue (``Ref.key``)."""
        return namespaced_key(self.namespace, self.name) if self.KIND.namespaced else self.name

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid") or "")

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.get("annotations") or {}

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.get("labels") or {}

    @property
    def finalizers(self) -> list[str]:
        return list(self.metadata.get("finalizers") or [])

    @property
    def deleting(self) -> bool:
        """Marked for deletion (``metadata.deletionTimestamp``), waiting for its finalizers."""
        return bool(self.metadata.get("deletionTimestamp"))

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class ClaimRef:
    """A PV's ``spec.claimRef``: the claim it is (or is to be) bound to. Without a uid it is a
    user's pre-binding, which any claim of that name may take."""

    __slots__ = ("raw",)

    def __init__(self, raw: Obj) -> None:
        self.raw = raw

    @property
    def name(self) -> str:
        return str(self.raw.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.raw.get("namespace") or "default")

    @property
    def uid(self) -> str:
        return str(self.raw.get("uid") or "")

    @property
    def key(self) -> str:
        return namespaced_key(self.namespace, self.name)

    def matches(self, obj: Object) -> bool:
        """Whether this names ``obj`` (a claim, or any object a reference of this shape points
        at): namespace and name, and its uid when the ref carries one (Kubernetes'
        IsVolumeBoundToClaim)."""
        if self.name != obj.name or self.namespace != obj.namespace:
            return False
        return not self.uid or self.uid == obj.uid


class _Storage(Object):
    """What a PersistentVolume and a PersistentVolumeClaim both say about the storage."""

    __slots__ = ()

    @property
    def access_modes(self) -> list[str]:
        return list(self.spec.get("accessModes") or [])

    @property
    def volume_mode(self) -> str:
        return str(self.spec.get("volumeMode") or FILESYSTEM)

    @property
    def block(self) -> bool:
        return self.spec.get("volumeMode") == "Block"


class PersistentVolume(_Storage):
    __slots__ = ()
    KIND = BY_NAME["PersistentVolume"]

    @property
    def claim_ref(self) -> ClaimRef | None:
        ref = self.spec.get("claimRef")
        return ClaimRef(ref) if ref else None

    @property
    def capacity(self) -> int:
        """Bytes of ``spec.capacity.storage``."""
        return quantity(self.spec["capacity"]["storage"])

    @property
    def storage_class(self) -> str:
        return str(self.spec.get("storageClassName") or "")

    @property
    def reclaim_policy(self) -> str:
        return str(self.spec.get("persistentVolumeReclaimPolicy") or "")

    @property
    def mount_options(self) -> list[str]:
        return list(self.spec.get("mountOptions") or [])

    @property
    def csi(self) -> Obj | None:
        """The CSI source (``driver``, ``volumeHandle``, …), or None for an in-tree volume."""
        csi: Obj | None = self.spec.get("csi")
        return csi or None

    @property
    def csi_driver(self) -> str:
        return str((self.spec.get("csi") or {}).get("driver") or "")

    @property
    def plugin(self) -> str:
        """``kubernetes.io/csi``, ``kubernetes.io/nfs``, …: the volume plugin of its source."""
        return names.plugin_of(self.spec)

    @property
    def unique_name(self) -> str:
        """What Node ``status.volumesInUse`` lists: ``kubernetes.io/csi/<driver>^<handle>`` for CSI."""
        return names.unique_volume_name(self.raw)

    @property
    def attributes_class(self) -> str:
        """``spec.volumeAttributesClassName``: the VolumeAttributesClass the volume has now ("" for none)."""
        return str(self.spec.get("volumeAttributesClassName") or "")


class PersistentVolumeClaim(_Storage):
    __slots__ = ()
    KIND = BY_NAME["PersistentVolumeClaim"]

    @property
    def volume_name(self) -> str:
        return str(self.spec.get("volumeName") or "")

    @property
    def request(self) -> int:
        """Bytes of ``spec.resources.requests.storage``."""
        return quantity(self.spec["resources"]["requests"]["storage"])

    @property
    def storage_class(self) -> str:
        """The class name ("" for none); the beta annotation wins over spec.storageClassName."""
        return names.claim_class(self.raw)

    @property
    def selector(self) -> Obj | None:
        selector: Obj | None = self.spec.get("selector")
        return selector

    @property
    def attributes_class(self) -> str:
        """``spec.volumeAttributesClassName``: the VolumeAttributesClass the claim asks for ("" for none)."""
        return str(self.spec.get("volumeAttributesClassName") or "")

    @property
    def selected_node(self) -> str:
        """The node the scheduler chose for a delayed claim (``volume.kubernetes.io/selected-node``)."""
        return self.annotations.get(names.ANN_SELECTED_NODE, "")

    def ref(self) -> Obj:
        """The claimRef a PV bound to this claim carries."""
        return {"kind": self.KIND.name, "namespace": self.metadata["namespace"], "name": self.metadata["name"], "uid": self.metadata["uid"], "apiVersion": "v1"}


class Pod(Object):
    __slots__ = ()
    KIND = BY_NAME["Pod"]

    @property
    def node_name(self) -> str:
        return str(self.spec.get("nodeName") or "")

    @property
    def volumes(self) -> list[Obj]:
        return list(self.spec.get("volumes") or [])

    @property
    def claims(self) -> list[tuple[str, str]]:
        """(pod volume name, claim name) of every claim the pod uses."""
        return names.pod_claims(self.raw)

    def claim_key(self, claim_name: str) -> str:
        """The key of one of the pod's claims (claims live in the pod's namespace)."""
        return namespaced_key(self.namespace, claim_name)

    @property
    def claim_keys(self) -> set[str]:
        """``namespace/claim`` of every claim the pod uses."""
        return {self.claim_key(claim) for _, claim in self.claims}

    @property
    def terminated(self) -> bool:
        """Phase Succeeded or Failed: its containers will not run again."""
        return names.pod_terminated(self.raw)


class Node(Object):
    __slots__ = ()
    KIND = BY_NAME["Node"]

    @property
    def unschedulable(self) -> bool:
        return bool(self.spec.get("unschedulable"))

    @property
    def ready(self) -> bool:
        """Condition Ready is True."""
        conditions = self.status.get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    @property
    def volumes_in_use(self) -> list[str]:
        """What the node's volume manager has (or is about to have) mounted: no detach while listed."""
        return list(self.status.get("volumesInUse") or [])

    @property
    def volumes_attached(self) -> list[Obj]:
        return list(self.status.get("volumesAttached") or [])

    def csi_node_id(self, driver: str) -> str | None:
        """The node's id for ``driver`` (annotation csi.volume.kubernetes.io/nodeid)."""
        return names.csi_node_id(self.raw, driver)


class VolumeAttachment(Object):
    __slots__ = ()
    KIND = BY_NAME["VolumeAttachment"]

    @property
    def attacher(self) -> str:
        return str(self.spec.get("attacher") or "")

    @property
    def node_name(self) -> str:
        return str(self.spec.get("nodeName") or "")

    @property
    def pv_name(self) -> str:
        return str((self.spec.get("source") or {}).get("persistentVolumeName") or "")

    @property
    def attached(self) -> bool:
        """The external attacher said attached (whether or not it is being detached now)."""
        return bool(self.status.get("attached"))

    def error(self, field: str) -> str:
        """The message of ``status.attachError`` or ``status.detachError`` ("" for none)."""
        return str((self.status.get(field) or {}).get("message") or "")

    @property
    def attachment_metadata(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.status.get("attachmentMetadata") or {}).items()}


class StorageClass(Object):
    """A StorageClass keeps its fields at the top level, not under ``spec``."""

    __slots__ = ()
    KIND = BY_NAME["StorageClass"]

    @property
    def provisioner(self) -> str:
        return str(self.raw.get("provisioner") or "")

    @property
    def parameters(self) -> dict[str, str]:
        return dict(self.raw.get("parameters") or {})

    @property
    def reclaim_policy(self) -> str:
        """``Delete`` unless the class says otherwise (the PVs it provisions inherit it)."""
        return str(self.raw.get("reclaimPolicy") or "Delete")

    @property
    def mount_options(self) -> list[str]:
        return list(self.raw.get("mountOptions") or [])

    @property
    def delays_binding(self) -> bool:
        """``volumeBindingMode: WaitForFirstConsumer``: its claims wait for a pod to be scheduled."""
        return self.raw.get("volumeBindingMode") == "WaitForFirstConsumer"


class CSIDriver(Object):
    __slots__ = ()
    KIND = BY_NAME["CSIDriver"]

    @property
    def attach_required(self) -> bool:
        """A driver attaches unless its CSIDriver says ``attachRequired: false``."""
        return self.spec.get("attachRequired", True) is not False


class VolumeAttributesClass(Object):
    """Like a StorageClass, its fields sit at the top level: ``driverName``, ``parameters``."""

    __slots__ = ()
    KIND = BY_NAME["VolumeAttributesClass"]

    @property
    def driver(self) -> str:
        return str(self.raw.get("driverName") or "")

    @property
    def parameters(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.raw.get("parameters") or {}).items()}
