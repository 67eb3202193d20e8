"""The PV controller: binds claims to volumes, provisions in-tree, reclaims released
volumes — every rule of the seed (BRIEF §2), level-based.

    pvc = PVController(informer, objects, hostpath)
    await pvc.start()          # two loops: claims (``pvc:<ns>/<name>``), volumes (``pv:<name>``)

Claim worker: ``sync_claim`` — unbound claims are matched (FindBestMatch), delayed
(WaitForFirstConsumer) or provisioned; bound claims are kept Bound, or Lost when their
volume is gone or taken. Volume worker: ``sync_volume`` — phases Available / Bound /
Released / Failed and the reclaim policy. Out-of-tree claims are only annotated here;
``external_provisioner`` creates their volumes. Each write is one event on one object,
so a crash between the bind's six writes leaves a state the next sync finishes.
"""

from __future__ import annotations

import logging

from volplane.errors import AlreadyExists
from volplane.resources.controller import Loop
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of, ref_of
from volplane.resources.names import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_PROVISIONED_BY,
    ANN_STORAGE_PROVISIONER,
    LABEL_HOSTNAME,
)
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim, StorageClass
from volplane.resources.store import ObjectStore

from .binding import (
    bind_steps,
    bound_to_claim,
    find_best_match,
    introduced_by,
    satisfies,
    should_delay_binding,
)
from .intree import HOST_PATH, NO_PROVISIONER, HostPathPlugin, PluginError

__all__ = ["MANAGER", "PVController"]

log = logging.getLogger(__name__)

MANAGER = "persistentvolume-controller"
PV, PVC, SC, NODE = (BY_NAME[k] for k in ("PersistentVolume", "PersistentVolumeClaim", "StorageClass", "Node"))


