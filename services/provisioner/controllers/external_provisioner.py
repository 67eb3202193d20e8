"""The external-provisioner role: CSI CreateVolume for claims annotated with a driver this
process can reach, a PV for each, and CSI DeleteVolume for released PVs it provisioned.

    ext = ExternalProvisioner(informer, objects, own_endpoint=cfg.csi_endpoint)
    await ext.start()       # loops: claims ``<ns>/<name>``, volumes ``<name>``

As the seed says: a claim whose volumeName is set is skipped, so is one annotated for
another provisioner; a Block claim goes to the driver with a block capability (a driver
that cannot do block answers CreateVolume with an error, shown as ProvisioningFailed).
The PV is named ``pvc-<claim uid>`` and CreateVolume is called with that name, so a retry
after a crash finds the same volume; the PV carries ``pv.kubernetes.io/provisioned-by``
and a claimRef, and the PV controller then binds the pair.

A claim naming a VolumeAttributesClass (``spec.volumeAttributesClassName``) gets that
class's parameters as CreateVolume's ``mutable_parameters`` and a PV that names the class;
a class that does not exist (yet) or is another driver's fails the provisioning with
ProvisioningFailed, retried (the class's creation wakes the claim up).

A claim with ``spec.dataSource`` / ``spec.dataSourceRef`` (``data_sources.py``) is
restored from a VolumeSnapshot's snapshot or cloned from another claim's volume: the
source goes to CreateVolume as its ``volume_content_source``; a source that cannot be used
yet (a snapshot not ready) or at all (too big for the claim, another driver's) is a
ProvisioningFailed event with external-provisioner's message, retried with backoff. A
claim being cloned carries ``provisioner.storage.kubernetes.io/cloning-protection`` until
no claim waits to be cloned from it.
"""

from __future__ import annotations

import logging
from typing import Any

from volplane.csiclient import client_for
from volplane.errors import AlreadyExists, FailedPrecondition, NotFound
from volplane.nodes import TOPOLOGY_KEY
from volplane.resources.controller import Loop
from volplane.resources.drivers import provisioner_driver
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of, ref_of
from volplane.resources.names import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_BIND_COMPLETED,
    ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    FINALIZER_CLONE_SOURCE,
    OWN_DRIVER,
)
from volplane.resources.objects import Node, Obj, PersistentVolume, PersistentVolumeClaim, StorageClass, VolumeAttributesClass
from volplane.resources.schema import format_quantity
from volplane.resources.store import ObjectStore, version_of

from .binding import should_delay_binding
from .data_sources import clone_source_key, content_source, data_source, pending_clones

__all__ = ["ExternalProvisioner"]

log = logging.getLogger(__name__)

PV, PVC, SC, NODE = (BY_NAME[k] for k in ("PersistentVolume", "PersistentVolumeClaim", "StorageClass", "Node"))
VS, VSC = BY_NAME["VolumeSnapshot"], BY_NAME["VolumeSnapshotContent"]
_CSI_PARAM = "csi.storage.k8s.io/"


def node_affinity(topologies: Any) -> Obj | None:
    """A PV's required node affinity from CSI accessible_topology (one term per segment)."""
    terms = [
        {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(t.segments.items())]}
        for t in topologies
        if t.segments
    ]
    return {"required": {"nodeSelectorTerms": terms}} if terms else None


