"""What the provisioner holds of each pool (``Capacity``): the same free bytes as counting every
reservation, while reservations pile up behind a lagging projection, are confirmed, replaced,
released, and passed by the projection; and nothing is kept once the projection has passed."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from services.provisioner.adapters.pool import Pool
from services.provisioner.csi.capacity import Capacity
from volplane.errors import ResourceExhausted

GiB = 2**30
POOLS = {"shared": Pool("shared", "shared", 100 * GiB), "node-1": Pool("node-1", "local", 50 * GiB, node="node-1")}


class _Pools:
    def all(self) -> list[Pool]:
        return list(POOLS.values())

    def get(self, name: str) -> Pool:
        return POOLS[name]


class _Projection:
    """The two things Capacity reads of a projection: used bytes per pool, and its position."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}
        self.position = 0


def capacity() -> tuple[Capacity, _Projection]:
    volumes = _Projection()
    return Capacity(cast(Any, _Pools()), cast(Any, volumes), cast(Any, _Projection())), volumes


def test_free_bytes_match_a_count_of_every_reservation_held() -> None:
    cap, volumes = capacity()
    rng = random.Random(7)
    held: dict[str, tuple[str, int, int]] = {}  # key → (pool, size, seq), as the old scan counted
    seq = 0
    for step in range(5_000):
        key = f"v{rng.randrange(400)}"
        pool = rng.choice(list(POOLS))
        size = rng.randrange(1, 64) * 2**20
        with cap.reserve(key, pool, size) as r:
            held[key] = (pool, size, 0)
            if rng.random() < 0.9:  # the intent is in the log
                seq += 1
                r.confirm(seq)
                held[key] = (pool, size, seq)
            else:  # its append failed: released on leaving the block
                del held[key]
        if step % 7 == 0:  # the projection moves on, sometimes far behind
            volumes.position = max(volumes.position, seq - rng.randrange(0, 300))
        live = {k: v for k, v in held.items() if not (v[2] and v[2] <= volumes.position)}
        for name, pool_ in POOLS.items():
            expected = pool_.capacity - sum(s for p, s, _ in live.values() if p == name)
            assert cap.free(pool_) == expected, (step, name)
        held = live
    volumes.position = seq
    assert [cap.free(p) for p in POOLS.values()] == [p.capacity for p in POOLS.values()]
    assert cap._reserved == {} and cap._held == {}
    cap._in_flight("shared")
    assert cap._confirmed == []


def test_a_reservation_that_does_not_fit_is_refused_and_holds_nothing() -> None:
    cap, _ = capacity()
    with cap.reserve("a", "node-1", 40 * GiB) as r:
        r.confirm(1)
    with pytest.raises(ResourceExhausted):
        cap.reserve("b", "node-1", 11 * GiB)
    assert cap.free(POOLS["node-1"]) == 10 * GiB