class PVController:
    def __init__(self, informer: Informer, objects: ObjectStore, hostpath: HostPathPlugin, *, workers: int = 8) -> None:
        self.informer = informer
        self.objects = objects
        self.hostpath = hostpath
        self.claims = Loop("pv-controller-claims", self._sync_claim_key, workers=workers, keys=lambda: [key_of(c) for c in informer.list(PVC)])
        self.volumes = Loop("pv-controller-volumes", self._sync_volume_key, workers=workers, keys=lambda: [key_of(v) for v in informer.list(PV)])
        # volume name → claims naming it in spec.volumeName, so a PV's change finds them.
        self._by_volume: dict[str, set[str]] = {}
        informer.on_change(self._on_change)

    async def start(self) -> None:
        await self.claims.start()
        await self.volumes.start()

    async def stop(self) -> None:
        await self.claims.stop()
        await self.volumes.stop()

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        assert obj is not None
        if kind is PVC:
            key = key_of(obj)
            self.claims.add(key)
            before, after = PersistentVolumeClaim.of(old), PersistentVolumeClaim.of(new)
            for c in (before, after):
                if c is not None and c.volume_name:
                    self.volumes.add(c.volume_name)
            if before is not None and before.volume_name:
                self._by_volume.get(before.volume_name, set()).discard(key)
            if after is not None and after.volume_name:
                self._by_volume.setdefault(after.volume_name, set()).add(key)
        elif kind is PV:
            self.volumes.add(key_of(obj))
            for o in (old, new):
                ref = PersistentVolume(o).claim_ref if o is not None else None
                if ref is not None:
                    self.claims.add(ref.key)
            # Claims that name this volume (a user's pre-binding, or a Lost claim whose
            # volume came back).
            for key in self._by_volume.get(PersistentVolume(obj).name, ()):
                self.claims.add(key)
        elif kind is SC:
            for claim in map(PersistentVolumeClaim, self.informer.list(PVC)):
                if claim.phase != "Bound" and claim.storage_class == StorageClass(obj).name:
                    self.claims.add(claim.key)

    # --- writes -------------------------------------------------------------------

    async def _write(self, obj: Obj, patch: Obj, reason: str) -> Obj:
        new = await self.objects.update(obj, patch, reason=reason)
        self.informer.observe(new)
        return new

    async def _phase_to(self, obj: Obj, phase: str, reason: str = "", message: str = "") -> Obj:
        status = obj.get("status") or {}
        want = {"phase": phase, "reason": reason or None, "message": message or None}
        if status.get("phase") == phase and status.get("reason") == (reason or None) and status.get("message") == (message or None):
            return obj
        return await self._write(obj, {"status": want}, f"phase {phase}")

    async def _event(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        await self.objects.record(obj, event_type, reason, message)

    # --- claims ---------------------------------------------------------------------

    async def _sync_claim_key(self, key: str) -> None:
        claim = self.informer.get(PVC, key)
        if claim is not None and not PersistentVolumeClaim(claim).deleting:
            await self.sync_claim(claim)

    async def sync_claim(self, claim: Obj) -> None:
        if ANN_BIND_COMPLETED in PersistentVolumeClaim(claim).annotations:
            await self._sync_bound_claim(claim)
        else:
            await self._sync_unbound_claim(claim)

    async def _sync_unbound_claim(self, claim: Obj) -> None:
        if not PersistentVolumeClaim(claim).phase:
            claim = await self._phase_to(claim, "Pending")
        pvc = PersistentVolumeClaim(claim)
        name = pvc.volume_name
        if not name:
            classes = {StorageClass(sc).name: sc for sc in self.informer.list(SC)}
            delay = should_delay_binding(claim, classes)
            pv = find_best_match(claim, self.informer.list(PV), delay=delay, node=self._selected_node(pvc))
            if pv is not None:
                await self._bind(pv, claim)
            elif delay:
                await self._event(claim, "Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
            elif pvc.storage_class:
                await self._provision(claim, classes.get(pvc.storage_class))
            else:
                await self._event(claim, "Normal", "FailedBinding", "no persistent volumes available for this claim and no storage class is set")
            return
        # The claim names its volume (a user's pre-binding, or a bind a crash interrupted).
        pv = self.informer.get(PV, name)
        if pv is None:
            await self._event(claim, "Normal", "FailedBinding", f'volume "{name}" requested by the claim does not exist')
            return
        if PersistentVolume(pv).claim_ref is None:
            why = satisfies(pv, claim)
            if why:
                await self._event(claim, "Warning", "FailedBinding", f'Cannot bind to requested volume "{name}": {why}')
                return
            await self._bind(pv, claim)
        elif bound_to_claim(pv, claim):
            await self._bind(pv, claim)
        else:
            await self._event(claim, "Warning", "FailedBinding", f'volume "{name}" is already bound to a different claim')

    async def _sync_bound_claim(self, claim: Obj) -> None:
        name = PersistentVolumeClaim(claim).volume_name
        if not name:
            await self._lost(claim, "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!")
            return
        pv = self.informer.get(PV, name)
        if pv is None:
            await self._lost(claim, "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
            return
        ref = PersistentVolume(pv).claim_ref
        if ref is None or ref.uid == PersistentVolumeClaim(claim).uid:
            await self._bind(pv, claim)  # keeps it Bound; Lost → Bound when the volume is back
        else:
            await self._lost(claim, "Two claims are bound to the same volume, this one is bound incorrectly", reason="ClaimMisbound")

    async def _lost(self, claim: Obj, message: str, reason: str = "ClaimLost") -> None:
        if PersistentVolumeClaim(claim).phase != "Lost":
            await self._phase_to(claim, "Lost")
            await self._event(claim, "Warning", reason, message)

    async def _bind(self, pv: Obj, claim: Obj) -> None:
        pv_by, claim_by = await self._bound_by_controller(pv, claim)
        for target, patch in bind_steps(pv, claim, pv_by_controller=pv_by, claim_by_controller=claim_by):
            if target == "pv":
                pv = await self._write(pv, patch, "bind")
            else:
                claim = await self._write(claim, patch, "bind")

    async def _bound_by_controller(self, pv: Obj, claim: Obj) -> tuple[bool, bool]:
        """Whether the controller (not a user) points the PV at the claim, and the claim at
        the PV — from the objects, or, for a bind a crash interrupted, from their logs."""
        volume, pvc = PersistentVolume(pv), PersistentVolumeClaim(claim)
        ref = volume.claim_ref
        if volume.annotations.get(ANN_BOUND_BY_CONTROLLER) == "yes" or ref is None:
            pv_by = True
        elif not ref.uid or ANN_PROVISIONED_BY in volume.annotations:
            pv_by = False
        else:
            history = [e for _, e in await self.objects.history(ref_of(pv))]
            pv_by = introduced_by(history, ("spec", "claimRef")) == MANAGER
        if pvc.annotations.get(ANN_BOUND_BY_CONTROLLER) == "yes" or not pvc.volume_name:
            claim_by = True
        elif ANN_BIND_COMPLETED in pvc.annotations:
            claim_by = False
        else:
            history = [e for _, e in await self.objects.history(ref_of(claim))]
            claim_by = introduced_by(history, ("spec", "volumeName")) == MANAGER
        return pv_by, claim_by

    def _selected_node(self, claim: PersistentVolumeClaim) -> Obj | None:
        node = claim.selected_node
        if not node:
            return None
        return self.informer.get(NODE, node) or {"metadata": {"name": node, "labels": {LABEL_HOSTNAME: node}}}

    # --- provisioning -----------------------------------------------------------------

    async def _provision(self, claim: Obj, sc: Obj | None) -> None:
        cls = PersistentVolumeClaim(claim).storage_class
        if sc is None:
            await self._event(claim, "Warning", "ProvisioningFailed", f'storageclass.storage.k8s.io "{cls}" not found')
            return
        provisioner = sc["provisioner"]
        if provisioner == NO_PROVISIONER:
            await self._event(claim, "Normal", "ProvisioningFailed", f'storageclass "{cls}" uses {NO_PROVISIONER}: its volumes are never provisioned; waiting for a matching PersistentVolume')
            return
        ann = PersistentVolumeClaim(claim).annotations
        if ann.get(ANN_BETA_STORAGE_PROVISIONER) != provisioner or ann.get(ANN_STORAGE_PROVISIONER) != provisioner:
            claim = await self._write(claim, {"metadata": {"annotations": {ANN_BETA_STORAGE_PROVISIONER: provisioner, ANN_STORAGE_PROVISIONER: provisioner}}}, "set storage provisioner")
        if not provisioner.startswith("kubernetes.io/"):
            await self._event(claim, "Normal", "ExternalProvisioning", f'waiting for a volume to be created, either by external provisioner "{provisioner}" or manually created by system administrator')
            return
        if provisioner != HOST_PATH:
            await self._event(claim, "Warning", "ProvisioningFailed", f"no volume plugin matched name: {provisioner}")
            return
        if PersistentVolumeClaim(claim).block:
            await self._event(claim, "Warning", "ProvisioningFailed", f"{HOST_PATH} does not support block volume provisioning")
            return
        await self._provision_host_path(claim, sc)

    async def _provision_host_path(self, claim: Obj, sc: Obj) -> None:
        pvc, cls = PersistentVolumeClaim(claim), StorageClass(sc)
        name = f"pvc-{pvc.uid}"
        pv = self.informer.get(PV, name)
        if pv is None:
            path = await self.hostpath.provision(name)
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {ANN_BOUND_BY_CONTROLLER: "yes", ANN_PROVISIONED_BY: HOST_PATH}},
                "spec": {
                    "capacity": {"storage": pvc.spec["resources"]["requests"]["storage"]},
                    "accessModes": pvc.spec["accessModes"],
                    "persistentVolumeReclaimPolicy": cls.reclaim_policy,
                    "storageClassName": pvc.storage_class,
                    "mountOptions": cls.mount_options,
                    "volumeMode": pvc.volume_mode,
                    "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                    "claimRef": pvc.ref(),
                },
                "status": {"phase": "Bound"},
            }
            try:
                pv = await self.objects.create(pv)
            except AlreadyExists:
                return  # another replica made it; its event brings the claim back here
            self.informer.observe(pv)
            await self._event(claim, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {name} using {HOST_PATH}")
        await self._bind(pv, claim)

    # --- volumes ------------------------------------------------------------------------

    async def _sync_volume_key(self, key: str) -> None:
        pv = self.informer.get(PV, key)
        if pv is not None and not PersistentVolume(pv).deleting:
            await self.sync_volume(pv)

    async def sync_volume(self, pv: Obj) -> None:
        volume = PersistentVolume(pv)
        ref = volume.claim_ref
        if ref is None:
            if volume.phase != "Available":
                await self._phase_to(pv, "Available")
            return
        if not ref.uid:
            # Pre-bound by a user to a claim that has not bound yet: the claim's sync binds it.
            if volume.phase not in ("Available", "Bound"):
                await self._phase_to(pv, "Available")
            self.claims.add(ref.key)
            return
        claim = PersistentVolumeClaim.get(self.informer.get, ref.key)
        if claim is not None and claim.uid != ref.uid:
            claim = None  # the claim was deleted and another of the same name created
        if claim is None:
            if volume.phase not in ("Released", "Failed"):
                pv = await self._phase_to(pv, "Released")
            await self._reclaim(pv)
            return
        if not claim.volume_name:
            self.claims.add(claim.key)  # the claim's half of the bind is still to come
        elif claim.volume_name == volume.name:
            if volume.phase != "Bound":
                await self._phase_to(pv, "Bound")
        elif volume.annotations.get(ANN_BOUND_BY_CONTROLLER) == "yes":
            # The claim went to another volume; this one was only ours to give: release it.
            await self._unbind(pv)

    async def _unbind(self, pv: Obj) -> None:
        pv = await self._write(pv, {"spec": {"claimRef": None}, "metadata": {"annotations": {ANN_BOUND_BY_CONTROLLER: None}}}, "unbind")
        await self._phase_to(pv, "Available")

    async def _reclaim(self, pv: Obj) -> None:
        volume = PersistentVolume(pv)
        policy = volume.spec.get("persistentVolumeReclaimPolicy")
        if policy == "Retain":
            return
        if policy == "Recycle":
            try:
                if volume.plugin != HOST_PATH:
                    raise PluginError(f"No recycler plugin found for the volume ({volume.plugin})")
                await self.hostpath.recycle(pv)
            except PluginError as exc:
                await self._failed(pv, "VolumeFailedRecycle", str(exc))
                return
            await self._event(pv, "Normal", "VolumeRecycled", "Volume recycled")
            await self._unbind(pv)
            return
        if policy == "Delete":
            provisioned_by = volume.annotations.get(ANN_PROVISIONED_BY, "")
            if "csi" in volume.spec and provisioned_by and not provisioned_by.startswith("kubernetes.io/"):
                return  # the external provisioner that made it deletes it
            try:
                if volume.plugin != HOST_PATH:
                    raise PluginError(f'error getting deleter volume plugin for volume "{volume.name}": no deletable volume plugin matched')
                await self.hostpath.delete(pv)
            except PluginError as exc:
                await self._failed(pv, "VolumeFailedDelete", str(exc))
                return
            await self.objects.delete(ref_of(pv), current=pv)
            return
        await self._failed(pv, "VolumeUnknownReclaimPolicy", "Volume has unrecognized PersistentVolumeReclaimPolicy")

    async def _failed(self, pv: Obj, reason: str, message: str) -> None:
        await self._phase_to(pv, "Failed", reason, message)
        await self._event(pv, "Warning", reason, message)
