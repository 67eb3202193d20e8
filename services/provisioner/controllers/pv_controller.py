"""The PV controller: binds claims to volumes, provisions in-tree, reclaims released
volumes — every rule of the seed (BRIEF §2), level-based.

    pvc = PVController(informer, objects, hostpath)
    await pvc.start()          # two loops: claims (``pvc:<ns>/<name>``), volumes (``pv:<name>``)

Claim worker: ``sync_claim`` — unbound claims are matched (FindBestMatch), delayed
(WaitForFirstConsumer) or provisioned; bound claims are kept Bound, or Lost when their
volume is gone or taken. Volume worker: ``sync_volume`` — phases Available / Bound /
Released / Failed and the reclaim policy: a recycle waits while a pod still uses the old
claim; a CSI or externally provisioned volume stays Released for its external deleter;
an in-tree Delete volume keeps FINALIZER until its storage is gone, so a PV deleted first
is still reclaimed. Out-of-tree claims are only annotated here; ``external_provisioner``
creates their volumes. Each write is one event on one object, so a crash between the
bind's six writes leaves a state the next sync finishes. Kubernetes' own test tables,
replayed end to end, are tests/controlplane/test_upstream_pv_controller.py.
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
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim, Pod, StorageClass
from volplane.resources.store import ObjectStore, version_of

from .binding import (
    bind_steps,
    bound_to_claim,
    find_best_match,
    introduced_by,
    satisfies,
    should_delay_binding,
)
from .intree import HOST_PATH, NO_PROVISIONER, HostPathPlugin, PluginError

__all__ = ["ANN_MIGRATED_TO", "FINALIZER", "MANAGER", "PVController"]

log = logging.getLogger(__name__)

MANAGER = "persistentvolume-controller"
# Kubernetes' PVDeletionInTreeProtectionFinalizer: an in-tree, dynamically provisioned
# volume with policy Delete keeps it until its storage is gone, so deleting the PV object
# first still deletes the storage (HonorPVReclaimPolicy).
FINALIZER = "kubernetes.io/pv-controller"
# A volume handed over to a CSI driver by CSI migration: its external provisioner reclaims it.
ANN_MIGRATED_TO = "pv.kubernetes.io/migrated-to"
PV, PVC, SC, NODE, POD = (BY_NAME[k] for k in ("PersistentVolume", "PersistentVolumeClaim", "StorageClass", "Node", "Pod"))


class PVController:
    def __init__(self, informer: Informer, objects: ObjectStore, hostpath: HostPathPlugin, *, workers: int = 8) -> None:
        self.informer = informer
        self.objects = objects
        self.hostpath = hostpath
        self.claims = Loop("pv-controller-claims", self._sync_claim_key, workers=workers, keys=lambda: [key_of(c) for c in informer.list(PVC)])
        self.volumes = Loop("pv-controller-volumes", self._sync_volume_key, workers=workers, keys=lambda: [key_of(v) for v in informer.list(PV)])
        # volume name → claims naming it in spec.volumeName, so a PV's change finds them.
        self._by_volume: dict[str, set[str]] = {}
        # claim key → volumes whose claimRef names it, so a pod's change finds the volume a
        # recycle waits on (Kubernetes' pod index by claim).
        self._by_claim_ref: dict[str, set[str]] = {}
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
            name = key_of(obj)
            self.volumes.add(name)
            for o in (old, new):
                ref = PersistentVolume(o).claim_ref if o is not None else None
                if ref is not None:
                    self.claims.add(ref.key)
                    self._by_claim_ref.get(ref.key, set()).discard(name)
            ref = PersistentVolume(new).claim_ref if new is not None else None
            if ref is not None:
                self._by_claim_ref.setdefault(ref.key, set()).add(name)
            # Claims that name this volume (a user's pre-binding, or a Lost claim whose
            # volume came back).
            for key in self._by_volume.get(PersistentVolume(obj).name, ()):
                self.claims.add(key)
        elif kind is SC:
            for claim in map(PersistentVolumeClaim, self.informer.list(PVC)):
                if claim.phase != "Bound" and claim.storage_class == StorageClass(obj).name:
                    self.claims.add(claim.key)
        elif kind is POD:
            # A pod that stops using a claim may let a released volume be recycled.
            for key in Pod(obj).claim_keys:
                for volume in self._by_claim_ref.get(key, ()):
                    self.volumes.add(volume)

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
        pvc = PersistentVolumeClaim(claim)
        name = pvc.volume_name
        if not name:
            classes = {StorageClass(sc).name: sc for sc in self.informer.list(SC)}
            delay = should_delay_binding(claim, classes)
            pv = find_best_match(claim, self.informer.list(PV), delay=delay, node=self._selected_node(pvc))
            if pv is not None:
                await self._bind(pv, claim)
                return
            if delay:
                await self._event(claim, "Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
            elif pvc.storage_class:
                claim = await self._pending(claim)
                await self._provision(claim, classes.get(pvc.storage_class))
                return
            else:
                await self._event(claim, "Normal", "FailedBinding", "no persistent volumes available for this claim and no storage class is set")
            await self._pending(claim)
            return
        # The claim names its volume (a user's pre-binding, or a bind a crash interrupted).
        pv = self.informer.get(PV, name)
        if pv is None:
            await self._pending(claim)  # Kubernetes says nothing here and tries again later
            return
        if PersistentVolume(pv).claim_ref is None:
            why = satisfies(pv, claim)
            if why:
                await self._event(claim, "Warning", "VolumeMismatch", f'Cannot bind to requested volume "{name}": {why}')
                await self._pending(claim)
                return
            await self._bind(pv, claim)
        elif bound_to_claim(pv, claim):
            await self._bind(pv, claim)
        else:
            await self._event(claim, "Warning", "FailedBinding", f'volume "{name}" already bound to a different claim.')
            if pvc.annotations.get(ANN_BOUND_BY_CONTROLLER) != "yes":
                await self._pending(claim)
            # else: the controller bound it, and someone took its bind-completed away — Kubernetes
            # calls this "should never happen" and leaves the claim as it is.

    async def _pending(self, claim: Obj) -> Obj:
        """Kubernetes' updateClaimStatus(Pending, nil): phase Pending, no bound capacity or modes."""
        status = PersistentVolumeClaim(claim).status
        if status.get("phase") == "Pending" and "capacity" not in status and "accessModes" not in status:
            return claim
        return await self._write(claim, {"status": {"phase": "Pending", "capacity": None, "accessModes": None}}, "phase Pending")

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
            await self._event(claim, "Warning", reason, message)  # first, as in _failed
            await self._phase_to(claim, "Lost")

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
        if provisioner.startswith("kubernetes.io/") and provisioner != HOST_PATH:
            # No in-tree plugin of that name: nobody will provision it, so the claim is not
            # annotated for anyone (Kubernetes' findProvisionablePlugin fails first).
            await self._event(claim, "Warning", "ProvisioningFailed", f"no volume plugin matched name: {provisioner}")
            return
        ann = PersistentVolumeClaim(claim).annotations
        if ann.get(ANN_BETA_STORAGE_PROVISIONER) != provisioner or ann.get(ANN_STORAGE_PROVISIONER) != provisioner:
            claim = await self._write(claim, {"metadata": {"annotations": {ANN_BETA_STORAGE_PROVISIONER: provisioner, ANN_STORAGE_PROVISIONER: provisioner}}}, "set storage provisioner")
        if not provisioner.startswith("kubernetes.io/"):
            await self._event(claim, "Normal", "ExternalProvisioning", f'waiting for a volume to be created, either by external provisioner "{provisioner}" or manually created by system administrator')
            return
        pvc, klass = PersistentVolumeClaim(claim), StorageClass(sc)
        if pvc.block:
            await self._event(claim, "Warning", "ProvisioningFailed", f"{HOST_PATH} does not support block volume provisioning")
            return
        if klass.mount_options:
            # Kubernetes refuses rather than make a volume that ignores the class's options.
            await self._event(claim, "Warning", "ProvisioningFailed", f'Mount options are not supported by the provisioner but StorageClass "{klass.name}" has mount options {klass.mount_options}')
            return
        if pvc.spec.get("dataSource") or pvc.spec.get("dataSourceRef"):
            # An in-tree plugin cannot fill a volume from a snapshot or a claim: an empty
            # volume would silently lose what the user asked for.
            await self._event(claim, "Warning", "ProvisioningFailed", f"plugin {HOST_PATH} does not support data source")
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
                "metadata": {
                    "name": name,
                    "annotations": {ANN_BOUND_BY_CONTROLLER: "yes", ANN_PROVISIONED_BY: HOST_PATH},
                    **({"finalizers": [FINALIZER]} if cls.reclaim_policy == "Delete" else {}),
                },
                "spec": {
                    "capacity": {"storage": pvc.spec["resources"]["requests"]["storage"]},
                    "accessModes": pvc.spec["accessModes"],
                    "persistentVolumeReclaimPolicy": cls.reclaim_policy,
                    "storageClassName": pvc.storage_class,
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
        # A PV marked for deletion is still synced, as Kubernetes does: a released one is
        # reclaimed and then lets go of the controller's finalizer.
        pv = self.informer.get(PV, key)
        if pv is not None:
            await self.sync_volume(pv)

    async def sync_volume(self, pv: Obj) -> None:
        pv = await self._anneal_finalizer(pv)
        volume = PersistentVolume(pv)
        ref = volume.claim_ref
        if ref is None:
            if volume.phase != "Available":
                await self._phase_to(pv, "Available")
            return
        if not ref.uid:
            # Pre-bound by a user to a claim that has not bound yet: the claim's sync binds it.
            if volume.phase != "Available":
                await self._phase_to(pv, "Available")
            self.claims.add(ref.key)
            return
        claim = PersistentVolumeClaim.get(self.informer.get, ref.key)
        if claim is not None and claim.uid != ref.uid:
            claim = None  # the claim was deleted and another of the same name created
        if claim is None:
            await self._release(pv)
            return
        if not claim.volume_name:
            if volume.volume_mode != claim.volume_mode:
                # The claim's FindBestMatch will never pick this volume: say why, on both.
                await self._event(pv, "Warning", "VolumeMismatch", f'Cannot bind PersistentVolume to requested PersistentVolumeClaim "{claim.name}" due to incompatible volumeMode.')
                await self._event(claim.raw, "Warning", "VolumeMismatch", f'Cannot bind PersistentVolume "{volume.name}" to requested PersistentVolumeClaim due to incompatible volumeMode.')
                return
            self.claims.add(claim.key)  # the claim's half of the bind is still to come
        elif claim.volume_name == volume.name:
            if volume.phase != "Bound":
                await self._phase_to(pv, "Bound")
        elif ANN_PROVISIONED_BY in volume.annotations and volume.reclaim_policy == "Delete":
            # Provisioned for this claim, which got bound elsewhere: not needed, delete it.
            await self._release(pv)
        else:
            # Bound by the controller: undo it. Pre-bound by a user: keep the user's name and
            # drop only the uid, so the volume waits for that claim to come free.
            await self._unbind(pv)

    async def _release(self, pv: Obj) -> None:
        """Released (a Failed volume stays Failed, so the user sees what went wrong), then
        the reclaim policy — retried on every sync."""
        if PersistentVolume(pv).phase not in ("Released", "Failed"):
            pv = await self._phase_to(pv, "Released")
        await self._reclaim(pv)

    async def _anneal_finalizer(self, pv: Obj) -> Obj:
        """Kubernetes' modifyDeletionFinalizers: an in-tree, dynamically provisioned volume
        carries FINALIZER exactly while its policy is Delete."""
        volume = PersistentVolume(pv)
        provisioner = volume.annotations.get(ANN_PROVISIONED_BY, "")
        if not provisioner.startswith("kubernetes.io/"):
            return pv
        finalizers = volume.finalizers
        want = volume.reclaim_policy == "Delete" and not volume.annotations.get(ANN_MIGRATED_TO)
        if want == (FINALIZER in finalizers) or (want and volume.deleting):
            return pv  # (no finalizer may be added to an object being deleted)
        rest = [*finalizers, FINALIZER] if want else [f for f in finalizers if f != FINALIZER]
        return await self._write(pv, {"metadata": {"finalizers": rest or None}}, "finalizer")

    async def _unbind(self, pv: Obj) -> None:
        volume = PersistentVolume(pv)
        if volume.annotations.get(ANN_BOUND_BY_CONTROLLER) == "yes":
            patch: Obj = {"spec": {"claimRef": None}, "metadata": {"annotations": {ANN_BOUND_BY_CONTROLLER: None}}}
        else:
            patch = {"spec": {"claimRef": {"uid": None}}}
        pv = await self._write(pv, patch, "unbind")
        await self._phase_to(pv, "Available")

    def _used_by(self, pv: Obj) -> list[str]:
        """Pods not yet terminated that use the claim the volume was bound to (isVolumeUsed)."""
        ref = PersistentVolume(pv).claim_ref
        if ref is None:
            return []
        pods = map(Pod, self.informer.list(POD))
        return sorted(f"{p.namespace}/{p.name}" for p in pods if not p.terminated and ref.key in p.claim_keys)

    async def _reclaim(self, pv: Obj) -> None:
        volume = PersistentVolume(pv)
        if volume.annotations.get(ANN_MIGRATED_TO):
            return  # migrated to CSI: the external provisioner reclaims it
        policy = volume.spec.get("persistentVolumeReclaimPolicy")
        if policy == "Retain":
            return
        if policy == "Recycle":
            await self._recycle(pv)
            return
        if policy == "Delete":
            await self._delete(pv)
            return
        await self._failed(pv, "VolumeUnknownReclaimPolicy", "Volume has unrecognized PersistentVolumeReclaimPolicy")

    async def _recycle(self, pv: Obj) -> None:
        volume = PersistentVolume(pv)
        ref = volume.claim_ref
        # A pod may still have the old claim's data mounted: scrubbing it now would wipe it
        # under the pod. Unless a new claim of that name exists (then the pods are that
        # claim's, on another volume), wait; a pod's change brings the volume back here.
        users = self._used_by(pv)
        if users and ref is not None and self.informer.get(PVC, ref.key) is None:
            await self._event(pv, "Normal", "VolumeFailedRecycle", f"Volume is used by pods: {','.join(users)}")
            return
        if volume.plugin != HOST_PATH:
            await self._failed(pv, "VolumeFailedRecycle", "No recycler plugin found for the volume!")
            return
        try:
            await self.hostpath.recycle(pv)
        except PluginError as exc:
            await self._failed(pv, "VolumeFailedRecycle", f"Recycle failed: {exc}")
            return
        await self._event(pv, "Normal", "VolumeRecycled", "Volume recycled")
        await self._unbind(pv)

    async def _delete(self, pv: Obj) -> None:
        volume = PersistentVolume(pv)
        provisioned_by = volume.annotations.get(ANN_PROVISIONED_BY, "")
        if "csi" in volume.spec or (provisioned_by and not provisioned_by.startswith("kubernetes.io/")):
            # An external deleter's volume (HonorPVReclaimPolicy's findDeletablePlugin): a CSI
            # volume, made statically or by a provisioner not in-tree, stays Released until
            # its external provisioner (or an administrator) deletes it.
            return
        if volume.plugin != HOST_PATH:
            await self._failed(pv, "VolumeFailedDelete", f'error getting deleter volume plugin for volume "{volume.name}": no volume plugin matched')
            return
        try:
            await self.hostpath.delete(pv)
        except PluginError as exc:
            await self._failed(pv, "VolumeFailedDelete", f'failed to create deleter for volume "{volume.name}": {exc}')
            return
        if FINALIZER in volume.finalizers:
            # The storage is gone: let go, so a PV already marked for deletion goes now.
            rest = [f for f in volume.finalizers if f != FINALIZER]
            written = await self.objects.update(pv, {"metadata": {"finalizers": rest or None}}, reason="volume deleted")
            if volume.deleting and not rest:
                self.informer.observe(None, ref_of(pv), deleted_at=version_of(written))
                return  # that write was the deletion
            pv = written
            self.informer.observe(pv)
        await self.objects.delete(ref_of(pv), current=pv)

    async def _failed(self, pv: Obj, reason: str, message: str) -> None:
        # The event first: whoever sees the phase change can read why at once.
        await self._event(pv, "Warning", reason, message)
        await self._phase_to(pv, "Failed", reason, message)
