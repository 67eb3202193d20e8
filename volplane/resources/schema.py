"""What a valid object of each kind looks like, in Kubernetes' field names.

``validate(obj)`` checks one object and returns it with Kubernetes' defaults filled in
(namespace ``default``, volumeMode ``Filesystem``, a PV's reclaim policy ``Retain``, a
class's ``Delete`` and ``Immediate``); an invalid object raises InvalidArgument naming
the field: ``PersistentVolumeClaim "data": spec.resources.requests.storage: not a
quantity: '10GB'``. Fields this control plane does not use (a pod's containers, say)
are kept as they are.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, field_validator, model_validator

from volplane.config import parse_quantity
from volplane.errors import InvalidArgument
from volplane.resources.kinds import BY_NAME, KINDS

M = TypeVar("M", bound=BaseModel)

__all__ = ["ACCESS_MODES", "format_quantity", "quantity", "short_modes", "validate"]

ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./-]{1,100}")  # a field name shown as it is in an error's path
# A CSI driver's name: DNS-1123 subdomain style, at most 63 characters, no '/' (the CSI
# spec and Kubernetes' ValidateCSIDriverName); it becomes a directory name on nodes.
_CSI_DRIVER = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")


def quantity(text: Any) -> int:
    """Bytes of a quantity such as ``10Gi`` (plain integers are bytes)."""
    return parse_quantity(str(text))


def format_quantity(size: int) -> str:
    """``format_quantity(10 * 2**30) == "10Gi"``: the largest binary unit that divides it."""
    for unit, factor in (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def short_modes(modes: list[str] | None) -> str:
    return ",".join(ACCESS_MODES.get(m, m) for m in modes or [])


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Booleans are StrictBool throughout: an object is stored as given, not as validated, and a
# loop reading a lax-validated "false" would take it for true.


def _absolute_path(v: str) -> str:
    if not v.startswith("/") or "\x00" in v:
        raise ValueError("must be an absolute path")
    return v


def _class_name(v: str | None) -> str | None:
    # A VolumeAttributesClass's name; "" is allowed and means none (Kubernetes' rule).
    if v and (len(v) > 253 or not _DNS_SUBDOMAIN.fullmatch(v)):
        raise ValueError(f"{v[:64]!r} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')")
    return v


def _quantity(value: Any) -> Any:
    # A size goes to CSI as an int64 (CapacityRange.required_bytes).
    if quantity(value) >= 2**63:
        raise ValueError(f"{_show(value)} is more than a volume can hold (2^63 - 1 bytes)")
    return value


class Metadata(_Open):
    name: str = Field(max_length=253)
    namespace: str | None = Field(default=None, max_length=63)
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    finalizers: list[str] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DNS_SUBDOMAIN.fullmatch(v):
            raise ValueError(f"{v!r} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_LABEL.fullmatch(v):
            raise ValueError(f"{v!r} is not a DNS-1123 label")
        return v


class ObjectReference(_Open):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class ClaimReference(ObjectReference):
    # The PV controller finds the claim a volume is bound to by this name.
    name: str = Field(min_length=1)


class SelectorRequirement(_Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = []


class LabelSelectorSpec(_Strict):
    matchLabels: dict[str, str] = {}
    matchExpressions: list[SelectorRequirement] = []


class NodeSelectorTerm(_Strict):
    matchExpressions: list[SelectorRequirement] = []
    matchFields: list[SelectorRequirement] = []


class NodeSelector(_Strict):
    nodeSelectorTerms: list[NodeSelectorTerm] = Field(min_length=1)


class VolumeNodeAffinity(_Strict):
    required: NodeSelector | None = None


class NFSSource(_Strict):
    server: str = Field(min_length=1)
    path: str = Field(min_length=1)
    readOnly: StrictBool = False


class HostPathSource(_Strict):
    path: str = Field(min_length=1)
    type: Literal["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"] = ""

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return _absolute_path(v)


class LocalSource(_Strict):
    path: str = Field(min_length=1)
    fsType: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return _absolute_path(v)


class CSISource(_Strict):
    driver: str = Field(min_length=1, max_length=63)
    volumeHandle: str = Field(min_length=1)
    readOnly: StrictBool = False
    fsType: str | None = None
    volumeAttributes: dict[str, str] = {}
    controllerPublishSecretRef: dict[str, str] | None = None
    nodeStageSecretRef: dict[str, str] | None = None
    nodePublishSecretRef: dict[str, str] | None = None

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not _CSI_DRIVER.fullmatch(v):
            raise ValueError(f"{v!r} is not a CSI driver name")
        return v


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
VolumeMode = Literal["Filesystem", "Block"]


class PVSpec(_Strict):
    capacity: dict[Literal["storage"], Any]
    accessModes: list[AccessMode] = Field(min_length=1)
    persistentVolumeReclaimPolicy: str = "Retain"  # unknown policies are kept: the PV goes Failed (seed)
    storageClassName: str = ""
    mountOptions: list[str] = []
    volumeMode: VolumeMode = "Filesystem"
    nodeAffinity: VolumeNodeAffinity | None = None
    claimRef: ClaimReference | None = None
    nfs: NFSSource | None = None
    hostPath: HostPathSource | None = None
    local: LocalSource | None = None
    csi: CSISource | None = None
    volumeAttributesClassName: str | None = None

    @field_validator("volumeAttributesClassName")
    @classmethod
    def _attributes_class(cls, v: str | None) -> str | None:
        return _class_name(v)

    @field_validator("capacity")
    @classmethod
    def _capacity(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "storage" not in v:
            raise ValueError("storage is required")
        _quantity(v["storage"])
        return v


class ResourceRequirements(_Strict):
    requests: dict[Literal["storage"], Any] = {}
    limits: dict[Literal["storage"], Any] = {}

    @field_validator("requests", "limits")
    @classmethod
    def _sizes(cls, v: dict[str, Any]) -> dict[str, Any]:
        for size in v.values():
            _quantity(size)
        return v


class TypedLocalReference(_Strict):
    """A claim's ``dataSource``: an object in the claim's namespace (``apiGroup`` unset for core kinds)."""

    apiGroup: str | None = None
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)


class TypedReference(TypedLocalReference):
    """A claim's ``dataSourceRef``, which may name another namespace."""

    namespace: str | None = None


