"""Per-key operation locks: one operation per key (a volume, a snapshot) at a time, never a global lock.

    locks = KeyedLocks("volume")
    async with locks.hold(volume_id):      # refuses: raises OperationPending if the key is taken
        ...
    async with locks.acquire(unique_name):  # waits its turn behind whoever has the key
        ...

Two ways in, one primitive, because two callers need different answers to "busy":

- ``hold`` refuses. A CSI handler must answer ABORTED when an operation is already
  pending for the volume (the CSI spec), and the caller retries with backoff.
- ``acquire`` queues. A control loop's sync is already retried by its loop; when two
  keys of the volume manager reach one volume (a pod's sync and the node's), the second
  waits and then looks again at what the first left, rather than failing a whole sync.

A key counts as taken while anyone holds it or waits for it, so ``hold`` also refuses a
key others are queued on. Its entry is dropped when the last user leaves: the table only
ever holds keys in use. These locks are per process; across replicas the event store's
optimistic concurrency check is what keeps two writers from both winning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from volplane.errors import OperationPending

__all__ = ["KeyedLocks"]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders and waiters


class KeyedLocks:
    def __init__(self, what: str) -> None:
        self._what = what
        self._keys: dict[str, _Entry] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Have ``key`` now or raise OperationPending; never waits."""
        if key in self._keys:
            raise OperationPending(f"an operation on {self._what} {key} is already in progress")
        # Nobody holds or waits: the lock is free and taking it does not suspend, so no
        # other task can slip in between the check above and this.
        async with self._use(key):
            yield

    @asynccontextmanager
    async def acquire(self, key: str) -> AsyncIterator[None]:
        """Have ``key`` once everyone before has let it go (first come, first served)."""
        async with self._use(key):
            yield

    @asynccontextmanager
    async def _use(self, key: str) -> AsyncIterator[None]:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            # Also when cancelled while waiting: a waiter that gives up is no user any more.
            entry.users -= 1
            if entry.users == 0:
                del self._keys[key]

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is held or waited for."""
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
