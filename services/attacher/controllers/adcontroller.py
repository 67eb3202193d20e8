"""The attach/detach (AD) controller: VolumeAttachments follow the nodes whose pods need
a volume, one volume at a time.

    ad = AttachDetachController(informer, index, ObjectStore(store, manager="attach-detach-controller"))
    await informer.start()
    await ad.loop.start()

Kubernetes' parts (pkg/controller/volume/attachdetach) and where they live here:

- desired state of world, node → volume → pods: ``desired.desired_nodes``, computed per
  volume from the informer's pods, claims, nodes and CSIDrivers at every sync;
- actual state of world, volume → nodes: the VolumeAttachment objects of the volume;
- the DSW populator (FindAndRemoveDeletedPods, FindAndAddActivePods) and the PVC worker:
  ``_on_change``, which maps every Pod, PVC, PV, Node, VolumeAttachment and CSIDriver
  change to the ``pv:<name>`` keys it can affect. Since each sync recomputes the whole
  DSW entry of its volume, adding active pods and dropping deleted or terminated ones
  are the same level-based step, and the loop's resync stands in for the populator's
  periodic relisting;
- the reconciler: ``_sync_volume`` — detach what is no longer desired first, then
  attach what is (out-of-tree: create the VolumeAttachment; the external attacher
  calls ControllerPublishVolume);
- the node status updater: ``_sync_node`` keeps Node ``status.volumesAttached``, one
  write per node at most every ``_NODE_STATUS_PERIOD`` for all the attachments that
  changed meanwhile (Kubernetes' updater, too, runs on its reconciler's period).

Keys are per volume (``pv:<name>``), so two nodes never race for one volume: the
multi-attach check and the create that follows it run under one key. Node status keys
are ``node:<name>``.
"""

from __future__ import annotations

import logging

from volplane.errors import AlreadyExists
from volplane.resources.controller import Loop, Retry
from volplane.resources.informer import Informer
from volplane.resources.kinds import Kind, ref_of
from volplane.resources.names import va_name
from volplane.resources.objects import Node, Obj, Object, PersistentVolume, PersistentVolumeClaim, Pod, VolumeAttachment
from volplane.resources.store import ObjectStore

from .desired import attachments_of, desired_nodes, is_attached, is_deleting, multi_attach_allowed
from .index import CSIDRIVER, NODE, POD, PV, PVC, VA, Index
from .writes import Writes

__all__ = ["MANAGER", "AttachDetachController"]

log = logging.getLogger(__name__)

MANAGER = "attach-detach-controller"
# How soon a detach held back by a node that still mounts the volume looks again; the
# Node's own change (volumesInUse cleared) usually gets there first.
_IN_USE_RECHECK = 5.0
# How long a node's status update waits for more attachments to join it (see _node_status_soon).
_NODE_STATUS_PERIOD = 0.5

def _keep_terminated_marks(node: Obj) -> tuple[dict[str, str], dict[str, str]]:
    """What of a Node, besides its existence, changes which of its pods' volumes are desired."""
    n = Node(node)
    return dict(n.labels), dict(n.annotations)


def multi_attach_message(pv: str) -> str:
    return f'Multi-Attach error for volume "{pv}" Volume is already exclusively attached to one node and can\'t be attached to another'


def attached_message(pv: str) -> str:
    return f'AttachVolume.Attach succeeded for volume "{pv}"'


def attach_failed_message(pv: str, error: str) -> str:
    return f'AttachVolume.Attach failed for volume "{pv}" : {error}'


