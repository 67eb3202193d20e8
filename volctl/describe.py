"""``volctl describe``: an object as kubectl describes it, plus volplane's Timeline.

    print(describe(pvc, client.history("pvc", "nfs-pvc", "default"), pods=pods_in_ns))

Lines are ``Key:\\tvalue`` and go through ``tables.describe_block``, which aligns them as
kubectl's tabwriter does; nested fields are indented by two spaces a level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import yaml

from volctl.client import Entry
from volctl.columns import dig, flag, modes, phase_of
from volctl.history import cell, events_section, timeline_section
from volctl.refs import kind_of
from volctl.tables import describe_block
from volplane.resources.names import claim_class, pod_claims

__all__ = ["describe"]

Obj = dict[str, Any]
Lines = list[str]


def _multiline(key: str, values: list[str], indent: str = "") -> Lines:
    """``Key:\\tfirst`` then ``\\tsecond``…, kubectl's way of listing labels and users."""
    if not values:
        return [f"{indent}{key}:\t<none>"]
    return [f"{indent}{key}:\t{cell(values[0])}"] + [f"\t{cell(v)}" for v in values[1:]]


def _header(obj: Obj) -> Lines:
    meta = obj.get("metadata") or {}
    lines = [f"Name:\t{meta.get('name', '')}"]
    if kind_of(obj).namespaced:
        lines.append(f"Namespace:\t{meta.get('namespace', '')}")
    lines += _multiline("Labels", [f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items())])
    lines += _multiline("Annotations", [f"{k}: {v}" for k, v in sorted((meta.get("annotations") or {}).items())])
    lines.append(f"Finalizers:\t[{' '.join(meta.get('finalizers') or [])}]")
    if meta.get("deletionTimestamp"):
        lines.append(f"Deletion Timestamp:\t{meta['deletionTimestamp']}")
    return lines


def _expression(req: Obj) -> str:
    values = req.get("values") or []
    text = f"{req.get('key', '')} {str(req.get('operator', '')).lower()}"
    return f"{text} [{' '.join(values)}]" if values else text


def _node_affinity(spec: Obj) -> Lines:
    terms = dig(spec, "nodeAffinity", "required", "nodeSelectorTerms", default=[])
    if not terms:
        return ["Node Affinity:\t<none>"]
    lines = ["Node Affinity:\t", "  Required Terms:\t"]
    for i, term in enumerate(terms):
        exprs = [_expression(r) for r in (term.get("matchExpressions") or []) + (term.get("matchFields") or [])]
        lines.append(f"    Term {i}:\t{', '.join(exprs) or '<none>'}")
    return lines


def _source(spec: Obj) -> Lines:
    """The PV's volume source, in kubectl's words for each plugin."""
    lines = ["Source:"]
    if "nfs" in spec:
        s = spec["nfs"]
        lines += ["    Type:\tNFS (an NFS mount that lasts the lifetime of a pod)", f"    Server:\t{s.get('server', '')}",
                  f"    Path:\t{s.get('path', '')}", f"    ReadOnly:\t{flag(s.get('readOnly'))}"]
    elif "hostPath" in spec:
        s = spec["hostPath"]
        lines += ["    Type:\tHostPath (bare host directory volume)", f"    Path:\t{s.get('path', '')}", f"    HostPathType:\t{s.get('type', '')}"]
    elif "local" in spec:
        s = spec["local"]
        lines += ["    Type:\tLocalVolume (a persistent volume backed by local storage on a node)", f"    Path:\t{s.get('path', '')}"]
    elif "csi" in spec:
        s = spec["csi"]
        lines += ["    Type:\tCSI (a Container Storage Interface (CSI) volume source)", f"    Driver:\t{s.get('driver', '')}",
                  f"    FSType:\t{s.get('fsType', '')}", f"    VolumeHandle:\t{s.get('volumeHandle', '')}",
                  f"    ReadOnly:\t{flag(s.get('readOnly'))}"]
        lines += _multiline("VolumeAttributes", [f"{k}={v}" for k, v in sorted((s.get("volumeAttributes") or {}).items())], "    ")
    return lines


def _conditions(obj: Obj) -> Lines:
    """kubectl's Conditions table of a claim: type, status, times, reason, message."""
    conditions = dig(obj, "status", "conditions", default=[])
    if not conditions:
        return []
    lines = ["Conditions:", "  Type\tStatus\tLastProbeTime\tLastTransitionTime\tReason\tMessage",
             "  ----\t------\t-----------------\t------------------\t------\t-------"]
    for c in conditions:
        lines.append("  " + "\t".join(cell(str(c.get(k) or "")) for k in ("type", "status", "lastProbeTime", "lastTransitionTime", "reason", "message")))
    return lines


def _pv(pv: Obj, pods: list[Obj]) -> Lines:
    spec = pv.get("spec") or {}
    ref = spec.get("claimRef")
    return [
        f"StorageClass:\t{spec.get('storageClassName', '')}",
        *([f"VolumeAttributesClass:\t{spec['volumeAttributesClassName']}"] if spec.get("volumeAttributesClassName") else []),
        f"Status:\t{phase_of(pv)}",
        f"Claim:\t{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else "Claim:\t",
        f"Reclaim Policy:\t{spec.get('persistentVolumeReclaimPolicy', '')}",
        f"Access Modes:\t{modes(spec.get('accessModes'))}",
        f"VolumeMode:\t{spec.get('volumeMode', '')}",
        f"Capacity:\t{dig(spec, 'capacity', 'storage', default='')}",
        *_node_affinity(spec),
        f"Message:\t{cell(dig(pv, 'status', 'message', default=''))}",
        *_source(spec),
    ]


