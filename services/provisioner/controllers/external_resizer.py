"""The external-resizer role, expansion part: a Bound claim whose request grew past what it
has → CSI ControllerExpandVolume → the PV's new capacity → the node's turn, or done.

    resizer = ExternalResizer(informer, ObjectStore(store, "external-resizer"), own_endpoint=cfg.csi_endpoint)
    await resizer.start()          # one loop, keys ``<ns>/<claim>``

What kubernetes-csi/external-resizer (with RecoverVolumeExpansionFailure, GA in Kubernetes
1.34) does, for the drivers this process reaches (``volplane.resources.drivers``), and the
expand controller's ``ExternalExpanding`` line before it:

1. ``status.allocatedResources.storage`` = the size to reach, ``allocatedResourceStatuses``
   ControllerResizeInProgress, condition Resizing — written before the call, so a crash
   after it resumes the same size (``_target``);
2. ControllerExpandVolume(size), idempotent in CSI;
3. the PV's ``spec.capacity.storage`` = what the driver reports;
4. node expansion required → condition FileSystemResizePending, NodeResizePending (the
   kubelet, services/nodeagent/controllers/volumemanager.py, finishes and sets
   ``status.capacity``); else ``status.capacity`` now, conditions gone — VolumeResizeSuccessful.

A failure is a VolumeResizeFailed line; a final one (Kubernetes' list: every code but
UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED, ABORTED) is also said in the
ControllerResizeError condition, and after it the user may lower the request (down to just
above ``status.capacity``) to try a smaller size; INVALID_ARGUMENT, OUT_OF_RANGE and
NOT_FOUND make the claim ControllerResizeInfeasible, which waits for such a change rather
than retrying the same size (Kubernetes retries it slowly). Every other failure is retried
with the loop's backoff.
"""

from __future__ import annotations

import logging

from volplane.csiclient import capability, client_for
from volplane.errors import Aborted, InvalidArgument, NotFound, OutOfRange, ResourceExhausted, Unavailable, VolplaneError
from volplane.resources import claim_status as cs
from volplane.resources.controller import Loop
from volplane.resources.drivers import controller_endpoint
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim
from volplane.resources.schema import format_quantity
from volplane.resources.store import ObjectStore

__all__ = ["MANAGER", "ExternalResizer", "target_size"]

log = logging.getLogger(__name__)

MANAGER = "external-resizer"
PV, PVC = BY_NAME["PersistentVolume"], BY_NAME["PersistentVolumeClaim"]
_INFEASIBLE = (InvalidArgument, OutOfRange, NotFound)
_NOT_FINAL = (Unavailable, ResourceExhausted, Aborted)
_NODE = (cs.NODE_RESIZE_PENDING, cs.NODE_RESIZE_IN_PROGRESS)


def target_size(claim: Obj, pv: Obj) -> int | None:
    """The size to expand the claim's volume to now, or None for nothing to do here
    (Kubernetes' expandAndRecover, without its in-memory sets: what it remembers of a final
    error, the ControllerResizeError condition says here).

    A Bound claim of 1Gi asking for 2Gi, its PV of 1Gi: 2Gi. The same claim once its PV has
    2Gi and the node is to grow the filesystem (NodeResizePending): None.
    """
    pvc, volume = PersistentVolumeClaim(claim), PersistentVolume(pv)
    request, have, pv_size = pvc.request, cs.capacity(claim), volume.capacity
    status, allocated = cs.resize_status(claim), cs.allocated(claim)
    if status in _NODE and allocated is not None and pv_size >= allocated:
        return None  # the node's turn (a new request waits until it is done)
    if status == cs.CONTROLLER_RESIZE_INFEASIBLE and allocated == request:
        return None  # refused for good: waits for the user to ask for another size
    if status == "" and request <= have:
        return None  # nothing asked for (a shrink below status.capacity is refused on apply)
    if pv_size < request:
        if status in _NODE and allocated is not None:
            return allocated  # let the expansion in flight finish first
        if status == cs.CONTROLLER_RESIZE_IN_PROGRESS and allocated is not None:
            # An uncertain failure (or a crash) may still have grown the volume to what was
            # asked: go on with that, unless the last error was final (then the new request).
            return request if cs.condition_of(claim, cs.CONTROLLER_RESIZE_ERROR) else allocated
        return request
    # The PV has the size already: a crash between the steps, or a spurious event.
    if status in _NODE:
        return None
    return allocated if allocated is not None else request


