"""The kinds of object the standalone control plane keeps, and how to name one.

    kind = resolve("pvc")                       # kubectl's spellings all work
    ref = Ref(kind, "default", "nfs-pvc")
    ref.subject                                  # "vp.ev.res.pvc.default.nfs-pvc"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from volplane.errors import InvalidArgument
from volplane.quarantine import Undecodable

__all__ = ["KINDS", "RECORDED_EVENTS", "RESOURCE_EVENTS", "Kind", "Ref", "key_of", "namespaced_key", "ref", "ref_of", "ref_of_subject", "resolve"]

# Objects live on ``vp.ev.res.<kind>.<namespace>.<name>``; the events recorded about
# them (Kubernetes' Event objects) on ``vp.ev.rec.…``, so that recording one never
# moves the object's resourceVersion.
RESOURCE_EVENTS = "vp.ev.res.>"
RECORDED_EVENTS = "vp.ev.rec.>"
_CLUSTER = "_"  # the namespace token of cluster-scoped objects ('_' is not valid in a namespace)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # DNS-1123 subdomain
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    plural: str
    short: tuple[str, ...]
    namespaced: bool
    api_version: str
    token: str
    # Older apiVersions of the same shape a document may still be written in; it is
    # stored under ``api_version`` (the API server's conversion, for kinds that need none).
    also: tuple[str, ...] = ()

    @property
    def events(self) -> str:
        return f"vp.ev.res.{self.token}.>"


_GROUP_BETAS = ("groupsnapshot.storage.k8s.io/v1beta2", "groupsnapshot.storage.k8s.io/v1beta1")
KINDS: tuple[Kind, ...] = (
    Kind("StorageClass", "storageclasses", ("sc",), False, "storage.k8s.io/v1", "sc"),
    Kind("PersistentVolume", "persistentvolumes", ("pv",), False, "v1", "pv"),
    Kind("PersistentVolumeClaim", "persistentvolumeclaims", ("pvc",), True, "v1", "pvc"),
    Kind("Pod", "pods", ("po",), True, "v1", "pod"),
    Kind("Node", "nodes", ("no",), False, "v1", "node"),
    Kind("VolumeAttachment", "volumeattachments", ("va",), False, "storage.k8s.io/v1", "va"),
    Kind("CSIDriver", "csidrivers", (), False, "storage.k8s.io/v1", "csidriver"),
    Kind("VolumeAttributesClass", "volumeattributesclasses", ("vac",), False, "storage.k8s.io/v1", "vac"),
    # kubernetes-csi/external-snapshotter's kinds; the group snapshot ones in their newest
    # version (groupsnapshot.storage.k8s.io/v1, the shape of v1beta2), whose v1beta2 and
    # v1beta1 documents are accepted too.
    Kind("VolumeSnapshotClass", "volumesnapshotclasses", ("vsclass", "vsclasses"), False, "snapshot.storage.k8s.io/v1", "vsclass"),
    Kind("VolumeSnapshot", "volumesnapshots", ("vs",), True, "snapshot.storage.k8s.io/v1", "vs"),
    Kind("VolumeSnapshotContent", "volumesnapshotcontents", ("vsc", "vscs"), False, "snapshot.storage.k8s.io/v1", "vsc"),
    Kind("VolumeGroupSnapshotClass", "volumegroupsnapshotclasses", ("vgsclass", "vgsclasses"), False, "groupsnapshot.storage.k8s.io/v1", "vgsclass", _GROUP_BETAS),
    Kind("VolumeGroupSnapshot", "volumegroupsnapshots", ("vgs",), True, "groupsnapshot.storage.k8s.io/v1", "vgs", _GROUP_BETAS),
    Kind("VolumeGroupSnapshotContent", "volumegroupsnapshotcontents", ("vgsc", "vgscs"), False, "groupsnapshot.storage.k8s.io/v1", "vgsc", _GROUP_BETAS),
)
_BY_SPELLING = {
    spelling: kind
    for kind in KINDS
    for spelling in (kind.name.lower(), kind.plural, *kind.short, kind.token)
}
_BY_TOKEN = {kind.token: kind for kind in KINDS}
BY_NAME = {kind.name: kind for kind in KINDS}


def resolve(text: str) -> Kind:
    """``resolve("pv") is resolve("PersistentVolumes")``; an unknown kind is InvalidArgument."""
    kind = _BY_SPELLING.get(text.strip().lower().split(".")[0])
    if kind is None:
        known = ", ".join(k.plural for k in KINDS)
        shown = text if len(text) <= 64 and text.isprintable() else repr(text[:64])[1:-1] + ("…" if len(text) > 64 else "")
        raise InvalidArgument(f'the server doesn\'t have a resource type "{shown}" (known: {known})')
    return kind


@dataclass(frozen=True, slots=True)
class Ref:
    kind: Kind
    namespace: str  # "" for cluster-scoped kinds
    name: str

    @property
    def subject(self) -> str:
        return f"vp.ev.res.{self.kind.token}.{self._tail}"

    @property
    def recorded(self) -> str:
        return f"vp.ev.rec.{self.kind.token}.{self._tail}"

    @property
    def key(self) -> str:
        """``namespace/name`` (or just ``name``): Kubernetes' cache key."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def _tail(self) -> str:
        # Names are DNS subdomains: '.' cannot stand in a subject token, '~' can and
        # never occurs in a name, so the mapping is one to one.
        return f"{self.namespace or _CLUSTER}.{self.name.replace('.', '~')}"

    def __str__(self) -> str:
        return f"{self.kind.name}/{self.key}"


