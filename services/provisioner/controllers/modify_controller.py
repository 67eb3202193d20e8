"""The external-resizer role, modification part (KEP 3751): a Bound claim whose
``spec.volumeAttributesClassName`` names another VolumeAttributesClass than the one it has
→ CSI ControllerModifyVolume with that class's parameters → the claim and its PV say so.

    modifier = ModifyController(informer, ObjectStore(store, "external-resizer"), own_endpoint=cfg.csi_endpoint)
    await modifier.start()          # one loop, keys ``<ns>/<claim>``

For each claim of a driver this process reaches (``volplane.resources.drivers``), as
kubernetes-csi/external-resizer's modify controller does:

- the class does not exist → ``modifyVolumeStatus {targetVolumeAttributesClassName, status:
  Pending}``, conditions untouched; the class's creation wakes the claim up again;
- otherwise InProgress with the ModifyingVolume condition and a VolumeModify line, then
  ControllerModifyVolume (idempotent in CSI, so a crash before the result is written calls
  it again on restart);
- done → the PV's ``spec.volumeAttributesClassName`` first, then the claim's
  ``status.currentVolumeAttributesClassName``, ``modifyVolumeStatus`` gone, the modify
  conditions gone, VolumeModifySuccessful;
- failed → ModifyVolumeError condition and a VolumeModifyFailed line; INVALID_ARGUMENT
  (a parameter the driver refuses) makes it Infeasible, which waits for the claim to name
  another class (Kubernetes retries it slowly), anything else is retried with backoff;
- the claim names the class it has again (after an Infeasible one) → the leftover status
  and conditions go.

A class for another driver than the volume's is Infeasible too (volplane's own check: the
driver would be handed parameters that are not its own). The claim's class when it is
bound is set by the PV controller from its PV (binding.py), as in Kubernetes, so a volume
provisioned with a class is not modified again.
"""

from __future__ import annotations

import logging

from volplane.csiclient import client_for
from volplane.errors import InvalidArgument, VolplaneError
from volplane.resources import claim_status as cs
from volplane.resources.controller import Loop
from volplane.resources.drivers import controller_endpoint
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim, VolumeAttributesClass
from volplane.resources.store import ObjectStore

__all__ = ["ModifyController"]

log = logging.getLogger(__name__)

PV, PVC, VAC = BY_NAME["PersistentVolume"], BY_NAME["PersistentVolumeClaim"], BY_NAME["VolumeAttributesClass"]


def _modify_status(claim: Obj) -> Obj:
    return (claim.get("status") or {}).get("modifyVolumeStatus") or {}


class ModifyController:
    def __init__(self, informer: Informer, objects: ObjectStore, *, own_endpoint: str, workers: int = 4) -> None:
        self.informer = informer
        self.objects = objects
        self.own_endpoint = own_endpoint
        self.loop = Loop("external-resizer-modify", self._sync_key, workers=workers, keys=lambda: [key_of(c) for c in informer.list(PVC)])
        informer.on_change(self._on_change)

    async def start(self) -> None:
        await self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        if kind is PVC and new is not None:
            self.loop.add(key_of(new))
        elif kind is PV and new is not None:
            ref = PersistentVolume(new).claim_ref
            if ref is not None:
                self.loop.add(ref.key)
        elif kind is VAC and new is not None:
            name = VolumeAttributesClass(new).name
            for claim in map(PersistentVolumeClaim, self.informer.list(PVC)):
                if claim.attributes_class == name:
                    self.loop.add(claim.key)

    async def _sync_key(self, key: str) -> None:
        claim = self.informer.get(PVC, key)
        if claim is not None:
            await self.sync(claim)

    async def sync(self, claim: Obj) -> None:
        pvc = PersistentVolumeClaim(claim)
        target = pvc.attributes_class
        current = str(pvc.status.get("currentVolumeAttributesClassName") or "")
        if not target or pvc.phase != "Bound" or not pvc.volume_name or pvc.deleting:
            return
        pv = self.informer.get(PV, pvc.volume_name)
        volume = PersistentVolume.of(pv)
        if pv is None or volume is None or volume.csi is None:
            return
        ref = volume.claim_ref
        if ref is None or ref.namespace != pvc.namespace or ref.uid != pvc.uid:
            return
        endpoint = controller_endpoint(self.informer, volume.csi_driver, self.own_endpoint)
        if endpoint is None:
            return  # another driver's resizer modifies it
        status = _modify_status(claim)
        if target == current:
            if status or cs.condition_of(claim, cs.MODIFYING_VOLUME) or cs.condition_of(claim, cs.MODIFY_VOLUME_ERROR):
                # Back to the class it has (after an Infeasible one, say): nothing to modify.
                await self._write(claim, cs.modify_completed(claim, target), "modify: back to the current class")
            return
        if status.get("status") == cs.MODIFY_INFEASIBLE and status.get("targetVolumeAttributesClassName") == target:
            return  # refused for good: waits for the claim to name another class
        vac = VolumeAttributesClass.get(self.informer.get, target)
        if vac is None:
            if status != {"targetVolumeAttributesClassName": target, "status": cs.MODIFY_PENDING}:
                await self._write(claim, cs.modify_status(claim, cs.MODIFY_PENDING, target), "modify: class not found")
            return
        if vac.driver != volume.csi_driver:
            message = f'VolumeAttributesClass "{target}" is for driver {vac.driver}, not {volume.csi_driver} of volume {volume.name}'
            await self.objects.record(claim, "Warning", "VolumeModifyFailed", message)
            await self._write(claim, cs.modify_status(claim, cs.MODIFY_INFEASIBLE, target, message), "modify infeasible")
            return
        if status != {"targetVolumeAttributesClassName": target, "status": cs.MODIFY_IN_PROGRESS} or cs.condition_of(claim, cs.MODIFYING_VOLUME) is None:
            claim = await self._write(claim, cs.modify_status(claim, cs.MODIFY_IN_PROGRESS, target), "modify")
        await self.objects.record(claim, "Normal", "VolumeModify", f"external resizer is modifying volume {pvc.name} with vac {target}")
        try:
            await client_for(endpoint).controller_modify(str(volume.csi["volumeHandle"]), vac.parameters)
        except VolplaneError as exc:
            await self.objects.record(claim, "Warning", "VolumeModifyFailed", exc.message)
            claim = await self._write(claim, cs.modify_error(claim, exc.message), "modify failed")
            if isinstance(exc, InvalidArgument):
                await self._write(claim, cs.modify_status(claim, cs.MODIFY_INFEASIBLE, target, exc.message), "modify infeasible")
                return
            raise
        # The PV before the claim, as the external-resizer does: a crash between the two
        # leaves the claim InProgress, and the next sync modifies again (a no-op) and finishes.
        if volume.attributes_class != target:
            self.informer.observe(await self.objects.update(pv, {"spec": {"volumeAttributesClassName": target}}, reason="modify"))
        await self._write(claim, cs.modify_completed(claim, target), "modify done")
        await self.objects.record(claim, "Normal", "VolumeModifySuccessful", f"external resizer modified volume {pvc.name} with vac {target} successfully")

    async def _write(self, claim: Obj, patch: Obj, reason: str) -> Obj:
        new = await self.objects.update(claim, patch, reason=reason)
        self.informer.observe(new)
        return new
