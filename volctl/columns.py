"""The columns ``volctl get`` prints for each kind: kubectl's, cell for cell.

    rows(resolve("pv"), [pv])           # [["NAME", "CAPACITY", ...], ["nfs-pv", "10Gi", ...]]
    rows(kind, objs, wide=True, with_kind=True, all_namespaces=True)

A cell kubectl leaves empty stays empty here; ``<unset>`` and ``<none>`` are where
kubectl prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import volplane
from volctl.refs import type_name
from volctl.tables import age
from volplane.resources.kinds import Kind
from volplane.resources.names import claim_class
from volplane.resources.schema import ACCESS_MODES

__all__ = ["dig", "flag", "modes", "phase_of", "rows"]

Obj = dict[str, Any]
Cells = Callable[[Obj, float], list[str]]
_DEFAULT_CLASS = ("storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class")
_ROLE_PREFIX = "node-role.kubernetes.io/"


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    """``dig(pv, "spec", "capacity", "storage")``: the value down a path, or ``default``."""
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return default if obj is None else obj


def modes(given: list[str] | None) -> str:
    """kubectl's ACCESS MODES: short names in its fixed order, each once."""
    return ",".join(short for mode, short in ACCESS_MODES.items() if mode in (given or []))


def flag(value: Any) -> str:
    """A boolean as Go prints it."""
    return "true" if value else "false"