class ExternalResizer:
    def __init__(self, informer: Informer, objects: ObjectStore, *, own_endpoint: str, workers: int = 4) -> None:
        self.informer = informer
        self.objects = objects
        self.own_endpoint = own_endpoint
        self.loop = Loop("external-resizer", self._sync_key, workers=workers, keys=lambda: [key_of(c) for c in informer.list(PVC)])
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

    async def _sync_key(self, key: str) -> None:
        claim = self.informer.get(PVC, key)
        if claim is not None:
            await self.sync(claim)

    def _volume_of(self, claim: Obj) -> tuple[Obj, str] | None:
        """(the claim's PV, the controller endpoint of its driver) when this process resizes it."""
        pvc = PersistentVolumeClaim(claim)
        if pvc.phase != "Bound" or not pvc.volume_name or pvc.deleting:
            return None
        pv = self.informer.get(PV, pvc.volume_name)
        if pv is None:
            return None
        volume = PersistentVolume(pv)
        ref = volume.claim_ref
        if ref is None or ref.namespace != pvc.namespace or ref.uid != pvc.uid or volume.csi is None:
            return None  # not bound to this claim, or not a CSI volume (no in-tree resizer here)
        endpoint = controller_endpoint(self.informer, volume.csi_driver, self.own_endpoint)
        return None if endpoint is None else (pv, endpoint)

    async def sync(self, claim: Obj) -> None:
        found = self._volume_of(claim)
        if found is None:
            return
        pv, endpoint = found
        size = target_size(claim, pv)
        if size is None:
            return
        volume = PersistentVolume(pv)
        if cs.resize_status(claim) == "":
            await self.objects.record(claim, "Normal", "ExternalExpanding", "waiting for an external controller to expand this PVC")
        wanted = format_quantity(size)
        if cs.allocated(claim) != size or cs.resize_status(claim) != cs.CONTROLLER_RESIZE_IN_PROGRESS or cs.condition_of(claim, cs.RESIZING) is None:
            claim = await self._write(claim, cs.controller_resize_in_progress(claim, wanted), "resize")
        await self.objects.record(claim, "Normal", "Resizing", f"External resizer is resizing volume {volume.name}")
        csi = volume.csi or {}
        cap = capability((volume.access_modes or ["ReadWriteOnce"])[0], block=volume.block, fs_type=str(csi.get("fsType") or ""), mount_flags=volume.mount_options)
        try:
            got, node_required = await client_for(endpoint).controller_expand(str(csi["volumeHandle"]), size, cap)
        except VolplaneError as exc:
            await self._failed(claim, volume, exc)
            return
        new_size = format_quantity(max(got, size))
        if volume.spec["capacity"].get("storage") != new_size:
            self.informer.observe(await self.objects.update(pv, {"spec": {"capacity": {"storage": new_size}}}, reason="resize"))
        if node_required:
            await self._write(claim, cs.node_resize_pending(claim), "resize: node expansion pending")
            await self.objects.record(claim, "Normal", "FileSystemResizeRequired", "Require file system resize of volume on node")
        else:
            await self._write(claim, cs.resize_finished(claim, new_size), "resize done")
            await self.objects.record(claim, "Normal", "VolumeResizeSuccessful", "Resize volume succeeded")

    async def _failed(self, claim: Obj, volume: PersistentVolume, exc: VolplaneError) -> None:
        message = f'resize volume "{volume.name}" by resizer "{volume.csi_driver}" failed: {exc.message}'
        await self.objects.record(claim, "Warning", "VolumeResizeFailed", message)
        if isinstance(exc, _INFEASIBLE):
            await self._write(claim, cs.controller_resize_infeasible(claim, exc.message), "resize infeasible")
            return  # waits for the user to change the request (resync looks again)
        if not isinstance(exc, _NOT_FINAL):
            await self._write(claim, cs.controller_resize_error(claim, exc.message), "resize failed")
        raise exc

    async def _write(self, claim: Obj, patch: Obj, reason: str) -> Obj:
        new = await self.objects.update(claim, patch, reason=reason)
        self.informer.observe(new)
        return new
