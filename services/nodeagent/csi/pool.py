"""This node's pools, worked on for the provisioner: every image operation on them happens here.

    pools = NodePools("node-1", [ImagePool(Path("run/pools/node-1"), "node-1", "local", 2**40, "node-1", tag="node-1")])
    await pools.make(MakeImage(pool="node-1", volume_id=vid, size=2**30))
    await pools.make(MakeImage(pool="node-1", volume_id=clone, size=2**30, source=ImageSource(kind="volume", id=vid, pool="node-1", node="node-1")))
    await pools.remove(RemoveImage(pool="node-1", kind="volume", id=vid))

The provisioner decides and records (VolumeCreating … VolumeCreated); the node that owns the
pool acts (docs/decisions.md, "Pools and topology"). It records nothing itself: the
provisioner's intent is the record, and every operation here is idempotent, so the
provisioner simply asks again after a timeout, a crash or a restart of either side:

- a request carries the moment its sender stops waiting (``expires_at``); one that arrives
  later is refused without acting, so a request that waited in a frozen node's queue never
  undoes what a retry has done since (clocks are assumed to agree within well under the
  timeouts, as NTP keeps them);
- a request for an operation already running here joins it instead of starting another;
- an image that exists was made completely (``adapters/pool.py``): a copy is not redone,
  a size is only ever grown.

A copy whose source lives in another node's pool comes over the bus (``BusCopy`` below,
docs/decisions.md "Images across hosts"): this node asks the source's node to send the image
into the transfer store (``send``, a node-to-node command), receives it into the temporary
file the pool puts in place, and discards the transfer once the image is there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from volplane import deadlines, subjects
from volplane.bus import Bus
from volplane.commands import Done, GrowImage, ImageInfo, ImageSent, ImageSource, MakeImage, RemoveImage, SendImage, SnapshotImage, StatImage
from volplane.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable, VolplaneError
from volplane.ids import is_volume_id

from ..adapters import transfer
from ..adapters.pool import ImagePool

__all__ = ["SEND_TIMEOUT_S", "BusCopy", "NodePools", "copy_from_another_node", "transfer_key"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long this node waits for another node to send an image: at most this, and within a
# command what the caller still waits less ANSWER_MARGIN_S (so that the caller hears which
# node did not answer, not its own deadline passing). Short, so that a frozen source holds
# no intent long (the completer's pass would wait out the whole copy timeout): a source still
# sending after it goes on, and the next request joins its send or finds it stored.
SEND_TIMEOUT_S = 20.0
ANSWER_MARGIN_S = 0.5
# Short of this, the source node is not asked at all: the caller could not hear the answer.
MIN_SEND_TIMEOUT_S = 1.0


def transfer_key(node: str, kind: str, id: str) -> str:
    """The transfer of node ``node``'s image: ``host-2.snapshot.<id>``. Its first token is the
    sending node's, the one a node's NATS user may publish under (services/catalog.py)."""
    return f"{subjects.node_token(node)}.{kind}.{id}"


async def copy_from_another_node(node: str, source: ImageSource, tmp: Path) -> None:
    """What a copy from another node's pool is without a bus to copy over (a NodePools made
    without ``BusCopy``), and a source in the shared pool on a node that does not have it."""
    where = f"node {source.node}'s pool {source.pool}" if source.node else f"pool {source.pool}, which node {node} does not have"
    raise FailedPrecondition(f"{source.kind} {source.id} is in {where}: copying it to node {node} needs the cross-host copy, which this node cannot make")


# ---------------------------------------------------------------------------------------
# CROSS-HOST COPY (issue 12, item 2; docs/architecture.md "A cross-host restore").
#
# The target node asks the source node (``subjects.node_pool_command(source.node, POOL_SEND)``)
# to ``transfer.send`` its image under ``<source node>.<kind>.<id>``; the answer comes when
# the manifest is stored. Then it ``transfer.receive``s into ``tmp`` (checked chunk by chunk
# and whole, renamed into place), the pool links ``tmp`` as the image, and the transfer is
# discarded. A source node that does not answer within the caller's deadline is Unavailable:
# the provisioner keeps its intent, and the CO's retry or the completer asks again — the
# source's send goes on meanwhile (shielded, resumable), so a retry finds it done or joins it.
# ---------------------------------------------------------------------------------------
class BusCopy:
    """Images between nodes over the bus: asking for one, sending one, receiving one."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def fetch(self, node: str, source: ImageSource, tmp: Path) -> None:
        """``source``'s image, held by ``source.node``, into the file ``tmp`` on ``node``."""
        if not source.node or source.node == node:
            await copy_from_another_node(node, source, tmp)
        for attempt in (1, 2):
            sent = await self._ask_to_send(source)
            try:
                got = await transfer.receive(self._bus.nc, sent.key, tmp)
            except (Internal, Unavailable) as exc:
                # A chunk that did not match its checksum is removed from the store, and a
                # transfer may have been discarded by another receiver of the same key (two
                # clones of one volume): the source sends what is missing again, once.
                if attempt == 2:
                    raise
                log.warning("receiving %s again: %s", sent.key, exc.message)
                continue
            log.info("received %s from node %s: %d bytes, %d chunks", sent.key, source.node, got.size, got.chunks)
            return

    async def done(self, source: ImageSource) -> None:
        """After the image is in place: the transfer is removed from the store. A failure is
        only logged — the store's max_age drops a transfer left behind."""
        key = transfer_key(source.node, source.kind, source.id)
        try:
            await transfer.discard(self._bus.nc, key)
        except VolplaneError as exc:
            log.warning("transfer %s was not discarded (the store drops it after %.0f h): %s", key, transfer.MAX_AGE / 3600, exc.message)

    async def send(self, node: str, image: Path, kind: str, id: str) -> ImageSent:
        """On the source node: ``image`` into the transfer store; only what is missing goes."""
        key = transfer_key(node, kind, id)
        if kind == "volume":
            # A volume's dirty pages sit above its loop device; flushed, as for a snapshot.
            await asyncio.to_thread(os.sync)
        sent = await transfer.send(self._bus.nc, image, key)
        log.info("sent %s: %d chunks, %d of them now, %d stored before", key, sent.chunks, sent.transferred, sent.skipped)
        return ImageSent(key=key, size_bytes=sent.size, chunks=sent.chunks, transferred=sent.transferred, skipped=sent.skipped)

    async def _ask_to_send(self, source: ImageSource) -> ImageSent:
        left = deadlines.time_left()
        timeout = SEND_TIMEOUT_S if left is None else min(SEND_TIMEOUT_S, left - ANSWER_MARGIN_S)
        if timeout < MIN_SEND_TIMEOUT_S:
            raise Unavailable(f"no time left to ask node {source.node} for {source.kind} {source.id}; retry")
        cmd = SendImage(pool=source.pool, kind=source.kind, id=source.id, expires_at=time.time() + timeout)
        try:
            reply = await self._bus.request(subjects.node_pool_command(source.node, subjects.POOL_SEND), cmd, timeout)
        except Unavailable as exc:
            raise Unavailable(f"node {source.node}, which holds {source.kind} {source.id}, did not send it ({exc.message}); retry when it is back") from exc
        return ImageSent.model_validate(reply)


