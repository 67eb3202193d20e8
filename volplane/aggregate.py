"""The aggregate repository: how every command handler loads, appends and retries.

    volumes = Repository(store, runner, VOLUMES)     # VOLUMES: Aggregate[VolumeState, VolumeEvent]
    async with volumes.locks.hold(vid):              # one operation per aggregate in this process
        state = await volumes.load(vid)              # newest known: our own writes, memory, Redis
        state = await volumes.append(vid, state, VolumeDeleting(volume_id=vid))

    # load → decide → append, again on the newest state when another writer won the race:
    info = await volumes.retry(vid, state, step)     # step(state) decides and appends; at most 3 runs

    # on start, finish every intent a crash left, by the phase it stopped in:
    await volumes.recover(await projection.in_flight(), {"creating": finish_create, ...}, phase=lambda s: s.phase)

The log is the truth and the read model follows it, so a state may be behind the log:
``append`` states the version it decided on (``Nats-Expected-Last-Subject-Sequence``),
and the log refuses it when another writer appended first (``ConcurrencyConflict``).
``reload`` then fetches the newest state: one read of the log for the aggregate's last
sequence, then the read model if its runner has applied that event, else the aggregate's
own events folded from the log (a runner may be seconds behind another process's writes). A deleted
aggregate has no key in the read model, so it comes back as its kind's tombstone, which
carries the version the next incarnation's first append must name.

After each append the new state is noted in the read model (``ProjectionRunner.note``),
so this process reads its own write at once, before the runner applies the event.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from volplane.errors import Aborted, ConcurrencyConflict
from volplane.events import Event
from volplane.eventstore import EventStore
from volplane.locks import KeyedLocks
from volplane.projection import ProjectionRunner

__all__ = ["TRIES", "Aggregate", "Repository"]

log = logging.getLogger(__name__)

# Appends that lose the race to another writer reload the aggregate and decide again, at
# most this many times in all before the caller is told to retry (ABORTED).
TRIES = 3


class Versioned(Protocol):
    @property
    def version(self) -> int:
        """The stream sequence of the aggregate's last event (0: none yet)."""
        ...


S = TypeVar("S", bound=Versioned)
E = TypeVar("E", bound=Event)
R = TypeVar("R")


def _whole(state: Any) -> Any:
    return state


def _at_version(state: Any, version: int) -> Any:
    # Every aggregate state here is a frozen pydantic model with a ``version`` field.
    return state.model_copy(update={"version": version})


@dataclass(frozen=True, slots=True)
class Aggregate(Generic[S, E]):
    """What the repository needs to know of one kind of aggregate, stated once.

    ``kind`` names it in messages and lock errors ("volume"); ``subject`` and ``key`` map
    an id to its subject in the log and its key in the read model; ``evolve`` is the
    domain's; ``tombstone(id, version)`` is the state of an aggregate the read model no
    longer holds while the log does; ``kept`` is what the read model keeps of a state
    (None: no key, as for a deleted volume); ``at_version(state, seq)`` is the same state
    at a later version (after quarantined events; by default a pydantic ``model_copy``).
    """

    kind: str
    subject: Callable[[str], str]
    key: Callable[[str], str]
    evolve: Callable[[S | None, E, int], S | None]
    tombstone: Callable[[str, int], S]
    kept: Callable[[S], S | None] = field(default=_whole)
    at_version: Callable[[S, int], S] = field(default=_at_version)