def ref(kind: Kind, namespace: str | None, name: str) -> Ref:
    """The reference of a named object; InvalidArgument unless the name is a DNS-1123
    subdomain and the namespace a DNS-1123 label. Both become tokens of the object's
    subject: a '*' or '>' there would be a wildcard that reads (and appends to) other
    objects' events, a '.' another token."""
    if not isinstance(name, str) or not isinstance(namespace, str | None):
        raise InvalidArgument(f"metadata: name and namespace must be strings, not {type(name).__name__} and {type(namespace).__name__}")
    ns = (namespace or "default") if kind.namespaced else ""
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise InvalidArgument(f"name: {name[:64]!r} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')")
    if ns and (len(ns) > 63 or not _NAMESPACE.fullmatch(ns)):
        raise InvalidArgument(f"namespace: {ns[:64]!r} is not a DNS-1123 label")
    return Ref(kind, ns, name)


def ref_of(obj: dict[str, Any]) -> Ref:
    """The reference of a (validated) object."""
    meta = obj.get("metadata") or {}
    return ref(BY_NAME[obj["kind"]], meta.get("namespace"), meta.get("name", ""))


def key_of(obj: dict[str, Any]) -> str:
    """``namespace/name`` (or ``name``) of an object: the key controllers queue."""
    return ref_of(obj).key


def namespaced_key(namespace: str | None, name: str) -> str:
    """``namespace/name`` of a namespaced object known by name only — a PV's claimRef, a
    pod's claim — with Kubernetes' ``default`` for an unset namespace: the same key
    ``key_of`` gives the object itself."""
    return f"{namespace or 'default'}/{name}"


def ref_of_subject(subject: str) -> Ref:
    """``vp.ev.res.pvc.default.nfs-pvc`` → Ref; inverse of ``Ref.subject``.

    The subject comes from the log, where anyone allowed to append may have written to a
    kind that does not exist (``vp.ev.res.persistentvolume._.x``) or a name no object can
    have: that is Undecodable, and its reader quarantines the event (``volplane.quarantine``).
    """
    parts = subject.split(".")
    if len(parts) != 6 or parts[:3] != ["vp", "ev", "res"]:
        raise Undecodable(f"{_shown(subject)} is not an object's subject (vp.ev.res.<kind>.<namespace>.<name>)")
    token, namespace, name = parts[3], parts[4], parts[5].replace("~", ".")
    kind = _BY_TOKEN.get(token)
    if kind is None:
        raise Undecodable(f"unknown kind {_shown(token)} in {_shown(subject)}")
    if (namespace == _CLUSTER) == kind.namespaced:
        raise Undecodable(f"{kind.name} is {'namespaced' if kind.namespaced else 'cluster-scoped'}, not so in {_shown(subject)}")
    if len(name) > 253 or not _NAME.fullmatch(name) or (kind.namespaced and (len(namespace) > 63 or not _NAMESPACE.fullmatch(namespace))):
        raise Undecodable(f"no {kind.name} can be named as in {_shown(subject)}")
    return Ref(kind, "" if namespace == _CLUSTER else namespace, name)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "…")