class NodePools:
    def __init__(self, node: str, pools: Iterable[ImagePool], remote: BusCopy | None = None) -> None:
        self._node = node
        self._pools = {p.name: p for p in pools}
        self._remote = remote
        self._running: dict[tuple[str, ...], asyncio.Future[Any]] = {}

    @property
    def pools(self) -> list[ImagePool]:
        return list(self._pools.values())

    def sweep(self) -> int:
        """On start: remove the half-written copies this node's last run left; returns how many."""
        swept = 0
        for pool in self._pools.values():
            if n := pool.sweep():
                log.info("removed %d half-written copies from pool %s", n, pool.name)
                swept += n
        return swept

    # -- commands -----------------------------------------------------------

    async def make(self, cmd: MakeImage) -> ImageInfo:
        pool = self._pool(cmd.pool, cmd.expires_at)
        if cmd.size <= 0:
            raise InvalidArgument(f"size: must be positive, got {cmd.size}")
        pool.path_for(cmd.volume_id)  # NotFound for an id that is not ours

        async def make() -> ImageInfo:
            if cmd.source is None:
                path = await asyncio.to_thread(pool.create, cmd.volume_id, cmd.size)
            else:
                path = await self._copy_in(pool, cmd.source, cmd.volume_id, cmd.size)
            return ImageInfo(exists=True, size_bytes=path.stat().st_size)

        return await self._once(("make", pool.name, cmd.volume_id), make)

    async def grow(self, cmd: GrowImage) -> ImageInfo:
        pool = self._pool(cmd.pool, cmd.expires_at)

        async def grow() -> ImageInfo:
            await asyncio.to_thread(pool.grow, cmd.volume_id, cmd.size)
            return ImageInfo(exists=True, size_bytes=pool.path_for(cmd.volume_id).stat().st_size)

        return await self._once(("grow", pool.name, cmd.volume_id, str(cmd.size)), grow)

    async def snapshot(self, cmd: SnapshotImage) -> ImageInfo:
        pool = self._pool(cmd.pool, cmd.expires_at)

        async def snapshot() -> ImageInfo:
            path = await pool.snapshot(cmd.volume_id, cmd.snapshot_id)
            return ImageInfo(exists=True, size_bytes=path.stat().st_size)

        return await self._once(("snapshot", pool.name, cmd.snapshot_id), snapshot)

    async def remove(self, cmd: RemoveImage) -> Done:
        pool = self._pool(cmd.pool, cmd.expires_at)
        if not is_volume_id(cmd.id):
            return Done()  # Never an image of ours: gone already.
        if cmd.kind == "volume":
            await asyncio.to_thread(pool.delete, cmd.id)
        else:
            await asyncio.to_thread(pool.delete_snapshot, cmd.id)
        return Done()

    async def send(self, cmd: SendImage) -> ImageSent:
        """Another node's request: this node's image into the transfer store (``BusCopy``).
        A request for a send already running joins it; a send asked again after it finished
        finds its chunks stored and sends only the manifest."""
        pool = self._pool(cmd.pool, cmd.expires_at)
        if self._remote is None:
            raise FailedPrecondition(f"node {self._node} has no bus to send images over")
        if not is_volume_id(cmd.id):
            raise NotFound(f"{cmd.kind} {cmd.id[:64]!r} has no image in pool {pool.name}")
        image = pool.snapshot_path(cmd.id) if cmd.kind == "snapshot" else pool.path_for(cmd.id)
        remote = self._remote
        return await self._once(("send", cmd.kind, cmd.id), lambda: remote.send(self._node, image, cmd.kind, cmd.id))

    async def stat(self, cmd: StatImage) -> ImageInfo:
        pool = self._pool(cmd.pool, 0.0)
        size = pool.size_of(pool.path_for(cmd.volume_id))
        return ImageInfo(exists=size is not None, size_bytes=size or 0)

    # -- steps --------------------------------------------------------------

    async def _copy_in(self, pool: ImagePool, source: ImageSource, volume_id: str, size: int) -> Path:
        here = self._pools.get(source.pool)
        if here is not None and (here.kind == "shared" or here.node == self._node):
            image = here.snapshot_path(source.id) if source.kind == "snapshot" else here.path_for(source.id)
            if not image.exists():
                raise NotFound(f"{source.kind} {source.id} has no image in pool {source.pool}")
            return await pool.copy_in(image, volume_id, size)
        # Another node's pool: its image comes over the wire, into a temporary file here.
        remote = self._remote
        if remote is None:
            return await pool.write_in(volume_id, size, lambda tmp: copy_from_another_node(self._node, source, tmp))
        path = await pool.write_in(volume_id, size, lambda tmp: remote.fetch(self._node, source, tmp))
        await remote.done(source)  # the image is in place: its transfer goes
        return path

    def _pool(self, name: str, expires_at: float) -> ImagePool:
        if expires_at and time.time() > expires_at:
            # Its sender has stopped waiting and may have retried elsewhere since: acting now
            # could undo that (a removal after a re-creation), so nothing is done.
            raise Unavailable(f"node {self._node}: the request for pool {name[:64]!r} arrived after its sender stopped waiting")
        pool = self._pools.get(name)
        if pool is None:
            raise FailedPrecondition(f"node {self._node} has no pool {name[:64]!r}")
        return pool

    async def _once(self, key: tuple[str, ...], work: Callable[[], Awaitable[T]]) -> T:
        """``work()``, or the same work already running for an earlier request of the same key.

        Shielded: a caller that goes away (its request timed out) does not stop the work,
        whose result the retry then finds."""
        running = self._running.get(key)
        if running is None:
            task: asyncio.Future[T] = asyncio.ensure_future(work())
            task.add_done_callback(lambda _: self._running.pop(key, None))
            self._running[key] = task
            return await asyncio.shield(task)
        return cast(T, await asyncio.shield(running))
