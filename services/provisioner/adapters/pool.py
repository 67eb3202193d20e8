"""The pools volumes are placed in, and the requests that have their nodes work on them.

    pools = Pools(nodes_projection, bus)
    pool = pools.get("node-1")                            # name, kind, owning node, capacity
    await pools.make("node-1", vid, 2**30)                # node-1's nodeagent makes the image
    await pools.make("shared", clone, 2**30, pools.source("volume", vid, "node-1"))
    await pools.remove("node-1", "volume", vid)

The provisioner never opens a pool directory (docs/decisions.md, "Pools and topology"):
it learns the pools from the node registry (each nodeagent announces its own, and the
shared one if it has it) and asks the node that owns a pool to act on its images
(``services/nodeagent/csi/pool.py``): a local pool's node on its own subject, the shared
pool one of the nodes that have it, through their queue group. A node that does not answer
in time is Unavailable (retryable): the caller leaves its intent in the log and asks again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from volplane import deadlines, subjects
from volplane.bus import Bus
from volplane.commands import GrowImage, ImageInfo, ImageSource, MakeImage, RemoveImage, SnapshotImage, StatImage
from volplane.errors import Internal, Unavailable
from volplane.nodes import SHARED_POOL, NodesProjection

__all__ = ["COPY_TIMEOUT_S", "POOL_TIMEOUT_S", "STAT_TIMEOUT_S", "Pool", "Pools"]

# How long a node may take to make, grow or remove an image (a truncate or an unlink: a
# node slower than this is treated as away, and the CO's retry asks again).
POOL_TIMEOUT_S = 10.0
# ... and to copy one (a snapshot, a restore or a clone: sparse, but as long as its data).
COPY_TIMEOUT_S = 60.0
# ... and to say whether an image exists (ControllerGetVolume's volume condition).
STAT_TIMEOUT_S = 2.0
# Within a command, the node is given what the caller still waits less this, so that the
# caller hears UNAVAILABLE and why, rather than its own deadline passing.
ANSWER_MARGIN_S = 0.5


@dataclass(frozen=True)
class Pool:
    name: str
    kind: Literal["local", "shared"]
    capacity: int
    node: str = ""  # the node that owns a local pool; "" for the shared one
    nodes: tuple[str, ...] = ()  # the nodes that have it


class Pools:
    """Every pool the registry knows: the shared one and each node's local one."""

    def __init__(self, registry: NodesProjection, bus: Bus, *, timeout: float = POOL_TIMEOUT_S, copy_timeout: float = COPY_TIMEOUT_S) -> None:
        self._registry = registry
        self._bus = bus
        self._timeout = timeout
        self._copy_timeout = copy_timeout

    def all(self) -> list[Pool]:
        local: list[Pool] = []
        shared: list[tuple[int, int, str]] = []  # (registration, capacity, node) of each node that has it
        for info in self._registry.nodes.values():
            for spec in info.pools:
                if spec.kind == "local":
                    local.append(Pool(spec.name, "local", spec.capacity, info.node_id, (info.node_id,)))
                else:
                    shared.append((info.version, spec.capacity, info.node_id))
        if not shared:
            return local
        # Every node announces the same shared pool; the newest registration says its size.
        capacity = max(shared)[1]
        return [Pool(SHARED_POOL, "shared", capacity, "", tuple(sorted(n for _, _, n in shared))), *local]

    def get(self, name: str) -> Pool:
        for pool in self.all():
            if pool.name == name:
                return pool
        raise Internal(f"pool {name!r} is unknown: no node that has it has registered")

    def source(self, kind: Literal["snapshot", "volume"], id: str, pool: str) -> ImageSource:
        """Where a restore's or a clone's data is: its pool, and the node that owns it."""
        return ImageSource(kind=kind, id=id, pool=pool, node=self.get(pool).node)

    # -- requests to the pool's node ---------------------------------------

    async def make(self, pool: str, volume_id: str, size: int, source: ImageSource | None = None) -> ImageInfo:
        """The volume's image, empty or a copy of ``source``: done by the node that owns
        ``pool`` — or, for the shared pool and a source in a node's local pool, by that node
        (it has both)."""
        target = self.get(pool)
        via = ""
        if target.kind == "shared" and source is not None and source.node in target.nodes:
            via = source.node
        timeout = self._copy_timeout if source else self._timeout
        cmd = MakeImage(pool=pool, volume_id=volume_id, size=size, source=source)
        return ImageInfo.model_validate(await self._ask(target, subjects.POOL_MAKE, cmd, timeout, via=via))

    async def grow(self, pool: str, volume_id: str, size: int) -> ImageInfo:
        cmd = GrowImage(pool=pool, volume_id=volume_id, size=size)
        return ImageInfo.model_validate(await self._ask(self.get(pool), subjects.POOL_GROW, cmd, self._timeout))

    async def snapshot(self, pool: str, volume_id: str, snapshot_id: str) -> ImageInfo:
        cmd = SnapshotImage(pool=pool, volume_id=volume_id, snapshot_id=snapshot_id)
        return ImageInfo.model_validate(await self._ask(self.get(pool), subjects.POOL_SNAPSHOT, cmd, self._copy_timeout))

    async def remove(self, pool: str, kind: Literal["volume", "snapshot"], id: str) -> None:
        cmd = RemoveImage(pool=pool, kind=kind, id=id)
        await self._ask(self.get(pool), subjects.POOL_REMOVE, cmd, self._timeout)

    async def stat(self, pool: str, volume_id: str) -> ImageInfo:
        cmd = StatImage(pool=pool, volume_id=volume_id)
        return ImageInfo.model_validate(await self._ask(self.get(pool), subjects.POOL_STAT, cmd, STAT_TIMEOUT_S))

    async def _ask(self, pool: Pool, verb: str, cmd: BaseModel, timeout: float, via: str = "") -> Any:
        node = via or pool.node
        left = deadlines.time_left()
        if left is not None:
            timeout = max(ANSWER_MARGIN_S, min(timeout, left - ANSWER_MARGIN_S))
        if "expires_at" in type(cmd).model_fields:
            # The node acts on no copy of it that arrives after this (csi/pool.py in the nodeagent).
            cmd = cmd.model_copy(update={"expires_at": time.time() + timeout})
        subject = subjects.node_pool_command(node, verb) if node else subjects.shared_pool_command(verb)
        try:
            return await self._bus.request(subject, cmd, timeout)
        except Unavailable as exc:
            who = f"node {node}" if node else f"no node with the shared pool ({', '.join(pool.nodes) or 'none registered'})"
            raise Unavailable(f"pool {pool.name}: {who} did not answer ({exc.message}); retry when it is back") from exc