class ExternalProvisioner:
    def __init__(self, informer: Informer, objects: ObjectStore, *, own_endpoint: str, workers: int = 8) -> None:
        self.informer = informer
        self.objects = objects
        self.own_endpoint = own_endpoint
        self.claims = Loop("external-provisioner-claims", self._sync_claim_key, workers=workers, keys=lambda: [key_of(c) for c in informer.list(PVC)])
        self.volumes = Loop("external-provisioner-volumes", self._sync_volume_key, workers=workers, keys=lambda: [key_of(v) for v in informer.list(PV)])
        informer.on_change(self._on_change)

    async def start(self) -> None:
        await self.claims.start()
        await self.volumes.start()

    async def stop(self) -> None:
        await self.claims.stop()
        await self.volumes.stop()

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        changed = new or old
        if kind is PVC and changed is not None:
            # A clone made or gone: its source may let go of its cloning-protection.
            self.claims.add(clone_source_key(PersistentVolumeClaim(changed)))
        elif kind is VS or kind is VSC:
            # A snapshot ready (or gone): the claims waiting to be restored from it go on.
            for waiting in map(PersistentVolumeClaim, self.informer.list(PVC)):
                if not waiting.volume_name and data_source(waiting).get("kind") == VS.name:
                    self.claims.add(waiting.key)
        if kind is PVC and new is not None:
            self.claims.add(key_of(new))
        elif kind is PV and new is not None:
            self.volumes.add(key_of(new))
        elif kind is SC or kind is BY_NAME["CSIDriver"] or kind is BY_NAME["VolumeAttributesClass"]:
            for claim in map(PersistentVolumeClaim, self.informer.list(PVC)):
                if not claim.volume_name:
                    self.claims.add(claim.key)

    async def _sync_claim_key(self, key: str) -> None:
        claim = self.informer.get(PVC, key)
        if claim is not None:
            await self.provision(claim)

    async def provision(self, claim: Obj) -> None:
        pvc = PersistentVolumeClaim(claim)
        if FINALIZER_CLONE_SOURCE in pvc.finalizers and not pending_clones(self.informer.list(PVC), pvc):
            # Every clone of it is made: its volume may go now (external-provisioner's clone controller).
            rest = [f for f in pvc.finalizers if f != FINALIZER_CLONE_SOURCE]
            written = await self.objects.update(claim, {"metadata": {"finalizers": rest or None}}, reason="clones made")
            if pvc.deleting and not rest:
                self.informer.observe(None, ref_of(claim), deleted_at=version_of(written))
                return
            self.informer.observe(written)
            claim, pvc = written, PersistentVolumeClaim(written)
        ann = pvc.annotations
        provisioner = ann.get(ANN_STORAGE_PROVISIONER) or ann.get(ANN_BETA_STORAGE_PROVISIONER)
        if pvc.deleting or pvc.volume_name or ANN_BIND_COMPLETED in ann:
            return  # the seed: a claim with volumeName set is skipped
        if not provisioner or provisioner.startswith("kubernetes.io/"):
            return
        served = provisioner_driver(self.informer, provisioner, self.own_endpoint)
        if served is None:
            return  # another provisioner's claim (or nobody's yet): not ours
        driver, endpoint = served
        classes = {StorageClass(sc).name: sc for sc in self.informer.list(SC)}
        sc = StorageClass.of(classes.get(pvc.storage_class))
        if sc is None or sc.provisioner != provisioner or should_delay_binding(claim, classes):
            return
        name = f"pvc-{pvc.uid}"
        if self.informer.get(PV, name) is not None:
            return  # made already; the PV controller binds it
        await self.objects.record(claim, "Normal", "Provisioning", f'External provisioner is provisioning volume for claim "{key_of(claim)}"')
        params = {k: v for k, v in sc.parameters.items() if not k.startswith(_CSI_PARAM)}
        fs_type = sc.parameters.get(f"{_CSI_PARAM}fstype", "")
        block = pvc.block
        node = ann.get(ANN_SELECTED_NODE)
        try:
            attributes = self._attributes(pvc, driver)
            source = content_source(self.informer.get, pvc, driver)
            if source is not None and source[0] == "volume":
                await self._protect_clone_source(pvc)
            volume = await client_for(endpoint).create_volume(
                name,
                pvc.request,
                access_mode=pvc.spec["accessModes"][0],
                block=block,
                fs_type=fs_type,
                mount_flags=sc.mount_options,
                parameters=params,
                node_topology=self._topology(driver, node) if node else None,
                mutable_parameters=attributes,
                content_source=source,
            )
            if source is not None and not volume.HasField("content_source"):
                # external-provisioner's check: an empty volume would silently lose the data asked for.
                await client_for(endpoint).delete_volume(volume.volume_id)
                raise FailedPrecondition("volume content source missing")
        except Exception as exc:
            message = getattr(exc, "message", str(exc))
            await self.objects.record(claim, "Warning", "ProvisioningFailed", f'failed to provision volume with StorageClass "{sc.name}": {message}')
            raise
        spec: Obj = {
            "capacity": {"storage": format_quantity(volume.capacity_bytes or pvc.request)},
            "accessModes": pvc.spec["accessModes"],
            "persistentVolumeReclaimPolicy": sc.reclaim_policy,
            "storageClassName": pvc.storage_class,
            "mountOptions": sc.mount_options,
            "volumeMode": pvc.volume_mode,
            "csi": {"driver": driver, "volumeHandle": volume.volume_id, "volumeAttributes": dict(volume.volume_context), **({"fsType": fs_type} if fs_type else {})},
            "claimRef": pvc.ref(),
        }
        if pvc.attributes_class:
            spec["volumeAttributesClassName"] = pvc.attributes_class
        affinity = node_affinity(volume.accessible_topology)
        if affinity:
            spec["nodeAffinity"] = affinity
        pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name, "annotations": {ANN_PROVISIONED_BY: provisioner}}, "spec": spec}
        try:
            pv = await self.objects.create(pv)
        except AlreadyExists:
            return
        self.informer.observe(pv)
        await self.objects.record(claim, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {name}")

    async def _protect_clone_source(self, pvc: PersistentVolumeClaim) -> None:
        """cloning-protection on the claim being cloned, so its volume stays while it is copied."""
        key = clone_source_key(pvc)
        source = PersistentVolumeClaim.get(self.informer.get, key) if key else None
        if source is None or FINALIZER_CLONE_SOURCE in source.finalizers:
            return
        written = await self.objects.update(source.raw, {"metadata": {"finalizers": [*source.finalizers, FINALIZER_CLONE_SOURCE]}}, reason="cloning")
        self.informer.observe(written)

    def _attributes(self, pvc: PersistentVolumeClaim, driver: str) -> dict[str, str]:
        """The mutable parameters of the claim's VolumeAttributesClass ({} for none), or
        FailedPrecondition in external-provisioner's words."""
        name = pvc.attributes_class
        if not name:
            return {}
        vac = VolumeAttributesClass.get(self.informer.get, name)
        if vac is None:
            raise FailedPrecondition(f'volumeattributesclasses.storage.k8s.io "{name}" not found')
        if vac.driver != driver:
            raise FailedPrecondition(f"VAC {name} referenced in PVC is for driver {vac.driver} which does not match driver name {driver}")
        return vac.parameters

    def _topology(self, driver: str, node: str) -> dict[str, str]:
        if driver == OWN_DRIVER:
            return {TOPOLOGY_KEY: node}
        obj = Node.get(self.informer.get, node)
        labels = obj.labels if obj is not None else {}
        return {k: v for k, v in labels.items() if "topology" in k}

    async def _sync_volume_key(self, key: str) -> None:
        pv = self.informer.get(PV, key)
        if pv is not None:
            await self.delete(pv)

    async def delete(self, pv: Obj) -> None:
        """DeleteVolume, then the PV goes — for released PVs with policy Delete that this
        process's driver provisioned."""
        volume = PersistentVolume(pv)
        phase = volume.phase
        if phase not in ("Released", "Failed") or volume.reclaim_policy != "Delete" or volume.csi is None:
            return
        served = provisioner_driver(self.informer, volume.annotations.get(ANN_PROVISIONED_BY, ""), self.own_endpoint)
        if served is None or served[0] != volume.csi_driver:
            return
        endpoint = served[1]
        ref = volume.claim_ref
        claim = PersistentVolumeClaim.get(self.informer.get, ref.key) if ref is not None else None
        if claim is not None and ref is not None and claim.uid == ref.uid:
            return  # still claimed (the phase is stale)
        try:
            await client_for(endpoint).delete_volume(volume.csi["volumeHandle"])
        except NotFound:
            pass  # gone already: deleting is done
        except Exception as exc:
            message = getattr(exc, "message", str(exc))
            await self.objects.record(pv, "Warning", "VolumeFailedDelete", message)
            if phase != "Failed":
                new = await self.objects.update(pv, {"status": {"phase": "Failed", "reason": "VolumeFailedDelete", "message": message}}, reason="delete failed")
                self.informer.observe(new)
            raise
        await self.objects.delete(ref_of(pv), current=pv)
