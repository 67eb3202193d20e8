"""A minimal scheduler: only what storage needs to place a pod.

    sched = Scheduler(informer, objects); await sched.start()      # keys: ``<ns>/<name>``

A pod that names its node is left alone. Otherwise it goes to a Ready, schedulable node
that every bound volume of it admits (the PV's node affinity), that has a matching
Available PV for each of its unbound WaitForFirstConsumer claims of a
``kubernetes.io/no-provisioner`` class, and that carries the fewest pods. Unbound
WaitForFirstConsumer claims then get ``volume.kubernetes.io/selected-node`` — which ends
their delay — and the pod gets ``spec.nodeName``. A pod whose claims are missing, or
unbound with Immediate binding, waits (FailedScheduling), as in Kubernetes.
"""

from __future__ import annotations

from typing import Any, NoReturn

from services.provisioner.controllers.binding import find_best_match, should_delay_binding
from services.provisioner.controllers.intree import NO_PROVISIONER
from volplane.resources.controller import Loop, Retry
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of
from volplane.resources.names import ANN_SELECTED_NODE
from volplane.resources.objects import Node, Obj, PersistentVolume, PersistentVolumeClaim, Pod, StorageClass
from volplane.resources.selectors import node_affinity_allows
from volplane.resources.store import ObjectStore

__all__ = ["Scheduler"]

POD, PVC, PV, SC, NODE = (BY_NAME[k] for k in ("Pod", "PersistentVolumeClaim", "PersistentVolume", "StorageClass", "Node"))


def _ready(node: Obj) -> bool:
    n = Node(node)
    return not n.unschedulable and n.ready


def _schedulable_view(node: Obj | None) -> Any:
    """What of a Node scheduling looks at (a change to its volumesInUse wakes nobody)."""
    if node is None:
        return None
    return (node["metadata"].get("labels"), node.get("spec"), _ready(node))


class Scheduler:
    def __init__(self, informer: Informer, objects: ObjectStore) -> None:
        self.informer = informer
        self.objects = objects
        self.loop = Loop("scheduler", self._sync_key, workers=1, keys=self._pending)
        # claim key → keys of unscheduled pods using it, so a claim's change wakes only them.
        self._waiting: dict[str, set[str]] = {}
        informer.on_change(self._on_change)

    async def start(self) -> None:
        await self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()

    def _pending(self) -> list[str]:
        return [key_of(p) for p in self.informer.list(POD) if not Pod(p).node_name]

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        if kind is POD:
            obj = new or old
            assert obj is not None
            pod = Pod(obj)
            unscheduled = new is not None and not Pod(new).node_name
            for claim_key in pod.claim_keys:
                waiting = self._waiting.setdefault(claim_key, set())
                if unscheduled:
                    waiting.add(pod.key)
                else:
                    waiting.discard(pod.key)
            if unscheduled:
                self.loop.add(pod.key)
        elif kind is PVC and new is not None:
            for key in self._waiting.get(key_of(new), ()):
                self.loop.add(key)
        elif kind is PV and new is not None:
            ref = PersistentVolume(new).claim_ref
            for key in self._waiting.get(ref.key, ()) if ref is not None else ():
                self.loop.add(key)
        elif kind is NODE and new is not None and _schedulable_view(old) != _schedulable_view(new):
            for key in self._pending():
                self.loop.add(key)

    async def _sync_key(self, key: str) -> None:
        pod = Pod.get(self.informer.get, key)
        if pod is None or pod.node_name or pod.deleting:
            return
        await self.schedule(pod.raw)

    async def schedule(self, pod: Obj) -> None:
        p = Pod(pod)
        classes = {StorageClass(sc).name: sc for sc in self.informer.list(SC)}
        nodes = [n for n in self.informer.list(NODE) if _ready(n)]
        bound: list[Obj] = []
        delayed: list[Obj] = []
        for _, claim_name in p.claims:
            claim = PersistentVolumeClaim.get(self.informer.get, p.claim_key(claim_name))
            if claim is None:
                await self._unschedulable(pod, f'persistentvolumeclaim "{claim_name}" not found')
            if claim.phase == "Bound" and claim.volume_name:
                pv = self.informer.get(PV, claim.volume_name)
                if pv is not None:
                    bound.append(pv)
            elif should_delay_binding(claim.raw, classes) or claim.selected_node:
                delayed.append(claim.raw)
            else:
                await self._unschedulable(pod, "pod has unbound immediate PersistentVolumeClaims")
        fits = [n for n in nodes if self._fits(n, bound, delayed, classes)]
        if not fits:
            await self._unschedulable(pod, f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) didn't find available persistent volumes to bind or had volume node affinity conflict")
        load = {n["metadata"]["name"]: 0 for n in fits}
        for other in self.informer.list(POD):
            name = Pod(other).node_name
            if name in load:
                load[name] += 1
        node = min(fits, key=lambda n: (load[n["metadata"]["name"]], n["metadata"]["name"]))["metadata"]["name"]
        for waiting in delayed:
            if PersistentVolumeClaim(waiting).annotations.get(ANN_SELECTED_NODE) != node:
                new = await self.objects.update(waiting, {"metadata": {"annotations": {ANN_SELECTED_NODE: node}}}, reason="select node")
                self.informer.observe(new)
        new = await self.objects.update(pod, {"spec": {"nodeName": node}}, reason="schedule")
        self.informer.observe(new)
        await self.objects.record(new, "Normal", "Scheduled", f"Successfully assigned {key_of(pod)} to {node}")

    def _fits(self, node: Obj, bound: list[Obj], delayed: list[Obj], classes: dict[str, Obj]) -> bool:
        if not all(node_affinity_allows(pv, node) for pv in bound):
            return False
        pvs = self.informer.list(PV)
        for claim in delayed:
            pvc = PersistentVolumeClaim(claim)
            if pvc.selected_node and pvc.selected_node != Node(node).name:
                return False
            sc = StorageClass.of(classes.get(pvc.storage_class))
            if sc is not None and sc.provisioner == NO_PROVISIONER and find_best_match(claim, pvs, delay=False, node=node) is None:
                return False
        return True

    async def _unschedulable(self, pod: Obj, message: str) -> NoReturn:
        """Say why on the pod and end the sync: the loop looks again in 2 s."""
        await self.objects.record(pod, "Warning", "FailedScheduling", message)
        raise Retry(2.0, message)