class Repository(Generic[S, E]):
    def __init__(self, store: EventStore, runner: ProjectionRunner[S], aggregate: Aggregate[S, E], *, tries: int = TRIES) -> None:
        self._store = store
        self._runner = runner
        self.aggregate = aggregate
        self._tries = tries
        # One operation per aggregate at a time in this process; across processes the
        # log's expected-version check decides.
        self.locks = KeyedLocks(aggregate.kind)

    # -- loading ------------------------------------------------------------

    def cached(self, aid: str) -> tuple[bool, S | None]:
        """(known, state) from this process's memory alone, without a round trip.

        known=False means "ask the read model": a command for an aggregate this process has
        not seen may assume it new and let the log's concurrency check say otherwise.
        """
        return self._runner.cached(self.aggregate.key(aid))

    async def load(self, aid: str) -> S | None:
        """The newest state this process knows: its own writes, its memory, else Redis."""
        return await self._runner.get(self.aggregate.key(aid))

    async def reload(self, aid: str) -> S | None:
        """The state as of the log's newest event for it (after losing a race, or to be
        sure): one read of the log, then the read model when its runner has already
        applied that event, else the aggregate's own events folded from the log (the runner
        may be seconds behind another process's writes). None when the log holds nothing
        of it; its tombstone when the read model would drop it."""
        key, subject = self.aggregate.key(aid), self.aggregate.subject(aid)
        last = await self._store.last(subject)
        if last is None:
            return None
        if self._runner.position >= last.seq:
            state = await self.load(aid)
            newest = last.seq
        else:
            folded, newest = await self._runner.folded(key, subject)
            state = None if folded is None else self.aggregate.kept(folded)
        if state is None:
            return self.aggregate.tombstone(aid, newest)
        if state.version < newest:
            # Every event of this aggregate up to ``newest`` is accounted for, so the ones
            # after the state's version were quarantined (volplane.quarantine): they are
            # skipped, but the log's concurrency check counts them, so the next append
            # names the subject's newest sequence instead of conflicting forever.
            log.warning("%s %s: events after %d up to %d were quarantined; deciding on the state before them", self.aggregate.kind, aid, state.version, newest)
            state = self.aggregate.at_version(state, newest)
        return state

    # -- appending ----------------------------------------------------------

    async def append(self, aid: str, state: S | None, event: E) -> S:
        """Append ``event`` after ``state`` (None: the aggregate's first event) and note the
        new state; ConcurrencyConflict when the log has moved past ``state``."""
        seq = await self._store.append(self.aggregate.subject(aid), event, expected=state.version if state is not None else 0)
        new = self.aggregate.evolve(state, event, seq)
        assert new is not None, f"{self.aggregate.kind} {aid}: {event.__class__.__name__} leaves no state"
        self._runner.note(self.aggregate.key(aid), self.aggregate.kept(new), seq)
        return new

    async def retry(self, aid: str, state: S | None, step: Callable[[S | None], Awaitable[R]], *, what: str = "") -> R:
        """``step(state)``: decide and append on ``state``; when the log refuses one of its
        appends (another writer was first), reload and run it again on the newest state, at
        most ``tries`` times in all, then Aborted ("{what} is contended, retry")."""
        for _ in range(self._tries):
            try:
                return await step(state)
            except ConcurrencyConflict:
                state = await self.reload(aid)
        raise Aborted(f"{what or f'{self.aggregate.kind} {aid}'} is contended, retry")

    # -- recovery -----------------------------------------------------------

    async def recover(self, ids: Iterable[str], finishers: Mapping[str, Callable[[S], Awaitable[object]]], phase: Callable[[S], str]) -> int:
        """Finish every intent a crash left without its result; returns how many aggregates.

        ``ids`` are the read model's in-flight ids; each is loaded under its lock and handed
        to the finisher of its phase (none: nothing to finish). One aggregate that cannot be
        finished is logged and left for the next command on it, so the service still starts.
        """
        todo = sorted(ids)
        for aid in todo:
            async with self.locks.hold(aid):
                state = await self.load(aid)
                finish = finishers.get(phase(state)) if state is not None else None
                if state is None or finish is None:
                    continue
                log.info("recovering %s %s from phase %s", self.aggregate.kind, aid, phase(state))
                try:
                    await finish(state)
                except Exception as exc:  # noqa: BLE001 - one aggregate must not keep the service from starting.
                    log.error("could not recover %s %s: %s", self.aggregate.kind, aid, getattr(exc, "message", None) or exc)
        return len(todo)
