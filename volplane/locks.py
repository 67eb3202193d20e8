"""Per-key operation locks: one operation per volume at a time, never a global lock.

    locks = KeyedLocks("volume")
    async with locks.hold(volume_id):     # raises OperationPending if already held
        ...

A held key is refused rather than queued: the CSI spec asks for ABORTED when an
operation is already pending for the volume, and the caller retries with backoff.
These locks are per process; across replicas the event store's optimistic
concurrency check is what keeps two writers from both winning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from volplane.errors import OperationPending

__all__ = ["KeyedLocks"]


class KeyedLocks:
    def __init__(self, what: str) -> None:
        self._what = what
        self._held: set[str] = set()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        if key in self._held:
            raise OperationPending(f"an operation on {self._what} {key} is already in progress")
        self._held.add(key)
        try:
            yield
        finally:
            self._held.discard(key)

    def __contains__(self, key: str) -> bool:
        return key in self._held
