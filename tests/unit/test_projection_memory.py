"""What a projection runner keeps in memory of its read model (issue 15: no process grows
under steady work): live states up to its bound, and nothing of deleted aggregates."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from services.provisioner.adapters.projection import VolumesProjection
from volplane.eventstore import EventStore
from volplane.projection import ProjectionRunner


def runner(cache_size: int = 200_000) -> ProjectionRunner[Any]:
    # Neither Redis nor the log is reached: a client connects on its first command, and
    # what is tested here never uses the store. States are plain strings.
    return ProjectionRunner(aioredis.Redis(), cast(EventStore, None), VolumesProjection(), cache_size=cache_size)


def test_a_deleted_aggregate_leaves_nothing_behind() -> None:
    """CreateVolume+DeleteVolume all day: the memory stays empty, not one entry per volume."""
    r = runner()
    for i in range(10_000):
        key = f"vp:vol:{i:032x}"
        r._remember(key, "creating")
        r._remember(key, "ready")
        r._remember(key, None)
    assert len(r._cache) == 0
    assert r.cached("vp:vol:" + "0" * 32) == (False, None)  # asked of Redis, which has no key


def test_live_states_are_kept_up_to_the_bound_the_oldest_dropped() -> None:
    r = runner(cache_size=3)
    for i in range(5):
        r._remember(f"k{i}", f"state-{i}")
    assert list(r._cache) == ["k2", "k3", "k4"]
    assert r.cached("k4") == (True, "state-4")
    assert r.cached("k0") == (False, None)
