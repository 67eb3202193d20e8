"""The external-attacher role: VolumeAttachment → CSI ControllerPublishVolume / Unpublish.

    attacher = ExternalAttacher(informer, index, ObjectStore(store, manager="external-attacher"),
                                own_endpoint=cfg.csi_endpoint)
    await informer.start()
    await attacher.loop.start()

What kubernetes-csi/external-attacher does, for every driver this process can reach:
``csi.volplane.io`` at the process's own CSI endpoint, and any driver whose CSIDriver
object carries ``volplane.io/controller-endpoint`` (which also overrides the first).
VolumeAttachments of other drivers are left to whoever serves them.

``va:<name>`` syncs one attachment:
- being deleted → ControllerUnpublishVolume, then drop the finalizer
  ``external-attacher/<driver>``, which deletes the object;
- otherwise → the finalizer first (so a delete always comes back here), then, unless
  ``status.attached``, ControllerPublishVolume and ``status {attached: true,
  attachmentMetadata}``. A failure lands in ``status.attachError`` / ``detachError``
  and a Warning on the attachment, and the loop retries with backoff.

``pv:<name>`` keeps the same finalizer on a PV while any attachment of it exists, as
the external attacher does, so a PV deleted while attached stays until it is detached
(its volume handle is what ControllerUnpublishVolume needs).

Both CSI calls are idempotent, so a crash anywhere repeats at most one call.
"""

from __future__ import annotations

import logging

from volplane.csiclient import client_for
from volplane.errors import FailedPrecondition, NotFound, VolplaneError
from volplane.events import now_ns
from volplane.resources.controller import Loop
from volplane.resources.drivers import controller_endpoint
from volplane.resources.informer import Informer
from volplane.resources.kinds import Kind, ref_of
from volplane.resources.names import ANN_CSI_NODE_IDS, attacher_finalizer
from volplane.resources.objects import Node, Obj, Object, PersistentVolume, VolumeAttachment
from volplane.resources.store import ObjectStore, rfc3339

from .desired import is_deleting
from .index import CSIDRIVER, NODE, PV, VA, Index
from .writes import Writes

__all__ = ["MANAGER", "ExternalAttacher"]

log = logging.getLogger(__name__)

MANAGER = "external-attacher"


def _name(obj: Obj) -> str:
    return Object(obj).name


def _finalizers(obj: Obj) -> list[str]:
    return Object(obj).finalizers


def _pv_of(va: Obj) -> str:
    return VolumeAttachment(va).pv_name


