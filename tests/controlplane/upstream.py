"""Kubernetes' PV-controller test tables, replayed end to end: the staging kit.

    case = Staged(stack, api, "1-1 - successful bind")
    case.pv("volume1-1", "1Gi")                     # names become "volume1-1-<suffix>"
    case.claim("claim1-1", "1Gi")
    ...                                              # the controller starts
    case.wait("pvc", "claim1-1", lambda c: phase(c) == "Bound")

Upstream loads a table row (initialVolumes, initialClaims) into a fake API server and
calls syncClaim/syncVolume. Here a row's objects are written into a real stack while
its provisioner process (the PV controller, the external provisioner, the scheduler) is
stopped, then the controller starts and converges; the test reads the result through
the resource API. Every row gets its own names (upstream's name plus a suffix) and its
own label: each claim selects only its row's volumes, so rows sharing one stack never
take each other's volumes, whatever their class — upstream's class "" included.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.launcher import Stack
from tests.controlplane.conftest import Api, annotations, phase
from tests.controlplane.direct import direct_patch

Obj = dict[str, Any]

CONTROLLER = "persistentvolume-controller"
BOUND_BY = "pv.kubernetes.io/bound-by-controller"
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
MIGRATED_TO = "pv.kubernetes.io/migrated-to"
FINALIZER = "kubernetes.io/pv-controller"
ROW = "upstream.volplane.io/row"
# Upstream's label set for its selector rows (withLabels / withLabelSelector).
LABELS = {"foo": "true", "bar": "false"}


class Staged:
    """One upstream row: its objects, named and labelled apart from every other row."""

    def __init__(self, stack: Stack, api: Api, case: str) -> None:
        self.stack, self.api, self.case = stack, api, case
        self.suffix = uuid.uuid4().hex[:6]
        self.hostpath = stack.run_dir / "hostpath"

    # --- names ---------------------------------------------------------------------

    def n(self, upstream: str) -> str:
        """Upstream's object name, made unique and DNS-safe (``volume1-4_1`` → ``volume1-4-1-ab12cd``)."""
        return f"{upstream.replace('_', '-').lower()}-{self.suffix}"

    def path(self, upstream: str) -> Path:
        """A directory under the in-tree host-path plugin's root, for a volume it may reclaim."""
        return self.hostpath / self.n(upstream)

    # --- objects -------------------------------------------------------------------

    def sc(self, upstream: str, provisioner: str = "kubernetes.io/no-provisioner", **fields: Any) -> str:
        name = self.n(upstream)
        self.api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": provisioner, **fields})
        return name

    def pv(
        self,
        upstream: str,
        size: str,
        *,
        claim: str = "",
        uid: str = "",
        policy: str = "Retain",
        cls: str = "",
        ann: tuple[str, ...] | dict[str, str] = (),
        labels: dict[str, str] | None = None,
        mode: str | None = None,
        source: Obj | None = None,
        finalizers: list[str] | None = None,
        phase: str = "",
    ) -> str:
        """newVolume(name, size, boundToClaimUID, boundToClaimName, phase, policy, class, annotations...)."""
        name = self.n(upstream)
        spec: Obj = {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": policy, "storageClassName": cls}
        if mode == "Block":
            spec["volumeMode"] = "Block"
            spec.update(source or {"local": {"path": "/dev/null"}, "nodeAffinity": _on("node-1")})
        else:
            if mode:
                spec["volumeMode"] = mode
            spec.update(source or {"hostPath": {"path": f"/tmp/{name}"}})
        if claim:
            spec["claimRef"] = {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": "default", "name": claim, **({"uid": uid} if uid else {})}
        meta: Obj = {"name": name, "labels": {ROW: self.suffix, **(labels or {})}}
        notes = dict(ann) if isinstance(ann, dict) else {a: "yes" for a in ann}
        if notes:
            meta["annotations"] = notes
        if finalizers:
            meta["finalizers"] = finalizers
        self.api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": meta, "spec": spec})
        if phase:
            self.status("pv", name, {"phase": phase})
        return name

    def claim(
        self,
        upstream: str,
        size: str,
        *,
        volume: str = "",
        cls: str | None = None,
        ann: tuple[str, ...] | dict[str, str] = (),
        selector: dict[str, str] | None = None,
        mode: str | None = None,
        modes: tuple[str, ...] = ("ReadWriteOnce",),
        phase: str = "",
        isolate: bool = True,
        **spec_fields: Any,
    ) -> Obj:
        """newClaim(name, uid, size, boundToVolume, phase, class, annotations...); returns the
        created claim (its uid is the server's: rows that need it stage the claim first)."""
        name = self.n(upstream)
        spec: Obj = {
            "accessModes": list(modes),
            "resources": {"requests": {"storage": size}},
            "selector": {"matchLabels": {ROW: self.suffix, **(selector or {})}},
            **spec_fields,
        }
        if volume:
            spec["volumeName"] = volume
        if cls is not None:
            spec["storageClassName"] = cls
        if mode:
            spec["volumeMode"] = mode
        meta: Obj = {"name": name}
        notes = dict(ann) if isinstance(ann, dict) else {a: "yes" for a in ann}
        if notes:
            meta["annotations"] = notes
        created = self.api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec})[0]
        if phase:
            self.status("pvc", name, {"phase": phase})
        return created

    def pod(self, upstream: str, claim: str, pod_phase: str = "") -> str:
        """A pod using ``claim`` (upstream's runningPod / pendingPod / completedPod)."""
        name = self.n(upstream)
        obj: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [{"name": "vol1", "persistentVolumeClaim": {"claimName": claim}}]},
        }
        if pod_phase:
            obj["status"] = {"phase": pod_phase}
        self.api.apply(obj)
        return name

    def status(self, kind: str, name: str, status: Obj) -> None:
        """A status a user cannot apply (upstream's initial phase), written as the controller would."""
        direct_patch(self.stack, kind, name, {"status": status}, manager=CONTROLLER)

    # --- reading -------------------------------------------------------------------

    def get(self, kind: str, name: str) -> Obj | None:
        return self.api.get(kind, name, "" if kind == "pv" else "default")

    def wait(self, kind: str, name: str, until: Callable[[Obj | None], bool], timeout: float = 30.0) -> Obj:
        obj = self.api.wait(kind, name, until, "" if kind == "pv" else "default", timeout=timeout)
        assert obj is not None or until(None)
        return obj or {}

    def events(self, kind: str, name: str) -> list[str]:
        """``"<type> <reason>"`` of every event recorded about the object (upstream's format)."""
        return [f"{e['event_type']} {e['reason']}" for e in self.api.events(kind, name, "" if kind == "pv" else "default")]

    def messages(self, kind: str, name: str, reason: str) -> list[str]:
        return [e["message"] for e in self.api.events(kind, name, "" if kind == "pv" else "default") if e["reason"] == reason]

    def wait_event(self, kind: str, name: str, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events(kind, name):
            assert time.monotonic() < deadline, f"no {event!r} on {kind}/{name}; events: {self.events(kind, name)}"
            time.sleep(0.1)

    def stays(self, kind: str, name: str, holds: Callable[[Obj | None], bool], seconds: float = 1.0) -> Obj | None:
        """The object keeps satisfying ``holds`` for a while (a later sync must not undo it)."""
        deadline = time.monotonic() + seconds
        while True:
            obj = self.get(kind, name)
            assert holds(obj), f"{kind}/{name} changed: {json.dumps(obj, indent=1)[:2000]}"
            if time.monotonic() > deadline:
                return obj
            time.sleep(0.1)


def _on(node: str) -> Obj:
    return {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}


# --- what upstream's expected objects say ----------------------------------------------


def ref_of(pv: Obj | None) -> tuple[str, str]:
    """(claimRef name, claimRef uid) — upstream's (boundToClaimName, boundToClaimUID)."""
    ref = ((pv or {}).get("spec") or {}).get("claimRef") or {}
    return ref.get("name", ""), ref.get("uid", "")


def volume_is(pv: Obj | None, phase_: str, claim: str = "", uid: str = "", ann: tuple[str, ...] = ()) -> bool:
    """newVolume(..., uid, claim, phase, ..., annotations) as upstream's expected volume."""
    return pv is not None and phase(pv) == phase_ and ref_of(pv) == (claim, uid) and set(annotations(pv)) & {BOUND_BY, BIND_COMPLETED} == set(ann)


def claim_is(pvc: Obj | None, phase_: str, volume: str = "", ann: tuple[str, ...] = ()) -> bool:
    """newClaim(..., boundToVolume, phase, class, annotations) as upstream's expected claim."""
    return (
        pvc is not None
        and phase(pvc) == phase_
        and (pvc.get("spec") or {}).get("volumeName", "") == volume
        and set(annotations(pvc)) & {BOUND_BY, BIND_COMPLETED} == set(ann)
    )


def uid_of(obj: Obj) -> str:
    return str(obj["metadata"]["uid"])
