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

from typing import Any

from volplane.resources.controller import Loop, Retry
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, Kind, key_of
from volplane.resources.names import ANN_SELECTED_NODE, claim_class, pod_claims
from volplane.resources.selectors import node_affinity_allows
from volplane.resources.store import ObjectStore

from services.provisioner.controllers.binding import find_best_match, should_delay_binding
from services.provisioner.controllers.intree import NO_PROVISIONER

__all__ = ["Scheduler"]

POD, PVC, PV, SC, NODE = (BY_NAME[k] for k in ("Pod", "PersistentVolumeClaim", "PersistentVolume", "StorageClass", "Node"))
Obj = dict[str, Any]


def _ready(node: Obj) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


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
        return [key_of(p) for p in self.informer.list(POD) if not (p.get("spec") or {}).get("nodeName")]

    def _on_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        if kind is POD:
            obj = new or old
            assert obj is not None
            key = key_of(obj)
            ns = obj["metadata"]["namespace"]
            for _, claim in pod_claims(obj):
                waiting = self._waiting.setdefault(f"{ns}/{claim}", set())
                if new is not None and not new["spec"].get("nodeName"):
                    waiting.add(key)
                else:
                    waiting.discard(key)
            if new is not None and not new["spec"].get("nodeName"):
                self.loop.add(key)
        elif kind is PVC and new is not None:
            for key in self._waiting.get(key_of(new), ()):
                self.loop.add(key)
        elif kind is PV and new is not None:
            ref = new["spec"].get("claimRef") or {}
            for key in self._waiting.get(f"{ref.get('namespace') or 'default'}/{ref.get('name')}", ()):
                self.loop.add(key)
        elif kind is NODE and new is not None and _schedulable_view(old) != _schedulable_view(new):
            for key in self._pending():
                self.loop.add(key)

    async def _sync_key(self, key: str) -> None:
        pod = self.informer.get(POD, key)
        if pod is None or pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            return
        await self.schedule(pod)

    async def schedule(self, pod: Obj) -> None:
        ns = pod["metadata"]["namespace"]
        classes = {sc["metadata"]["name"]: sc for sc in self.informer.list(SC)}
        nodes = [n for n in self.informer.list(NODE) if _ready(n)]
        bound, delayed = [], []
        for _, claim_name in pod_claims(pod):
            claim = self.informer.get(PVC, f"{ns}/{claim_name}")
            if claim is None:
                await self._unschedulable(pod, f'persistentvolumeclaim "{claim_name}" not found')
            phase = (claim.get("status") or {}).get("phase")  # type: ignore[union-attr]
            if phase == "Bound" and claim["spec"].get("volumeName"):  # type: ignore[index]
                pv = self.informer.get(PV, claim["spec"]["volumeName"])  # type: ignore[index]
                if pv is not None:
                    bound.append(pv)
            elif should_delay_binding(claim, classes) or claim["metadata"].get("annotations", {}).get(ANN_SELECTED_NODE):  # type: ignore[index]
                delayed.append(claim)
            else:
                await self._unschedulable(pod, "pod has unbound immediate PersistentVolumeClaims")
        fits = [n for n in nodes if self._fits(n, bound, delayed, classes)]
        if not fits:
            await self._unschedulable(pod, f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) didn't find available persistent volumes to bind or had volume node affinity conflict")
        load = {n["metadata"]["name"]: 0 for n in fits}
        for other in self.informer.list(POD):
            name = other["spec"].get("nodeName")
            if name in load:
                load[name] += 1
        node = min(fits, key=lambda n: (load[n["metadata"]["name"]], n["metadata"]["name"]))["metadata"]["name"]
        for claim in delayed:
            if (claim["metadata"].get("annotations") or {}).get(ANN_SELECTED_NODE) != node:
                new = await self.objects.update(claim, {"metadata": {"annotations": {ANN_SELECTED_NODE: node}}}, reason="select node")
                self.informer.observe(new)
        new = await self.objects.update(pod, {"spec": {"nodeName": node}}, reason="schedule")
        self.informer.observe(new)
        await self.objects.record(new, "Normal", "Scheduled", f"Successfully assigned {key_of(pod)} to {node}")

    def _fits(self, node: Obj, bound: list[Obj], delayed: list[Obj], classes: dict[str, Obj]) -> bool:
        if not all(node_affinity_allows(pv, node) for pv in bound):
            return False
        pvs = self.informer.list(PV)
        for claim in delayed:
            selected = (claim["metadata"].get("annotations") or {}).get(ANN_SELECTED_NODE)
            if selected and selected != node["metadata"]["name"]:
                return False
            sc = classes.get(claim_class(claim))
            if sc is not None and sc.get("provisioner") == NO_PROVISIONER:
                if find_best_match(claim, pvs, delay=False, node=node) is None:
                    return False
        return True

    async def _unschedulable(self, pod: Obj, message: str) -> None:
        await self.objects.record(pod, "Warning", "FailedScheduling", message)
        raise Retry(2.0, message)
