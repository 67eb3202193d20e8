"""How much of each pool is promised, for placement, GetCapacity and refusals.

    capacity = Capacity(pools, volumes_projection, snapshots_projection)
    pool = choose_pool(capacity.views(), size, ...)
    with capacity.reserve(vid, pool.name, size) as held:   # ResourceExhausted if it does not fit
        state = await repository.append(vid, state, intent)
        held.confirm(state.version)     # kept until the volumes projection has counted it
    # not confirmed (the append failed or lost its race): released on leaving the block

The projections keep each pool's used bytes in memory (volumes and snapshots); a
reservation covers an intent from the moment it is decided until the volumes projection
has counted it. Reservations are this process's own: two replicas may briefly promise
more than a pool holds, by at most what they have in flight (docs/decisions.md).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from types import TracebackType

from volplane.errors import ResourceExhausted

from ..adapters.pool import Pool, Pools
from ..adapters.projection import SnapshotsProjection, VolumesProjection
from ..domain.placement import PoolView

__all__ = ["Capacity", "Reservation"]


@dataclass
class _Held:
    pool: str
    size: int
    seq: int = 0  # 0 until the intent is in the log


class Reservation:
    """Bytes held in one pool for one intent; released on leaving the ``with`` block
    unless ``confirm`` said the intent is in the log."""

    def __init__(self, capacity: Capacity, key: str, pool: str, size: int) -> None:
        self._capacity = capacity
        self._key = key
        self.pool = pool
        self.size = size
        self._confirmed = False

    def confirm(self, seq: int) -> None:
        """The intent is in the log at ``seq``: keep the bytes until the projection counts it."""
        self._capacity._confirm(self._key, seq)
        self._confirmed = True

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._confirmed:
            self._capacity.release(self._key)


class Capacity:
    """Each pool's free bytes in O(1) a question: the projections' used bytes, less what this
    process holds. Held bytes are summed per pool as they are reserved and released, and
    confirmed reservations wait in a heap by sequence, dropped in order once the volumes
    projection has passed them. (A scan of every reservation per question cost a quarter of
    the provisioner's samples at 16 clients: while the projection lags, reservations pile
    up, each create scanned them all, and the lag grew.)"""

    def __init__(self, pools: Pools, volumes: VolumesProjection, snapshots: SnapshotsProjection) -> None:
        self.pools = pools
        self._volumes = volumes
        self._snapshots = snapshots
        self._reserved: dict[str, _Held] = {}
        self._held: dict[str, int] = {}  # pool → bytes its reservations hold
        self._confirmed: list[tuple[int, str]] = []  # (seq, key), a heap

    def free(self, pool: Pool) -> int:
        used = self._volumes.used.get(pool.name, 0) + self._snapshots.used.get(pool.name, 0)
        return max(0, pool.capacity - used - self._in_flight(pool.name))

    def views(self) -> list[PoolView]:
        return [PoolView(name=p.name, kind=p.kind, node=p.node, free=self.free(p)) for p in self.pools.all()]

    def reserve(self, key: str, pool: str, size: int) -> Reservation:
        """Hold ``size`` bytes of ``pool`` for the intent ``key``, or ResourceExhausted. A key
        reserved again holds only its newest reservation."""
        free = self.free(self.pools.get(pool))
        if size > free:
            raise ResourceExhausted(f"pool {pool} has {free} bytes free, {size} requested")
        self.release(key)
        self._reserved[key] = _Held(pool, size)
        self._held[pool] = self._held.get(pool, 0) + size
        return Reservation(self, key, pool, size)

    def release(self, key: str) -> None:
        held = self._reserved.pop(key, None)
        if held is None:
            return
        left = self._held[held.pool] - held.size
        if left:
            self._held[held.pool] = left
        else:
            del self._held[held.pool]

    def _confirm(self, key: str, seq: int) -> None:
        held = self._reserved.get(key)
        if held is not None:
            held.seq = seq
            heapq.heappush(self._confirmed, (seq, key))

    def _in_flight(self, pool: str) -> int:
        # Volume intents (creations, expansions) are counted by the volumes projection: what
        # it has passed is released, oldest first. A heap entry of a reservation since
        # released or replaced no longer matches its key's and is dropped.
        position = self._volumes.position
        while self._confirmed and self._confirmed[0][0] <= position:
            seq, key = heapq.heappop(self._confirmed)
            held = self._reserved.get(key)
            if held is not None and held.seq == seq:
                self.release(key)
        return self._held.get(pool, 0)
