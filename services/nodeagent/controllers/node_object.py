"""This node's Node object: registered on start, its status.volumesInUse kept by the volume manager.

    node = NodeObject(objects, informer, "node-1")
    await node.register(volumes_in_use=["kubernetes.io/csi/csi.volplane.io^vol-1"])
    await node.add_in_use(unique_name)       # before MountDevice: the AD controller must not detach it
    await node.remove_in_use(unique_name)    # after UnmountDevice
    # Concurrent calls share one write of the Node (group commit).
    node.keep_terminated                     # label volumes.kubernetes.io/keep-terminated-pod-volumes

Registration lays our labels, the CSI node id annotation and our status fields over the
object and leaves everything else alone (a user's labels, the AD controller's
status.volumesAttached), as the kubelet's node status updates do.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable

from volplane.errors import AlreadyExists, ConcurrencyConflict
from volplane.events import now_ns
from volplane.nodes import TOPOLOGY_KEY
from volplane.resources import names
from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME, ref
from volplane.resources.objects import Node, Obj
from volplane.resources.store import ObjectStore, rfc3339

__all__ = ["NODE", "NodeObject"]

NODE = BY_NAME["Node"]
_ATTEMPTS = 20


class NodeObject:
    def __init__(self, objects: ObjectStore, informer: Informer, node: str, node_id: str | None = None) -> None:
        self._objects = objects
        self._informer = informer
        self.name = node
        self._node_id = node_id or node  # the CSI node id of csi.volplane.io on this node
        self.ref = ref(NODE, None, node)
        self._lock = asyncio.Lock()
        # volumesInUse changes waiting for the write in flight, and what their callers await.
        self._adds: set[str] = set()
        self._removes: set[str] = set()
        self._batch: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def current(self) -> Obj | None:
        return self._informer.get(NODE, self.name)

    @property
    def _view(self) -> Node | None:
        return Node.of(self.current)

    @property
    def keep_terminated(self) -> bool:
        node = self._view
        return node is not None and names.LABEL_KEEP_TERMINATED in node.labels

    def in_use(self) -> list[str]:
        node = self._view
        return node.volumes_in_use if node is not None else []

    def registered(self) -> bool:
        """Whether the object (as the informer has it) carries everything registration writes."""
        node = self._view
        if node is None:
            return False
        labels = node.labels
        ready = [c for c in node.status.get("conditions") or [] if c.get("type") == "Ready"]
        return (
            labels.get(names.LABEL_HOSTNAME) == self.name and labels.get(TOPOLOGY_KEY) == self.name
            and node.csi_node_id(names.OWN_DRIVER) == self._node_id and bool(ready) and ready[0].get("status") == "True"
        )

    async def register(self, volumes_in_use: list[str] | None = None) -> None:
        """Create the Node, or lay our labels, annotation and status over the existing one."""
        async with self._lock:
            for _ in range(_ATTEMPTS):
                current, version = await self._objects.read(self.ref)
                try:
                    if current is None:
                        new = await self._objects.create(self._new(volumes_in_use or []))
                    else:
                        new = await self._objects.update(current, self._registration(current, volumes_in_use), reason="register", version=version)
                except (AlreadyExists, ConcurrencyConflict):
                    continue
                self._informer.observe(new)
                return
        raise ConcurrencyConflict(f"{self.ref} keeps changing; registering again later")

    async def add_in_use(self, *unique_names: str) -> None:
        """Returns once the Node lists every name (written, or found written)."""
        have = set(self.in_use())
        if any(n not in have for n in unique_names):
            await self._queue_change(add=set(unique_names))

    async def remove_in_use(self, *unique_names: str) -> None:
        have = set(self.in_use())
        if any(n in have for n in unique_names):
            await self._queue_change(remove=set(unique_names))

    async def _queue_change(self, *, add: set[str] | None = None, remove: set[str] | None = None) -> None:
        """Group commit: a change waits for the write in flight, then goes in one write with
        every other change queued meanwhile. The Node lists every volume on the node, so a
        write per volume cost O(volumes) each, O(N²) for a burst; the kubelet, too, reports
        volumesInUse with its periodic node status, not per volume. Later changes of one name
        win over earlier ones."""
        add, remove = add or set(), remove or set()
        self._adds = (self._adds - remove) | add
        self._removes = (self._removes - add) | remove
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches(), name=f"node-object/{self.name}:volumesInUse")
        # Shielded: a waiter that is cancelled must not cancel the write others wait for.
        await asyncio.shield(batch)

    async def _write_batches(self) -> None:
        while self._batch is not None:
            adds, removes, batch = self._adds, self._removes, self._batch
            self._adds, self._removes, self._batch = set(), set(), None
            try:
                await self._change_in_use(functools.partial(_merged, adds=adds, removes=removes))
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of this batch, which retries.
                batch.set_exception(exc)
                batch.exception()  # retrieved here too: a batch whose waiters were all cancelled logs nothing
            else:
                batch.set_result(None)

    async def _change_in_use(self, change: Callable[[list[str]], list[str]]) -> None:
        async with self._lock:
            for _ in range(_ATTEMPTS):
                current, version = await self._objects.read(self.ref)
                if current is None:
                    try:
                        new = await self._objects.create(self._new(change([])))
                    except AlreadyExists:
                        continue
                    self._informer.observe(new)
                    return
                before = Node(current).volumes_in_use
                after = change(before)
                if after == before:
                    self._informer.observe(current)
                    return
                try:
                    new = await self._objects.update(current, {"status": {"volumesInUse": after}}, reason="volumesInUse", version=version)
                except ConcurrencyConflict:
                    continue
                self._informer.observe(new)
                return
        raise ConcurrencyConflict(f"{self.ref} keeps changing; volumesInUse not written")

    def _labels(self) -> dict[str, str]:
        return {names.LABEL_HOSTNAME: self.name, TOPOLOGY_KEY: self.name}

    def _node_ids(self, current: Obj | None) -> str:
        raw = Node(current).annotations.get(names.ANN_CSI_NODE_IDS) if current is not None else None
        try:
            ids = json.loads(raw) if raw else {}
        except ValueError:
            ids = {}
        ids = ids if isinstance(ids, dict) else {}
        # Other drivers' ids on this node stay; ours is (re)written.
        return json.dumps({**ids, names.OWN_DRIVER: self._node_id}, sort_keys=True)

    def _ready(self, current: Obj | None) -> list[Obj]:
        have: list[Obj] = Node(current).status.get("conditions") or [] if current is not None else []
        conditions = [c for c in have if c.get("type") != "Ready"]
        old: Obj = next((c for c in have if c.get("type") == "Ready"), {})
        since = old.get("lastTransitionTime") if old.get("status") == "True" else None
        ready = {
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "volplane volume manager is ready",
            "lastTransitionTime": since or rfc3339(now_ns()),
        }
        return [*conditions, ready]

    def _own_status(self, current: Obj | None) -> Obj:
        """The status fields this agent writes (the AD controller's volumesAttached is not one)."""
        return {"conditions": self._ready(current), "nodeInfo": {"kubeletVersion": "volplane"}}

    def _new(self, volumes_in_use: list[str]) -> Obj:
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": self._labels(), "annotations": {names.ANN_CSI_NODE_IDS: self._node_ids(None)}},
            "spec": {},
            "status": {**self._own_status(None), "volumesInUse": sorted(volumes_in_use)},
        }

    def _registration(self, current: Obj, volumes_in_use: list[str] | None) -> Obj:
        status = self._own_status(current)
        if volumes_in_use is not None:
            have = Node(current).volumes_in_use
            status["volumesInUse"] = sorted({*have, *volumes_in_use})
        return {"metadata": {"labels": self._labels(), "annotations": {names.ANN_CSI_NODE_IDS: self._node_ids(current)}}, "status": status}


def _merged(names_: list[str], *, adds: set[str], removes: set[str]) -> list[str]:
    return sorted((set(names_) | adds) - removes)