class PVCSpec(_Strict):
    accessModes: list[AccessMode] = Field(min_length=1)
    resources: ResourceRequirements
    storageClassName: str | None = None
    volumeMode: VolumeMode = "Filesystem"
    volumeName: str = ""
    selector: LabelSelectorSpec | None = None
    dataSource: TypedLocalReference | None = None
    dataSourceRef: TypedReference | None = None
    volumeAttributesClassName: str | None = None

    @field_validator("volumeAttributesClassName")
    @classmethod
    def _attributes_class(cls, v: str | None) -> str | None:
        return _class_name(v)

    @field_validator("resources")
    @classmethod
    def _request(cls, v: ResourceRequirements) -> ResourceRequirements:
        if "storage" not in v.requests:
            raise ValueError("requests.storage is required")
        return v


class ClaimSource(_Strict):
    claimName: str = Field(min_length=1)
    readOnly: StrictBool = False


class PodVolume(_Open):
    name: str = Field(min_length=1, max_length=63)
    persistentVolumeClaim: ClaimSource | None = None
    hostPath: HostPathSource | None = None
    nfs: NFSSource | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # The volume manager mounts an inline volume at …/volumes/<plugin>/<this name>:
        # a '/' or '..' in it would put the mount outside the pod's directory.
        if not _DNS_LABEL.fullmatch(v):
            raise ValueError(f"{v!r} is not a DNS-1123 label")
        return v


class PodSpec(_Open):
    nodeName: str = ""
    volumes: list[PodVolume] = []
    containers: list[dict[str, Any]] = Field(default=[], validate_default=False)


class NodeSpec(_Open):
    unschedulable: StrictBool = False


