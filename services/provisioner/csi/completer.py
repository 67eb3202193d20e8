"""Intents that wait for a node, tried again every few seconds until their node answers.

    await volumes_app.recover()   # on start: one pass of ``complete``
    completer = Completer((volumes_app.complete, snapshots_app.complete))
    await completer.start()       # then one pass every COMPLETE_PERIOD_S
    await completer.stop()

A pool's images are made and removed by the node that owns the pool. When that node is
down, the intent stays in the log without its result (a VolumeDeleting, say) and the call
answers UNAVAILABLE. The CO usually retries — Kubernetes' external-provisioner retries
DeleteVolume until it is OK — but need not (a claim deleted meanwhile, a standalone user
who gave up), so this loop finishes such intents itself once the node is back: no image is
leaked and no bytes stay promised. It is a resync, as the control loops have: level-based,
it looks only at the read model's in-flight set, which is empty in the common case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from volplane.aggregate import Repository, Versioned
from volplane.errors import ConcurrencyConflict, OperationPending, Unavailable, VolplaneError

__all__ = ["COMPLETE_PERIOD_S", "Completer", "complete"]

log = logging.getLogger(__name__)
S = TypeVar("S", bound=Versioned)

COMPLETE_PERIOD_S = 5.0


async def complete(
    repository: Repository[S, Any],
    ids: Iterable[str],
    finishers: Mapping[str, Callable[[S], Awaitable[object]]],
    phase: Callable[[S], str],
    pool: Callable[[S], str],
) -> int:
    """Run the finisher of each aggregate's phase, under its lock; returns how many still
    wait for a node. One that is busy (a command holds its lock) is left to that command.
    After one intent finds its pool's node away, the pool's others wait for the next pass
    without asking (each would cost the bus's wait for an empty queue group)."""
    waiting = 0
    away: set[str] = set()
    for aid in sorted(ids):
        try:
            async with repository.locks.hold(aid):
                state = await repository.load(aid)
                finish = finishers.get(phase(state)) if state is not None else None
                if state is None or finish is None:
                    continue
                if pool(state) in away:
                    waiting += 1
                    continue
                try:
                    await finish(state)
                except Unavailable:
                    away.add(pool(state))
                    raise
                log.info("finished %s %s (%s)", repository.aggregate.kind, aid, phase(state))
        except Unavailable as exc:
            waiting += 1
            log.debug("%s %s waits for its node: %s", repository.aggregate.kind, aid, exc.message)
        except (OperationPending, ConcurrencyConflict) as exc:
            # A command holds it, or another replica finished it first: theirs to finish.
            log.debug("%s %s not finished now: %s", repository.aggregate.kind, aid, exc.message)
        except VolplaneError as exc:
            # Failed for good, and recorded so by the finisher.
            log.warning("could not finish %s %s: %s", repository.aggregate.kind, aid, exc.message)
    if away:
        log.info("%d intents wait for the nodes of pool(s) %s", waiting, ", ".join(sorted(away)))
    return waiting


class Completer:
    def __init__(self, passes: Sequence[Callable[[], Awaitable[int]]], period: float = COMPLETE_PERIOD_S) -> None:
        self._passes = passes
        self._period = period
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            for run in self._passes:
                try:
                    await run()
                except Exception as exc:  # noqa: BLE001 - Redis or the log away: the next pass tries again.
                    log.warning("completing intents that wait for a node failed: %s", getattr(exc, "message", None) or exc)
