"""The kubelet's part of a claim's expansion (Kubernetes' NodeExpander): NodeExpandVolume
for a volume mounted here whose PV grew past the claim's ``status.capacity``, then the
claim's new capacity.

    expansion = NodeExpansion(objects, informer, csi, node="node-1")
    if expansion.due(volume) is not None:
        await expansion.expand(pod, volume, target)

``due`` is Kubernetes' precheck: the PV's capacity is more than the claim's, and the
external-resizer has handed over (``allocatedResourceStatuses`` NodeResizePending, or
NodeResizeInProgress after a crash here). ``expand`` then writes NodeResizeInProgress, calls
NodeExpandVolume (idempotent in CSI: a crash before the claim is written calls it again
and finishes), records FileSystemResizeSuccessful on the pod and the claim, and sets
``status.capacity`` to the PV's while the resize conditions go. A driver whose node plugin
cannot expand has nothing to do on the node: the claim is finished at once. A failure is
a FileSystemResizeFailed line on the pod, a final one also the NodeResizeError condition
on the claim; the volume manager's loop retries with backoff — except FAILED_PRECONDITION
(the driver cannot grow it while it is in use here, as ext4 without CAP_SYS_RESOURCE), which
as in the kubelet is not tried again while the volume stays staged: it grows when it is
next staged (``forget``, on UnmountDevice) and published again.

The claim is written through the node's writer (apigw's NodeRestriction lets a node change
these status fields of a claim that a pod bound to it uses, volplane/resources/authz.py).
"""

from __future__ import annotations

from pathlib import Path

from volplane.errors import Aborted, FailedPrecondition, ResourceExhausted, Unavailable, VolplaneError
from volplane.resources import claim_status as cs
from volplane.resources.informer import Informer
from volplane.resources.objects import Obj, PersistentVolume, PersistentVolumeClaim
from volplane.resources.store import ObjectStore

from .csi_volumes import CsiVolumes
from .desired_state import DesiredVolume

__all__ = ["NodeExpansion"]

_NOT_FINAL = (Unavailable, ResourceExhausted, Aborted)


class NodeExpansion:
    def __init__(self, objects: ObjectStore, informer: Informer, csi: CsiVolumes, *, node: str) -> None:
        self._objects = objects
        self._informer = informer
        self._csi = csi
        self._node = node
        # unique volume name → the PV capacity whose expansion the driver refused while the
        # volume is in use here (Kubernetes' MarkForInUseExpansionError): not tried again
        # until the volume is unstaged or the PV asks for another size.
        self._in_use_errors: dict[str, int] = {}

    def forget(self, unique_name: str) -> None:
        """The volume was unstaged: an expansion refused while it was in use may be tried again."""
        self._in_use_errors.pop(unique_name, None)

    def due(self, volume: DesiredVolume) -> tuple[Obj, Obj] | None:
        """(claim, PV) when the node has to expand ``volume`` now, else None."""
        if not volume.is_csi or volume.pv is None:
            return None
        pv = PersistentVolume.get(self._informer.get, PersistentVolume(volume.pv).name)
        ref = pv.claim_ref if pv is not None else None
        claim = PersistentVolumeClaim.get(self._informer.get, ref.key) if ref is not None else None
        if pv is None or ref is None or claim is None or claim.uid != ref.uid:
            return None
        if pv.capacity <= cs.capacity(claim.raw) or self._in_use_errors.get(volume.unique_name) == pv.capacity:
            return None
        if cs.resize_status(claim.raw) not in (cs.NODE_RESIZE_PENDING, cs.NODE_RESIZE_IN_PROGRESS):
            return None  # the external-resizer has not handed over (or the resize is not ours)
        return claim.raw, pv.raw

    async def expand(self, pod: Obj, volume: DesiredVolume, target: Path) -> None:
        found = self.due(volume)
        if found is None:
            return
        claim, pv = found
        size_text = str(PersistentVolume(pv).spec["capacity"]["storage"])
        if cs.resize_status(claim) != cs.NODE_RESIZE_IN_PROGRESS:
            claim = await self._write(claim, cs.node_resize_in_progress(claim), "node expansion")
        if await self._csi.expands(volume.driver):
            try:
                await self._csi.node_expand(volume, target, PersistentVolume(pv).capacity)
            except VolplaneError as exc:
                await self._objects.record(pod, "Warning", "FileSystemResizeFailed", f'MountVolume.NodeExpandVolume failed for volume "{volume.spec_name}": {exc.message}')
                if not isinstance(exc, _NOT_FINAL):
                    await self._write(claim, cs.node_resize_error(claim, exc.message), "node expansion failed")
                if isinstance(exc, FailedPrecondition):
                    self._in_use_errors[volume.unique_name] = PersistentVolume(pv).capacity
                    return  # not while it stays in use here; it grows when next staged
                raise
            message = f'MountVolume.NodeExpandVolume succeeded for volume "{volume.spec_name}" {self._node}'
            await self._objects.record(pod, "Normal", "FileSystemResizeSuccessful", message)
            await self._objects.record(claim, "Normal", "FileSystemResizeSuccessful", message)
        await self._write(claim, cs.resize_finished(claim, size_text), "node expansion done")

    async def _write(self, claim: Obj, patch: Obj, reason: str) -> Obj:
        new = await self._objects.update(claim, patch, reason=reason)
        self._informer.observe(new)
        return new