class StorageClassBody(_Open):
    provisioner: str = Field(min_length=1)
    parameters: dict[str, str] = {}
    reclaimPolicy: Literal["Delete", "Retain", "Recycle"] = "Delete"
    volumeBindingMode: Literal["Immediate", "WaitForFirstConsumer"] = "Immediate"
    mountOptions: list[str] = []
    allowVolumeExpansion: StrictBool | None = None
    allowedTopologies: list[NodeSelectorTerm] = []


class VolumeAttributesClassBody(_Open):
    """storage.k8s.io/v1 VolumeAttributesClass: the mutable attributes a CSI driver's
    ControllerModifyVolume (and CreateVolume's mutable_parameters) get; both fields are
    immutable once created (store.py), as in Kubernetes."""

    driverName: str = Field(min_length=1, max_length=63)
    parameters: dict[str, str] = Field(min_length=1, max_length=512)

    @field_validator("driverName")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not _CSI_DRIVER.fullmatch(v):
            raise ValueError(f"{v!r} is not a CSI driver name")
        return v

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not k for k in v):
            raise ValueError("a parameter's key may not be empty")
        if sum(len(k) + len(x) for k, x in v.items()) > 256 * 1024:
            raise ValueError("must have a total size of at most 256 KiB")
        return v


class VASource(_Strict):
    persistentVolumeName: str = Field(min_length=1)


class VASpec(_Strict):
    attacher: str = Field(min_length=1)
    nodeName: str = Field(min_length=1)
    source: VASource


class CSIDriverSpec(_Open):
    attachRequired: StrictBool = True
    podInfoOnMount: StrictBool = False
    volumeLifecycleModes: list[str] = ["Persistent"]


# --- kubernetes-csi/external-snapshotter's kinds (snapshot.storage.k8s.io/v1,
# groupsnapshot.storage.k8s.io/v1), with the messages of their CRDs' validation rules.

DeletionPolicy = Literal["Delete", "Retain"]


def _object_name(v: str | None) -> str | None:
    if v is not None and (len(v) > 253 or not _DNS_SUBDOMAIN.fullmatch(v)):
        raise ValueError(f"{v[:64]!r} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')")
    return v


def _class_when_set(v: str | None, info: ValidationInfo) -> str | None:
    if v == "":
        raise ValueError(f"{info.field_name} must not be the empty string when set")
    return _object_name(v)


def _csi_driver(v: str) -> str:
    if not _CSI_DRIVER.fullmatch(v):
        raise ValueError(f"{v!r} is not a CSI driver name")
    return v


# The fields the snapshot kinds share: an object's name, a class's name (absent, never
# ""), a CSI driver's name.
ObjectName = Annotated[str | None, AfterValidator(_object_name)]
ClassName = Annotated[str | None, AfterValidator(_class_when_set)]
DriverName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_csi_driver)]