class AttachDetachController:
    def __init__(self, informer: Informer, index: Index, objects: ObjectStore, *, workers: int = 4, resync: float = 30.0) -> None:
        self._informer = informer
        self._index = index
        self._writes = Writes(objects, informer)
        self.loop = Loop(MANAGER, self.sync, workers=workers, resync=resync, keys=self.keys)
        informer.on_change(self._on_change)

    # -- keys ---------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every volume that has a PV or an attachment, and every Node."""
        volumes = {PersistentVolume(pv).name for pv in self._informer.list(PV)}
        volumes |= {VolumeAttachment(va).pv_name for va in self._informer.list(VA)}
        return [f"pv:{v}" for v in sorted(volumes) if v] + [f"node:{Node(n).name}" for n in self._informer.list(NODE)]

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        """The populator: the keys an object change can affect (both its old and new state)."""
        add = self.loop.add
        objs = [o for o in (old, new) if o is not None]
        if kind is POD:
            for pod in objs:
                for pv in self._claimed_volumes(pod):
                    add(f"pv:{pv}")
            if new is None and old is not None:
                self._writes.forget(Pod(old).uid)
        elif kind is PVC:
            for claim in map(PersistentVolumeClaim, objs):
                if claim.volume_name:
                    add(f"pv:{claim.volume_name}")
        elif kind is PV:
            add(f"pv:{Object(objs[0]).name}")
        elif kind is VA:
            for va in map(VolumeAttachment, objs):
                add(f"pv:{va.pv_name}")
                if va.node_name:
                    self._node_status_soon(va.node_name)
        elif kind is NODE:
            node = Object(objs[0]).name
            self._node_status_soon(node)
            if old is None or new is None or _keep_terminated_marks(old) != _keep_terminated_marks(new):
                # Its existence and its labels decide for its pods' volumes (terminated pods):
                # every volume of the node is looked at again.
                for key in self._index.pods_on(node):
                    user = self._informer.get(POD, key)
                    for name in self._claimed_volumes(user) if user else ():
                        add(f"pv:{name}")
                released = None
            else:
                # Its volumesInUse holds back detaches: only the volumes it no longer lists may
                # go on. The node's writes of volumesAttached (ours) and of volumesInUse
                # additions concern no volume's sync: syncing every volume of the node at each
                # of them cost O(volumes on the node) syncs per write, O(N²) in all.
                released = set(Node(old).volumes_in_use) - set(Node(new).volumes_in_use)
            if released is None or released:
                for va_key in self._index.vas_on(node):
                    attachment = VolumeAttachment.get(self._informer.get, va_key)
                    if attachment is None:
                        continue
                    if released is not None:
                        volume = PersistentVolume.get(self._informer.get, attachment.pv_name)
                        if volume is not None and volume.unique_name not in released:
                            continue
                    add(f"pv:{attachment.pv_name}")
        elif kind is CSIDRIVER:
            driver = Object(objs[0]).name
            for volume in map(PersistentVolume, self._informer.list(PV)):
                if volume.csi_driver == driver:
                    add(f"pv:{volume.name}")

    def _node_status_soon(self, node: str) -> None:
        """The node status updater runs a node's key at most once per ``_NODE_STATUS_PERIOD``:
        the attachments of a burst share one write of the Node (whose volumesAttached grows
        with the node's volumes) instead of one each. Kubernetes' updater, too, writes the
        nodes marked as changed on a period (its reconciler's 100 ms loop), not per attach."""
        self.loop.add_after(f"node:{node}", _NODE_STATUS_PERIOD)

    def _claimed_volumes(self, obj: Obj) -> set[str]:
        pod = Pod(obj)
        out = set()
        for _, claim_name in pod.claims:
            claim = PersistentVolumeClaim.get(self._informer.get, pod.claim_key(claim_name))
            if claim is not None and claim.volume_name:
                out.add(claim.volume_name)
        return out

    # -- sync ---------------------------------------------------------------

    async def sync(self, key: str) -> None:
        kind, _, name = key.partition(":")
        if kind == "pv":
            await self._sync_volume(name)
        elif kind == "node":
            await self._sync_node(name)

    def _desired(self, pv: Obj | None) -> dict[str, tuple[str, ...]]:
        """The DSW entry of one volume, from the only claim that can hold it (its claimRef)."""
        if pv is None:
            return {}
        volume = PersistentVolume(pv)
        ref = volume.claim_ref
        if ref is None or not ref.name:
            return {}
        claim_key = ref.key
        claim = self._informer.get(PVC, claim_key)
        pods = [p for k in self._index.pods_using(claim_key) if (p := self._informer.get(POD, k)) is not None]
        nodes = {n: obj for n in {Pod(p).node_name for p in pods} if (obj := self._informer.get(NODE, n)) is not None}
        driver = volume.csi_driver
        drivers = {driver: d} if (d := self._informer.get(CSIDRIVER, driver)) is not None else {}
        return desired_nodes(pv, pods, {claim_key: claim} if claim else {}, nodes, drivers)

    async def _sync_volume(self, name: str) -> None:
        pv = self._informer.get(PV, name)
        have = attachments_of(name, [va for n in self._index.vas_of(name) if (va := self._informer.get(VA, n)) is not None])
        want = self._desired(pv)
        waiting = await self._detach(pv, have, want)
        await self._attach(pv, have, want)
        if waiting:
            raise Retry(_IN_USE_RECHECK, f"volume {name} is still in use on {', '.join(waiting)}")

    async def _detach(self, pv: Obj | None, have: dict[str, Obj], want: dict[str, tuple[str, ...]]) -> list[str]:
        """Delete the attachments no pod wants any more, except where the node's volume
        manager still has the volume mounted (status.volumesInUse); those nodes are returned."""
        unique = PersistentVolume(pv).unique_name if pv is not None else None
        waiting = []
        for node, va in sorted(have.items()):
            if node in want or is_deleting(va):
                continue
            holder = Node.get(self._informer.get, node)
            if unique is not None and holder is not None and unique in holder.volumes_in_use:
                waiting.append(node)
                continue
            log.info("detaching %s from %s", VolumeAttachment(va).name, node)
            # The external attacher's finalizer turns this into a deletionTimestamp: it
            # calls ControllerUnpublishVolume, then lets the object go.
            await self._writes.delete(va)
            gone = self._informer.get(VA, VolumeAttachment(va).name)
            if gone is None:
                del have[node]
            else:
                have[node] = gone
        return waiting

    async def _attach(self, pv: Obj | None, have: dict[str, Obj], want: dict[str, tuple[str, ...]]) -> None:
        if pv is None or not want:
            return
        volume = PersistentVolume(pv)
        driver = volume.csi_driver  # want is empty unless a CSI driver attaches it
        pv_name = volume.name
        for node, pod_keys in want.items():
            pods = [p for k in pod_keys if (p := self._informer.get(POD, k)) is not None]
            va = have.get(node)
            if va is not None:
                await self._report(pv_name, va, pods)
                continue
            if not multi_attach_allowed(pv) and any(n != node for n in have):
                # Attached, attaching or still detaching elsewhere: a single-node volume
                # waits, and each pod that needs it here says why.
                for pod in pods:
                    await self._writes.say(pod, "Warning", "FailedAttachVolume", multi_attach_message(pv_name), about=pv_name)
                continue
            have[node] = await self._create(pv_name, driver, node)

    async def _create(self, pv_name: str, driver: str, node: str) -> Obj:
        va: Obj = {
            "apiVersion": VA.api_version,
            "kind": VA.name,
            "metadata": {"name": va_name(pv_name, driver, node)},
            "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": pv_name}},
        }
        log.info("attaching %s to %s (%s)", pv_name, node, va["metadata"]["name"])
        try:
            return await self._writes.create(va)
        except AlreadyExists:
            # The informer is behind the log: the object's own event syncs this key again.
            return va

    async def _report(self, pv_name: str, va: Obj, pods: list[Obj]) -> None:
        """Tell the pods how their node's attachment went, once per outcome."""
        if is_attached(va):
            for pod in pods:
                await self._writes.say(pod, "Normal", "SuccessfulAttachVolume", attached_message(pv_name), about=pv_name)
            return
        error = VolumeAttachment(va).error("attachError")
        if error and not is_deleting(va):
            for pod in pods:
                await self._writes.say(pod, "Warning", "FailedAttachVolume", attach_failed_message(pv_name, error), about=pv_name)

    async def _sync_node(self, name: str) -> None:
        """Node status.volumesAttached: the unique names of the volumes attached there
        and not being detached (what the node's volume manager may mount)."""
        node = Node.get(self._informer.get, name)
        if node is None:
            return
        volumes = set()
        for va_key in self._index.vas_on(name):
            va = VolumeAttachment.get(self._informer.get, va_key)
            pv = PersistentVolume.get(self._informer.get, va.pv_name) if va is not None else None
            if va is not None and is_attached(va.raw) and pv is not None:
                volumes.add(pv.unique_name)
        want = [{"name": v, "devicePath": ""} for v in sorted(volumes)]
        if node.volumes_attached == want:
            return
        await self._writes.patch(ref_of(node.raw), {"status": {"volumesAttached": want or None}}, reason="volumes attached")