class ExternalAttacher:
    def __init__(self, informer: Informer, index: Index, objects: ObjectStore, *, own_endpoint: str, workers: int = 4, resync: float = 30.0) -> None:
        self._informer = informer
        self._index = index
        self._writes = Writes(objects, informer)
        self._own_endpoint = own_endpoint
        self.loop = Loop(MANAGER, self.sync, workers=workers, resync=resync, keys=self.keys)
        informer.on_change(self._on_change)

    def endpoint(self, driver: str) -> str | None:
        """Where ``driver``'s controller service listens, or None if this process cannot reach it."""
        return controller_endpoint(self._informer, driver, self._own_endpoint)

    # -- keys ---------------------------------------------------------------

    def keys(self) -> list[str]:
        return [f"va:{_name(va)}" for va in self._informer.list(VA)] + [
            f"pv:{pv.name}" for pv in map(PersistentVolume, self._informer.list(PV)) if pv.csi is not None
        ]

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        add = self.loop.add
        obj = new if new is not None else old
        assert obj is not None
        if kind is VA:
            add(f"va:{_name(obj)}")
            add(f"pv:{_pv_of(obj)}")
        elif kind is PV:
            if PersistentVolume(obj).csi is not None:
                add(f"pv:{_name(obj)}")
            for va in self._index.vas_of(_name(obj)):
                add(f"va:{va}")  # an attachment may have been waiting for its PV
        elif kind is NODE:
            # The node's CSI node id may have arrived. Only then: the Node is written for every
            # volume attached or mounted there, and looking at all its attachments at each of
            # those writes cost O(volumes on the node) syncs per write.
            if old is None or new is None or Node(old).annotations.get(ANN_CSI_NODE_IDS) != Node(new).annotations.get(ANN_CSI_NODE_IDS):
                for va in self._index.vas_on(_name(obj)):
                    add(f"va:{va}")
        elif kind is CSIDRIVER:
            for attachment in map(VolumeAttachment, self._informer.list(VA)):
                if attachment.attacher == _name(obj):
                    add(f"va:{attachment.name}")

    # -- sync ---------------------------------------------------------------

    async def sync(self, key: str) -> None:
        kind, _, name = key.partition(":")
        if kind == "va":
            await self._sync_attachment(name)
        elif kind == "pv":
            await self._sync_volume(name)

    async def _sync_attachment(self, name: str) -> None:
        va = self._informer.get(VA, name)
        if va is None:
            return
        driver = VolumeAttachment(va).attacher
        endpoint = self.endpoint(driver)
        if endpoint is None:
            return
        finalizer = attacher_finalizer(driver)
        if is_deleting(va):
            if finalizer in _finalizers(va):
                await self._detach(va, driver, endpoint, finalizer)
            return
        if finalizer not in _finalizers(va):
            va = await self._writes.update(va, {"metadata": {"finalizers": [*_finalizers(va), finalizer]}}, reason="attach")
            if va is None:
                return
        if VolumeAttachment(va).attached:
            return
        await self._attach(va, driver, endpoint)

    async def _attach(self, va: Obj, driver: str, endpoint: str) -> None:
        pv = await self._volume(va, driver, "attachError")
        await self._hold(pv, driver)
        volume = PersistentVolume(pv)
        csi = volume.spec["csi"]
        node_id = self._node_id(va, driver)
        try:
            context = await client_for(endpoint).controller_publish(
                csi["volumeHandle"],
                node_id,
                access_mode=(volume.access_modes or ["ReadWriteOnce"])[0],
                block=volume.block,
                fs_type=csi.get("fsType") or "",
                readonly=bool(csi.get("readOnly")),
                volume_context=dict(csi.get("volumeAttributes") or {}),
            )
        except VolplaneError as exc:
            await self._failed(va, "attachError", "FailedAttachVolume", f'AttachVolume.Attach failed for volume "{_name(pv)}" : {exc.message}', exc.message)
            raise
        log.info("%s attached: %s on %s", _name(va), csi["volumeHandle"], node_id)
        status = {"attached": True, "attachmentMetadata": context or None, "attachError": None}
        await self._writes.patch(ref_of(va), {"status": status}, reason="attached")

    async def _detach(self, va: Obj, driver: str, endpoint: str, finalizer: str) -> None:
        pv = await self._volume(va, driver, "detachError")
        handle = PersistentVolume(pv).spec["csi"]["volumeHandle"]
        node_id = self._node_id(va, driver)
        try:
            await client_for(endpoint).controller_unpublish(handle, node_id)
        except VolplaneError as exc:
            await self._failed(va, "detachError", "FailedDetachVolume", f'DetachVolume.Detach failed for volume "{_name(pv)}" : {exc.message}', exc.message)
            raise
        log.info("%s detached: %s from %s", _name(va), handle, node_id)
        rest = [f for f in _finalizers(va) if f != finalizer]
        # The last finalizer gone, the object goes (Kubernetes' deletion with finalizers).
        await self._writes.update(va, {"metadata": {"finalizers": rest or None}}, reason="detached")

    async def _volume(self, va: Obj, driver: str, field: str) -> Obj:
        """The PV an attachment names, which must be this driver's CSI volume."""
        pv = self._informer.get(PV, _pv_of(va))
        if pv is None or PersistentVolume(pv).csi_driver != driver:
            message = f'PersistentVolume "{_pv_of(va)}" not found' if pv is None else f'PersistentVolume "{_pv_of(va)}" is not a {driver} volume'
            await self._failed(va, field, "FailedAttachVolume" if field == "attachError" else "FailedDetachVolume", message, message)
            raise NotFound(message)
        return pv

    def _node_id(self, va: Obj, driver: str) -> str:
        node_name = VolumeAttachment(va).node_name
        node = Node.get(self._informer.get, node_name)
        return (node.csi_node_id(driver) if node is not None else None) or node_name

    async def _failed(self, va: Obj, field: str, reason: str, line: str, message: str) -> None:
        """Keep the error on the attachment (once per distinct message) and say it on its timeline."""
        current = self._informer.get(VA, _name(va)) or va
        if (VolumeAttachment(current).status.get(field) or {}).get("message") != message:
            try:
                await self._writes.patch(ref_of(va), {"status": {field: {"time": rfc3339(now_ns()), "message": message}}}, reason=field)
            except NotFound:
                return
        await self._writes.say(current, "Warning", reason, line, about=_pv_of(va))

    # -- the PV's finalizer ---------------------------------------------------

    async def _hold(self, pv: Obj, driver: str) -> None:
        """The PV keeps this driver's finalizer while it may be attached somewhere."""
        finalizer = attacher_finalizer(driver)
        if finalizer in _finalizers(pv):
            return
        if is_deleting(pv):
            # A finalizer cannot be added to an object being deleted (Kubernetes' rule):
            # attaching now could leave an attachment nobody can undo.
            raise FailedPrecondition(f'PersistentVolume "{_name(pv)}" is being deleted')
        await self._writes.update(pv, {"metadata": {"finalizers": [*_finalizers(pv), finalizer]}}, reason="attach")

    async def _sync_volume(self, name: str) -> None:
        pv = self._informer.get(PV, name)
        driver = PersistentVolume(pv).csi_driver if pv is not None else ""
        if pv is None or not driver or self.endpoint(driver) is None:
            return
        finalizer = attacher_finalizer(driver)
        attached = any(
            VolumeAttachment(va).attacher == driver for n in self._index.vas_of(name) if (va := self._informer.get(VA, n)) is not None
        )
        has = finalizer in _finalizers(pv)
        if attached and not has and not is_deleting(pv):
            await self._writes.update(pv, {"metadata": {"finalizers": [*_finalizers(pv), finalizer]}}, reason="attach")
        elif not attached and has:
            rest = [f for f in _finalizers(pv) if f != finalizer]
            await self._writes.update(pv, {"metadata": {"finalizers": rest or None}}, reason="detached")