def _one_of(model: BaseModel, *fields: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        raise ValueError(f"exactly one of {' and '.join(fields)} must be set")


class SnapshotClassBody(_Open):
    """A VolumeSnapshotClass's or VolumeGroupSnapshotClass's top-level fields."""

    driver: DriverName
    deletionPolicy: DeletionPolicy
    parameters: dict[str, str] = {}


class BoundObjectReference(_Open):
    """A content's reference to its (group) snapshot: both name and namespace."""

    name: str = Field(min_length=1)
    namespace: str = Field(min_length=1)


class VolumeSnapshotSource(_Strict):
    persistentVolumeClaimName: ObjectName = None
    volumeSnapshotContentName: ObjectName = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeSnapshotSource:
        _one_of(self, "persistentVolumeClaimName", "volumeSnapshotContentName")
        return self


class VolumeSnapshotSpec(_Strict):
    source: VolumeSnapshotSource
    volumeSnapshotClassName: ClassName = None


class VolumeSnapshotContentSource(_Strict):
    volumeHandle: str | None = Field(default=None, min_length=1)
    snapshotHandle: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeSnapshotContentSource:
        _one_of(self, "volumeHandle", "snapshotHandle")
        return self


class VolumeSnapshotContentSpec(_Strict):
    volumeSnapshotRef: BoundObjectReference
    deletionPolicy: DeletionPolicy
    driver: DriverName
    volumeSnapshotClassName: str | None = None
    source: VolumeSnapshotContentSource
    sourceVolumeMode: VolumeMode | None = None


class VolumeGroupSnapshotSource(_Strict):
    selector: LabelSelectorSpec | None = None
    volumeGroupSnapshotContentName: ObjectName = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeGroupSnapshotSource:
        _one_of(self, "selector", "volumeGroupSnapshotContentName")
        return self


class VolumeGroupSnapshotSpec(_Strict):
    source: VolumeGroupSnapshotSource
    volumeGroupSnapshotClassName: ClassName = None


class GroupSnapshotHandles(_Strict):
    volumeGroupSnapshotHandle: str = Field(min_length=1)
    volumeSnapshotHandles: list[str] = Field(min_length=1)


class VolumeGroupSnapshotContentSource(_Strict):
    volumeHandles: list[str] | None = Field(default=None, min_length=1)
    groupSnapshotHandles: GroupSnapshotHandles | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeGroupSnapshotContentSource:
        _one_of(self, "volumeHandles", "groupSnapshotHandles")
        return self


class VolumeGroupSnapshotContentSpec(_Strict):
    volumeGroupSnapshotRef: BoundObjectReference
    deletionPolicy: DeletionPolicy
    driver: DriverName
    volumeGroupSnapshotClassName: str | None = None
    source: VolumeGroupSnapshotContentSource


_SPEC: dict[str, type[BaseModel]] = {
    "PersistentVolume": PVSpec,
    "PersistentVolumeClaim": PVCSpec,
    "Pod": PodSpec,
    "Node": NodeSpec,
    "VolumeAttachment": VASpec,
    "CSIDriver": CSIDriverSpec,
    "VolumeSnapshot": VolumeSnapshotSpec,
    "VolumeSnapshotContent": VolumeSnapshotContentSpec,
    "VolumeGroupSnapshot": VolumeGroupSnapshotSpec,
    "VolumeGroupSnapshotContent": VolumeGroupSnapshotContentSpec,
}
_SOURCES = ("nfs", "hostPath", "local", "csi")
# Kinds whose fields sit at the top level, beside metadata, rather than under spec.
_TOP_LEVEL: dict[str, type[BaseModel]] = {"StorageClass": StorageClassBody, "VolumeAttributesClass": VolumeAttributesClassBody}
_TOP_LEVEL.update({"VolumeSnapshotClass": SnapshotClassBody, "VolumeGroupSnapshotClass": SnapshotClassBody})


def validate(obj: Any) -> dict[str, Any]:
    """The object with its defaults, or InvalidArgument naming the offending field."""
    if not isinstance(obj, dict):
        raise InvalidArgument(f"an object must be a mapping, not {type(obj).__name__}")
    kind_name = obj.get("kind")
    if not isinstance(kind_name, str) or kind_name not in BY_NAME:
        known = ", ".join(k.name for k in KINDS)
        raise InvalidArgument(f"kind: {_show(kind_name)} is not a kind volplane keeps ({known})")
    kind = BY_NAME[kind_name]
    out = copy.deepcopy(obj)
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    plain = isinstance(name, str) and name.isprintable() and len(name) <= 253
    label = (f'{kind_name} "{name}"' if plain else f"{kind_name} {_show(name)}") if name else kind_name
    api_version = obj.get("apiVersion")
    accepted = {kind.api_version, *kind.also, *(("storage.k8s.io/v1beta1",) if kind.api_version.startswith("storage") else ())}
    if not isinstance(api_version, str) or api_version not in accepted:
        raise InvalidArgument(f"{label}: apiVersion: {_show(api_version)} is not {kind.api_version!r}")
    out["apiVersion"] = kind.api_version
    meta = _check(Metadata, obj.get("metadata") or {}, "metadata", label)
    if kind_name in _TOP_LEVEL:
        body = _check(_TOP_LEVEL[kind_name], {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, "", label)
        out.update(body.model_dump(exclude_none=True))
    else:
        spec = _check(_SPEC[kind_name], obj.get("spec") if obj.get("spec") is not None else {}, "spec", label)
    md = out.setdefault("metadata", {})
    if kind.namespaced:
        md["namespace"] = meta.namespace or "default"
    elif meta.namespace:
        md.pop("namespace")  # kubectl ignores a namespace on cluster-scoped objects
    for field in ("labels", "annotations"):
        if md.get(field) is None:
            md.pop(field, None)
        else:
            md[field] = {str(k): str(v) for k, v in md[field].items()}
    if kind_name in _TOP_LEVEL:
        return out
    spec_out = out.setdefault("spec", {})
    # The spec's model says which kind it is (one model per kind), and types its fields.
    if isinstance(spec, PVSpec):
        sources = [s for s in _SOURCES if getattr(spec, s) is not None]
        if len(sources) != 1:
            raise InvalidArgument(f"{label}: spec: exactly one volume source is required (one of {', '.join(_SOURCES)}), got {sources or 'none'}")
        if spec.local is not None and spec.nodeAffinity is None:
            raise InvalidArgument(f"{label}: spec.nodeAffinity: a local volume requires node affinity")
        spec_out.setdefault("persistentVolumeReclaimPolicy", "Retain")
        spec_out.setdefault("volumeMode", "Filesystem")
    elif isinstance(spec, PVCSpec):
        spec_out.setdefault("volumeMode", "Filesystem")
        _data_sources(spec, spec_out, label)
    elif isinstance(spec, PodSpec):
        names = [v.name for v in spec.volumes]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"{label}: spec.volumes: duplicate volume name")
        for i, vol in enumerate(spec.volumes):
            given = [s for s in ("persistentVolumeClaim", "hostPath", "nfs") if getattr(vol, s) is not None]
            if len(given) > 1:
                raise InvalidArgument(f"{label}: spec.volumes[{i}]: more than one volume source")
    elif kind_name == "CSIDriver":
        spec_out.setdefault("attachRequired", True)
    return out


def _data_sources(spec: PVCSpec, out: dict[str, Any], label: str) -> None:
    """Kubernetes' rules for a claim's data source: ``dataSource`` names a claim (the core
    group) or an object of another API group; given alone, either of ``dataSource`` and
    ``dataSourceRef`` is copied to the other (a ref into another namespace is not), and
    given both, they must name the same object."""
    src, ref = spec.dataSource, spec.dataSourceRef
    if src is not None and not src.apiGroup and src.kind != "PersistentVolumeClaim":
        raise InvalidArgument(f"{label}: spec.dataSource.kind: {_show(src.kind)}: must be 'PersistentVolumeClaim' when referencing the default apiGroup")
    local_ref = ref is not None and not ref.namespace
    if src is not None and ref is not None:
        if local_ref and src.model_dump(exclude_none=True) != ref.model_dump(exclude_none=True, exclude={"namespace"}):
            raise InvalidArgument(f"{label}: spec.dataSource: must match dataSourceRef")
    elif src is not None:
        out["dataSourceRef"] = src.model_dump(exclude_none=True)
    elif ref is not None and local_ref and (ref.apiGroup or ref.kind == "PersistentVolumeClaim"):
        out["dataSource"] = ref.model_dump(exclude_none=True, exclude={"namespace"})


def _check(model: type[M], data: Any, prefix: str, label: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if _PLAIN_KEY.fullmatch(p) else f"[{_show(p)}]"
                       for p in (prefix, *err["loc"]) if p != "")
        msg = _show(err["msg"].removeprefix("Value error, "), 300, quote=False)
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error":
            msg = f"{_show(err.get('input'))}: {msg}"
        raise InvalidArgument(f"{label}: {path.lstrip('.') or prefix}: {msg}") from None


def _show(value: Any, limit: int = 64, *, quote: bool = True) -> str:
    """A value for an error message: on one line (its repr) and at most ``limit`` characters."""
    text = repr(value) if quote else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
