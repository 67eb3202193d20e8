"""Typed views of external-snapshotter's kinds, in Kubernetes' shapes (as ``objects.py``
has them for the core kinds).

    vs = VolumeSnapshot(obj)
    vs.claim_name, vs.content_name, vs.class_name, vs.bound_content, vs.ready
    content = VolumeSnapshotContent.get(informer.get, "snapcontent-…")
    content.ref.key if content else None                # "default/snap": its volumeSnapshotRef
    content.ref.matches(vs)                             # bound to vs (name, namespace, uid once set)
    VolumeSnapshotClass(obj).default                    # the is-default-class annotation

Like every view they copy nothing and tolerate missing sections.
"""

from __future__ import annotations

from typing import ClassVar

from volplane.resources.kinds import BY_NAME, namespaced_key
from volplane.resources.names import ANN_DEFAULT_GROUP_SNAPSHOT_CLASS, ANN_DEFAULT_SNAPSHOT_CLASS
from volplane.resources.objects import ClaimRef, Obj, Object

__all__ = [
    "BoundRef",
    "VolumeGroupSnapshot",
    "VolumeGroupSnapshotClass",
    "VolumeGroupSnapshotContent",
    "VolumeSnapshot",
    "VolumeSnapshotClass",
    "VolumeSnapshotContent",
]


class BoundRef(ClaimRef):
    """A content's ``volumeSnapshotRef`` / ``volumeGroupSnapshotRef``: an ObjectReference like a
    PV's claimRef (``ref.matches(snapshot)``). Without a uid it is a pre-provisioned content
    waiting for the (group) snapshot of that name."""

    __slots__ = ()


class _Class(Object):
    """A (group) snapshot class: its fields sit at the top level, as a StorageClass's do."""

    __slots__ = ()
    DEFAULT: ClassVar[str]

    @property
    def driver(self) -> str:
        return str(self.raw.get("driver") or "")

    @property
    def deletion_policy(self) -> str:
        return str(self.raw.get("deletionPolicy") or "")

    @property
    def parameters(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.raw.get("parameters") or {}).items()}

    @property
    def default(self) -> bool:
        return self.annotations.get(self.DEFAULT) == "true"


class VolumeSnapshotClass(_Class):
    __slots__ = ()
    KIND = BY_NAME["VolumeSnapshotClass"]
    DEFAULT = ANN_DEFAULT_SNAPSHOT_CLASS


class VolumeGroupSnapshotClass(_Class):
    __slots__ = ()
    KIND = BY_NAME["VolumeGroupSnapshotClass"]
    DEFAULT = ANN_DEFAULT_GROUP_SNAPSHOT_CLASS


class _Readiness(Object):
    """What (group) snapshots and their contents share: ``status.readyToUse`` and ``status.error``."""

    __slots__ = ()

    @property
    def ready(self) -> bool:
        return self.status.get("readyToUse") is True

    @property
    def error(self) -> str:
        return str((self.status.get("error") or {}).get("message") or "")


class VolumeSnapshot(_Readiness):
    __slots__ = ()
    KIND = BY_NAME["VolumeSnapshot"]

    @property
    def claim_name(self) -> str:
        """``spec.source.persistentVolumeClaimName``: a dynamic snapshot of this claim ("" if pre-provisioned)."""
        return str((self.spec.get("source") or {}).get("persistentVolumeClaimName") or "")

    @property
    def content_name(self) -> str:
        """``spec.source.volumeSnapshotContentName``: the pre-provisioned content it binds ("" if dynamic)."""
        return str((self.spec.get("source") or {}).get("volumeSnapshotContentName") or "")

    @property
    def class_name(self) -> str:
        return str(self.spec.get("volumeSnapshotClassName") or "")

    @property
    def bound_content(self) -> str:
        return str(self.status.get("boundVolumeSnapshotContentName") or "")

    @property
    def group_name(self) -> str:
        """``status.volumeGroupSnapshotName``: the group snapshot it is a member of ("" for none)."""
        return str(self.status.get("volumeGroupSnapshotName") or "")

    def claim_key(self) -> str:
        return namespaced_key(self.namespace, self.claim_name)


class VolumeGroupSnapshot(_Readiness):
    __slots__ = ()
    KIND = BY_NAME["VolumeGroupSnapshot"]

    @property
    def selector(self) -> Obj | None:
        selector: Obj | None = (self.spec.get("source") or {}).get("selector")
        return selector

    @property
    def content_name(self) -> str:
        return str((self.spec.get("source") or {}).get("volumeGroupSnapshotContentName") or "")

    @property
    def class_name(self) -> str:
        return str(self.spec.get("volumeGroupSnapshotClassName") or "")

    @property
    def bound_content(self) -> str:
        return str(self.status.get("boundVolumeGroupSnapshotContentName") or "")


class _Content(_Readiness):
    __slots__ = ()
    REF: ClassVar[str]

    @property
    def ref(self) -> BoundRef:
        return BoundRef(self.spec.get(self.REF) or {})

    @property
    def driver(self) -> str:
        return str(self.spec.get("driver") or "")

    @property
    def deletion_policy(self) -> str:
        return str(self.spec.get("deletionPolicy") or "")


class VolumeSnapshotContent(_Content):
    __slots__ = ()
    KIND = BY_NAME["VolumeSnapshotContent"]
    REF = "volumeSnapshotRef"

    @property
    def volume_handle(self) -> str:
        """``spec.source.volumeHandle``: the volume to snapshot (a dynamic content)."""
        return str((self.spec.get("source") or {}).get("volumeHandle") or "")

    @property
    def source_snapshot_handle(self) -> str:
        """``spec.source.snapshotHandle``: a pre-provisioned content's existing snapshot."""
        return str((self.spec.get("source") or {}).get("snapshotHandle") or "")

    @property
    def class_name(self) -> str:
        return str(self.spec.get("volumeSnapshotClassName") or "")

    @property
    def snapshot_handle(self) -> str:
        """The CSI snapshot id: ``status.snapshotHandle``, or the pre-provisioned one."""
        return str(self.status.get("snapshotHandle") or self.source_snapshot_handle)

    @property
    def group_handle(self) -> str:
        """``status.volumeGroupSnapshotHandle``: a member of this group snapshot ("" for none)."""
        return str(self.status.get("volumeGroupSnapshotHandle") or "")


class VolumeGroupSnapshotContent(_Content):
    __slots__ = ()
    KIND = BY_NAME["VolumeGroupSnapshotContent"]
    REF = "volumeGroupSnapshotRef"

    @property
    def volume_handles(self) -> list[str]:
        return [str(h) for h in (self.spec.get("source") or {}).get("volumeHandles") or []]

    @property
    def preprovisioned(self) -> bool:
        return bool((self.spec.get("source") or {}).get("groupSnapshotHandles"))

    @property
    def class_name(self) -> str:
        return str(self.spec.get("volumeGroupSnapshotClassName") or "")

    @property
    def group_handle(self) -> str:
        return str(self.status.get("volumeGroupSnapshotHandle") or "")

    @property
    def members(self) -> list[Obj]:
        """``status.volumeSnapshotInfoList``: {volumeHandle, snapshotHandle, creationTime, readyToUse, restoreSize}."""
        return list(self.status.get("volumeSnapshotInfoList") or [])