def _pvc(pvc: Obj, pods: list[Obj]) -> Lines:
    spec = pvc.get("spec") or {}
    name = pvc["metadata"]["name"]
    users = [p["metadata"]["name"] for p in pods if any(claim == name for _, claim in pod_claims(p))]
    return [
        f"StorageClass:\t{claim_class(pvc)}",
        *_attributes_class(pvc),
        f"Status:\t{phase_of(pvc)}",
        f"Volume:\t{spec.get('volumeName', '')}",
        f"Capacity:\t{dig(pvc, 'status', 'capacity', 'storage', default='')}",
        f"Access Modes:\t{modes(dig(pvc, 'status', 'accessModes'))}",
        f"VolumeMode:\t{spec.get('volumeMode', '')}",
        *_multiline("Used By", sorted(users)),
        *_conditions(pvc),
    ]


def _attributes_class(pvc: Obj) -> Lines:
    """kubectl's line for the class a claim asks for (none when it names none)."""
    asked = dig(pvc, "spec", "volumeAttributesClassName")
    return [f"VolumeAttributesClass:\t{asked}"] if asked else []


def _sc(sc: Obj, pods: list[Obj]) -> Lines:
    default = any(dig(sc, "metadata", "annotations", a) == "true" for a in ("storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"))
    params = ",".join(f"{k}={v}" for k, v in sorted((sc.get("parameters") or {}).items()))
    lines = [
        f"IsDefaultClass:\t{'Yes' if default else 'No'}",
        f"Provisioner:\t{sc.get('provisioner', '')}",
        f"Parameters:\t{params or '<none>'}",
        f"AllowVolumeExpansion:\t{'True' if sc.get('allowVolumeExpansion') else '<unset>' if sc.get('allowVolumeExpansion') is None else 'False'}",
    ]
    options = sc.get("mountOptions") or []
    lines += ["MountOptions:", *(f"  {o}" for o in options)] if options else ["MountOptions:\t<none>"]
    lines += [f"ReclaimPolicy:\t{sc.get('reclaimPolicy', 'Delete')}", f"VolumeBindingMode:\t{sc.get('volumeBindingMode', 'Immediate')}"]
    return lines


def _vac(vac: Obj, pods: list[Obj]) -> Lines:
    params = ",".join(f"{k}={v}" for k, v in sorted((vac.get("parameters") or {}).items()))
    return [f"DriverName:\t{vac.get('driverName', '')}", f"Parameters:\t{params or '<none>'}"]


def _pod(pod: Obj, pods: list[Obj]) -> Lines:
    lines = [f"Node:\t{dig(pod, 'spec', 'nodeName') or '<none>'}", f"Status:\t{dig(pod, 'status', 'phase') or 'Pending'}"]
    volumes = dig(pod, "spec", "volumes", default=[])
    lines += ["Volumes:"] if volumes else ["Volumes:\t<none>"]
    for vol in volumes:
        lines.append(f"  {vol.get('name', '')}:")
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]
            lines += ["    Type:\tPersistentVolumeClaim (a reference to a PersistentVolumeClaim in the same namespace)",
                      f"    ClaimName:\t{claim.get('claimName', '')}", f"    ReadOnly:\t{flag(claim.get('readOnly'))}"]
        else:
            lines += [f"    {line}" for line in _yaml({k: v for k, v in vol.items() if k != "name"}).splitlines()]
    reported = dig(pod, "status", "volumes", default=[])
    if reported:
        # volplane's: what the node's volume manager reports for each volume.
        lines += ["Volume Status:", "  Name\tReady\tPath\tMessage", "  ----\t-----\t----\t-------"]
        lines += [f"  {v.get('name', '')}\t{flag(v.get('ready'))}\t{v.get('path', '')}\t{cell(v.get('message', ''))}" for v in reported]
    conditions = dig(pod, "status", "conditions", default=[])
    if conditions:
        lines += ["Conditions:", "  Type\tStatus", *(f"  {c.get('type', '')}\t{c.get('status', '')}" for c in conditions)]
    return lines


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, width=1 << 20).rstrip("\n")


def _generic(obj: Obj, pods: list[Obj]) -> Lines:
    """The kinds without a describer of their own: top-level fields (a snapshot class's
    driver, deletionPolicy, parameters), then spec and status as indented YAML."""
    lines: Lines = []
    for key in sorted(k for k in obj if k not in ("apiVersion", "kind", "metadata", "spec", "status")):
        value = obj[key]
        if isinstance(value, dict | list):
            lines += [f"{key}:", *(f"  {line}" for line in _yaml(value).splitlines())] if value else [f"{key}:\t<none>"]
        else:
            lines.append(f"{key}:\t{cell(str(value))}")
    for part in ("spec", "status"):
        if obj.get(part):
            lines += [f"{part.capitalize()}:", *(f"  {line}" for line in _yaml(obj[part]).splitlines())]
    return lines


_BODY: dict[str, Callable[[Obj, list[Obj]], Lines]] = {
    "PersistentVolume": _pv,
    "PersistentVolumeClaim": _pvc,
    "StorageClass": _sc,
    "VolumeAttributesClass": _vac,
    "Pod": _pod,
}


def describe(obj: Obj, entries: list[Entry], pods: list[Obj] | None = None, now: float | None = None) -> str:
    """The description of ``obj``; ``pods`` are its namespace's pods (a claim's users)."""
    now = time.time() if now is None else now
    body = _BODY.get(obj["kind"], _generic)(obj, pods or [])
    text = "\n".join([*_header(obj), *body, events_section(entries, now), timeline_section(entries, now)])
    return describe_block(text)