def phase_of(obj: Obj) -> str:
    """The STATUS of a volume or claim: Terminating once deletion has begun; the API
    server's initial Pending until a controller says otherwise."""
    if dig(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    return dig(obj, "status", "phase") or "Pending"


def _pv_class(pv: Obj) -> str:
    # As for claims, the beta annotation wins over the field (kubectl's GetPersistentVolumeClass).
    ann = dig(pv, "metadata", "annotations", default={})
    return ann.get("volume.beta.kubernetes.io/storage-class") or dig(pv, "spec", "storageClassName", default="")


def _pv(pv: Obj, now: float) -> list[str]:
    spec = pv.get("spec") or {}
    ref = spec.get("claimRef")
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""
    return [
        str(dig(spec, "capacity", "storage", default="")), modes(spec.get("accessModes")),
        spec.get("persistentVolumeReclaimPolicy", ""), phase_of(pv), claim, _pv_class(pv),
        spec.get("volumeAttributesClassName") or "<unset>", dig(pv, "status", "reason", default=""),
        age(dig(pv, "metadata", "creationTimestamp"), now),
    ]


def _pvc(pvc: Obj, now: float) -> list[str]:
    spec = pvc.get("spec") or {}
    capacity, access = "", ""
    if spec.get("volumeName"):
        # What the claim got, which only a bound claim has (kubectl shows nothing before).
        capacity = str(dig(pvc, "status", "capacity", "storage", default=""))
        access = modes(dig(pvc, "status", "accessModes"))
    return [
        phase_of(pvc), spec.get("volumeName", ""), capacity, access, claim_class(pvc),
        spec.get("volumeAttributesClassName") or "<unset>", age(dig(pvc, "metadata", "creationTimestamp"), now),
    ]


def _volume_mode(obj: Obj) -> list[str]:
    return [dig(obj, "spec", "volumeMode", default="<unset>")]


def _sc(sc: Obj, now: float) -> list[str]:
    return [
        sc.get("provisioner", ""), sc.get("reclaimPolicy") or "Delete", sc.get("volumeBindingMode") or "Immediate",
        flag(sc.get("allowVolumeExpansion")), age(dig(sc, "metadata", "creationTimestamp"), now),
    ]


def _pod_status(pod: Obj) -> str:
    if dig(pod, "metadata", "deletionTimestamp"):
        return "Terminating"
    return dig(pod, "status", "phase") or "Pending"


def _pod(pod: Obj, now: float) -> list[str]:
    # No containers run here: a pod is ready when its volumes are, so READY counts volumes.
    reported = dig(pod, "status", "volumes", default=[])
    total = max(len(dig(pod, "spec", "volumes", default=[])), len(reported))
    ready = sum(1 for v in reported if v.get("ready"))
    return [f"{ready}/{total}", _pod_status(pod), "0", age(dig(pod, "metadata", "creationTimestamp"), now)]


def _pod_wide(pod: Obj) -> list[str]:
    return ["<none>", dig(pod, "spec", "nodeName") or "<none>", "<none>", "<none>"]


def _node_status(node: Obj) -> str:
    ready = next((c for c in dig(node, "status", "conditions", default=[]) if c.get("type") == "Ready"), None)
    # A node volplane knows is one whose agent registered it; without a Ready condition
    # saying otherwise it is Ready.
    status = "Ready" if ready is None or ready.get("status") == "True" else ("Unknown" if ready.get("status") == "Unknown" else "NotReady")
    if dig(node, "spec", "unschedulable"):
        status += ",SchedulingDisabled"
    return status


def _node(node: Obj, now: float) -> list[str]:
    labels = dig(node, "metadata", "labels", default={})
    roles = sorted(k.removeprefix(_ROLE_PREFIX) for k in labels if k.startswith(_ROLE_PREFIX)) or ["<none>"]
    version = dig(node, "status", "nodeInfo", "kubeletVersion") or f"v{volplane.__version__}"
    return [_node_status(node), ",".join(roles), age(dig(node, "metadata", "creationTimestamp"), now), version]


def _node_wide(node: Obj) -> list[str]:
    addresses = dig(node, "status", "addresses", default=[])

    def address(kind: str) -> str:
        return next((a.get("address", "") for a in addresses if a.get("type") == kind), "<none>")

    info = dig(node, "status", "nodeInfo", default={})
    return [
        address("InternalIP"), address("ExternalIP"), info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _va(va: Obj, now: float) -> list[str]:
    spec = va.get("spec") or {}
    return [
        spec.get("attacher", ""), dig(spec, "source", "persistentVolumeName", default=""), spec.get("nodeName", ""),
        flag(dig(va, "status", "attached")), age(dig(va, "metadata", "creationTimestamp"), now),
    ]


def _csidriver(driver: Obj, now: float) -> list[str]:
    spec = driver.get("spec") or {}
    tokens = spec.get("tokenRequests")
    return [
        flag(spec.get("attachRequired", True)), flag(spec.get("podInfoOnMount")), flag(spec.get("storageCapacity")),
        ",".join(t.get("audience", "") for t in tokens) if tokens else "<unset>", flag(spec.get("requiresRepublish")),
        ",".join(spec.get("volumeLifecycleModes") or []) or "<none>", age(dig(driver, "metadata", "creationTimestamp"), now),
    ]


def _vac(vac: Obj, now: float) -> list[str]:
    return [vac.get("driverName", ""), age(dig(vac, "metadata", "creationTimestamp"), now)]


# external-snapshotter's kinds print their CRDs' additionalPrinterColumns, as the API
# server's table converter does: a field that is not there is an empty cell, a date is
# an age, a boolean Go's true/false.


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return flag(value)
    return str(value)


def _date(value: Any, now: float) -> str:
    return age(str(value), now) if value else ""


def _snapshot_class(cls: Obj, now: float) -> list[str]:
    return [_cell(cls.get("driver")), _cell(cls.get("deletionPolicy")), age(dig(cls, "metadata", "creationTimestamp"), now)]


def _vs(vs: Obj, now: float) -> list[str]:
    return [
        _cell(dig(vs, "status", "readyToUse")), _cell(dig(vs, "spec", "source", "persistentVolumeClaimName")),
        _cell(dig(vs, "spec", "source", "volumeSnapshotContentName")), _cell(dig(vs, "status", "restoreSize")),
        _cell(dig(vs, "spec", "volumeSnapshotClassName")), _cell(dig(vs, "status", "boundVolumeSnapshotContentName")),
        _date(dig(vs, "status", "creationTime"), now), age(dig(vs, "metadata", "creationTimestamp"), now),
    ]


def _vsc(vsc: Obj, now: float) -> list[str]:
    return [
        _cell(dig(vsc, "status", "readyToUse")), _cell(dig(vsc, "status", "restoreSize")), _cell(dig(vsc, "spec", "deletionPolicy")),
        _cell(dig(vsc, "spec", "driver")), _cell(dig(vsc, "spec", "volumeSnapshotClassName")), _cell(dig(vsc, "spec", "volumeSnapshotRef", "name")),
        _cell(dig(vsc, "spec", "volumeSnapshotRef", "namespace")), age(dig(vsc, "metadata", "creationTimestamp"), now),
    ]


def _vgs(vgs: Obj, now: float) -> list[str]:
    return [
        _cell(dig(vgs, "status", "readyToUse")), _cell(dig(vgs, "spec", "volumeGroupSnapshotClassName")),
        _cell(dig(vgs, "status", "boundVolumeGroupSnapshotContentName")), _date(dig(vgs, "status", "creationTime"), now),
        age(dig(vgs, "metadata", "creationTimestamp"), now),
    ]


def _vgsc(vgsc: Obj, now: float) -> list[str]:
    return [
        _cell(dig(vgsc, "status", "readyToUse")), _cell(dig(vgsc, "spec", "deletionPolicy")), _cell(dig(vgsc, "spec", "driver")),
        _cell(dig(vgsc, "spec", "volumeGroupSnapshotClassName")), _cell(dig(vgsc, "spec", "volumeGroupSnapshotRef", "namespace")),
        _cell(dig(vgsc, "spec", "volumeGroupSnapshotRef", "name")), age(dig(vgsc, "metadata", "creationTimestamp"), now),
    ]


@dataclass(frozen=True)
class _Columns:
    headers: tuple[str, ...]
    cells: Cells
    wide_headers: tuple[str, ...] = ()
    wide: Callable[[Obj], list[str]] = lambda obj: []


_COLUMNS: dict[str, _Columns] = {
    "PersistentVolume": _Columns(
        ("NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "REASON", "AGE"),
        _pv, ("VOLUMEMODE",), _volume_mode,
    ),
    "PersistentVolumeClaim": _Columns(
        ("NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS", "AGE"),
        _pvc, ("VOLUMEMODE",), _volume_mode,
    ),
    "StorageClass": _Columns(("NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"), _sc),
    "Pod": _Columns(("NAME", "READY", "STATUS", "RESTARTS", "AGE"), _pod, ("IP", "NODE", "NOMINATED NODE", "READINESS GATES"), _pod_wide),
    "Node": _Columns(
        ("NAME", "STATUS", "ROLES", "AGE", "VERSION"),
        _node, ("INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"), _node_wide,
    ),
    "VolumeAttachment": _Columns(("NAME", "ATTACHER", "PV", "NODE", "ATTACHED", "AGE"), _va),
    "CSIDriver": _Columns(
        ("NAME", "ATTACHREQUIRED", "PODINFOONMOUNT", "STORAGECAPACITY", "TOKENREQUESTS", "REQUIRESREPUBLISH", "MODES", "AGE"), _csidriver,
    ),
    "VolumeAttributesClass": _Columns(("NAME", "DRIVERNAME", "AGE"), _vac),
    "VolumeSnapshotClass": _Columns(("NAME", "DRIVER", "DELETIONPOLICY", "AGE"), _snapshot_class),
    "VolumeSnapshot": _Columns(
        ("NAME", "READYTOUSE", "SOURCEPVC", "SOURCESNAPSHOTCONTENT", "RESTORESIZE", "SNAPSHOTCLASS", "SNAPSHOTCONTENT", "CREATIONTIME", "AGE"), _vs,
    ),
    "VolumeSnapshotContent": _Columns(
        ("NAME", "READYTOUSE", "RESTORESIZE", "DELETIONPOLICY", "DRIVER", "VOLUMESNAPSHOTCLASS", "VOLUMESNAPSHOT", "VOLUMESNAPSHOTNAMESPACE", "AGE"), _vsc,
    ),
    "VolumeGroupSnapshotClass": _Columns(("NAME", "DRIVER", "DELETIONPOLICY", "AGE"), _snapshot_class),
    "VolumeGroupSnapshot": _Columns(
        ("NAME", "READYTOUSE", "VOLUMEGROUPSNAPSHOTCLASS", "VOLUMEGROUPSNAPSHOTCONTENT", "CREATIONTIME", "AGE"), _vgs,
    ),
    "VolumeGroupSnapshotContent": _Columns(
        ("NAME", "READYTOUSE", "DELETIONPOLICY", "DRIVER", "VOLUMEGROUPSNAPSHOTCLASS", "VOLUMEGROUPSNAPSHOTNAMESPACE", "VOLUMEGROUPSNAPSHOT", "AGE"), _vgsc,
    ),
}


def _name(obj: Obj, kind: Kind, with_kind: bool) -> str:
    name = obj["metadata"]["name"]
    if kind.name == "StorageClass" and any(dig(obj, "metadata", "annotations", a) == "true" for a in _DEFAULT_CLASS):
        name += " (default)"
    return f"{type_name(kind)}/{name}" if with_kind else name


def rows(kind: Kind, objs: list[Obj], *, wide: bool = False, with_kind: bool = False, all_namespaces: bool = False, now: float) -> list[list[str]]:
    """The header and one row per object, ready for ``tables.table``."""
    cols = _COLUMNS[kind.name]
    namespaced = all_namespaces and kind.namespaced
    header = (["NAMESPACE"] if namespaced else []) + list(cols.headers) + (list(cols.wide_headers) if wide else [])
    out = [header]
    for obj in objs:
        row = [_name(obj, kind, with_kind), *cols.cells(obj, now), *(cols.wide(obj) if wide else [])]
        out.append(([obj["metadata"].get("namespace", "")] if namespaced else []) + row)
    return out
