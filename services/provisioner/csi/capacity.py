"""How much of each pool is promised, for placement, GetCapacity and refusals.

    capacity = Capacity(pools, volumes_runner, snapshots_runner)
    pool = choose_pool(capacity.views(), size, ...)
    capacity.reserve(key, pool.name, size)            # before the intent is appended
    capacity.confirm(key, seq, volumes_runner)        # held until the runner has counted it

The projections keep each pool's used bytes in memory (volumes and snapshots); a
reservation covers an intent from the moment it is decided until its projection has
counted it. Reservations are this process's own: two replicas may briefly promise more
than a pool holds, by at most what they have in flight (docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from volplane.errors import ResourceExhausted
from volplane.projection import ProjectionRunner

from ..adapters.pool import ImagePool, Pools
from ..domain.placement import PoolView


@dataclass
class _Reservation:
    pool: str
    size: int
    runner: ProjectionRunner[Any] | None = None
    seq: int = 0


class Capacity:
    def __init__(self, pools: Pools, volumes: ProjectionRunner[Any], snapshots: ProjectionRunner[Any]) -> None:
        self.pools = pools
        self._volumes = volumes
        self._snapshots = snapshots
        self._reserved: dict[str, _Reservation] = {}

    def free(self, pool: ImagePool) -> int:
        used = self._volumes.projection.used.get(pool.name, 0) + self._snapshots.projection.used.get(pool.name, 0)  # type: ignore[attr-defined]
        return max(0, pool.capacity - used - self._in_flight(pool.name))

    def views(self) -> list[PoolView]:
        return [PoolView(name=p.name, kind=p.kind, node=p.node, free=self.free(p)) for p in self.pools.all()]

    def reserve(self, key: str, pool: str, size: int) -> None:
        free = self.free(self.pools.get(pool))
        if size > free:
            raise ResourceExhausted(f"pool {pool} has {free} bytes free, {size} requested")
        self._reserved[key] = _Reservation(pool, size)

    def confirm(self, key: str, seq: int, runner: ProjectionRunner[Any]) -> None:
        """The intent is in the log at ``seq``: keep the bytes until ``runner`` counts it."""
        if key in self._reserved:
            self._reserved[key].runner, self._reserved[key].seq = runner, seq

    def release(self, key: str) -> None:
        self._reserved.pop(key, None)

    def _in_flight(self, pool: str) -> int:
        done = [k for k, r in self._reserved.items() if r.runner is not None and r.seq <= r.runner.position]
        for key in done:
            del self._reserved[key]
        return sum(r.size for r in self._reserved.values() if r.pool == pool)
