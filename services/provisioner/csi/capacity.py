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
    def __init__(self, pools: Pools, volumes: VolumesProjection, snapshots: SnapshotsProjection) -> None:
        self.pools = pools
        self._volumes = volumes
        self._snapshots = snapshots
        self._reserved: dict[str, _Held] = {}

    def free(self, pool: Pool) -> int:
        used = self._volumes.used.get(pool.name, 0) + self._snapshots.used.get(pool.name, 0)
        return max(0, pool.capacity - used - self._in_flight(pool.name))

    def views(self) -> list[PoolView]:
        return [PoolView(name=p.name, kind=p.kind, node=p.node, free=self.free(p)) for p in self.pools.all()]

    def reserve(self, key: str, pool: str, size: int) -> Reservation:
        """Hold ``size`` bytes of ``pool`` for the intent ``key``, or ResourceExhausted."""
        free = self.free(self.pools.get(pool))
        if size > free:
            raise ResourceExhausted(f"pool {pool} has {free} bytes free, {size} requested")
        self._reserved[key] = _Held(pool, size)
        return Reservation(self, key, pool, size)

    def release(self, key: str) -> None:
        self._reserved.pop(key, None)

    def _confirm(self, key: str, seq: int) -> None:
        if key in self._reserved:
            self._reserved[key].seq = seq

    def _in_flight(self, pool: str) -> int:
        # Volume intents (creations, expansions) are counted by the volumes projection.
        position = self._volumes.position
        done = [k for k, r in self._reserved.items() if r.seq and r.seq <= position]
        for key in done:
            del self._reserved[key]
        return sum(r.size for r in self._reserved.values() if r.pool == pool)
