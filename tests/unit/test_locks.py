"""KeyedLocks: ``hold`` refuses a taken key, ``acquire`` waits for it; keys never block each other."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from volplane.errors import OperationPending
from volplane.locks import KeyedLocks


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """No asyncio plugin here: each test runs its coroutine on a loop of its own."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def _started(locks: KeyedLocks, key: str, order: list[str], name: str, release: asyncio.Event) -> None:
    async with locks.acquire(key):
        order.append(name)
        await release.wait()


@_run
async def test_hold_refuses_a_held_key_with_operation_pending() -> None:
    locks = KeyedLocks("volume")
    async with locks.hold("vol-1"):
        with pytest.raises(OperationPending, match="volume vol-1 is already in progress"):
            async with locks.hold("vol-1"):
                pass
        assert "vol-1" in locks


@_run
async def test_hold_of_another_key_is_granted() -> None:
    locks = KeyedLocks("volume")
    async with locks.hold("vol-1"), locks.hold("vol-2"):
        assert "vol-1" in locks and "vol-2" in locks


@_run
async def test_a_key_is_free_again_after_hold_even_when_the_body_raises() -> None:
    locks = KeyedLocks("volume")
    with pytest.raises(RuntimeError):
        async with locks.hold("vol-1"):
            raise RuntimeError("boom")
    assert "vol-1" not in locks and len(locks) == 0
    async with locks.hold("vol-1"):
        pass


@_run
async def test_acquire_waits_for_the_holder_then_runs() -> None:
    locks = KeyedLocks("volume")
    order: list[str] = []
    release = asyncio.Event()
    async with locks.hold("vol-1"):
        waiter = asyncio.create_task(_started(locks, "vol-1", order, "waiter", release))
        await asyncio.sleep(0.01)
        assert order == []  # still waiting, not refused
        order.append("holder")
    release.set()
    await asyncio.wait_for(waiter, 1)
    assert order == ["holder", "waiter"]
    assert len(locks) == 0


@_run
async def test_acquirers_of_one_key_take_turns_in_arrival_order() -> None:
    locks = KeyedLocks("volume")
    order: list[str] = []
    release = asyncio.Event()
    tasks = [asyncio.create_task(_started(locks, "vol-1", order, str(i), release)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert order == ["0"]  # one at a time
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert order == ["0", "1", "2"]
    assert len(locks) == 0


@_run
async def test_hold_refuses_a_key_others_wait_for() -> None:
    locks = KeyedLocks("volume")
    release = asyncio.Event()
    first = asyncio.create_task(_started(locks, "vol-1", [], "first", release))
    await asyncio.sleep(0.01)
    with pytest.raises(OperationPending):
        async with locks.hold("vol-1"):
            pass
    release.set()
    await asyncio.wait_for(first, 1)
    async with locks.hold("vol-1"):
        pass


@_run
async def test_a_cancelled_waiter_leaves_no_entry_behind() -> None:
    locks = KeyedLocks("volume")
    async with locks.hold("vol-1"):
        waiter = asyncio.create_task(_started(locks, "vol-1", [], "waiter", asyncio.Event()))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert len(locks) == 0
