"""Redis read models, fed from the event log.

A ``Projection`` says which Redis key an event changes and how (a pure ``evolve``
over decoded state); a ``ProjectionRunner`` follows the log and writes each event's
effect together with the projection's position in one Lua call, which skips events
at or below the stored position. So an event is applied once even when two replicas
run the same projection or a runner restarts from an older position, and dropping
every ``vp:`` key and replaying the log rebuilds the same bytes.

    volumes = VolumesProjection()
    runner = ProjectionRunner(redis, store, volumes)
    await runner.start()
    seq = await store.append(...)
    runner.note(key, new_state, seq)    # this process reads its own write at once
    page = await volumes.page(after="", limit=100)   # a typed query, through the runner

Commands do not wait for Redis: a handler notes the state it just appended, and
``get`` returns that until the runner has applied the event (``volplane.aggregate``
does this for every command). Queries that read Redis directly (lists, totals) first
wait until the runner has passed every event this process appended, so a caller always
sees its own writes.

Queries live on the projection, which knows its keys: a runner binds itself to the
projection it follows (``ProjectionBase.bind``), and the projection's queries read
through the runner's read methods (``members``, ``count``, ``ids_after``, ``states``).
So services hold a typed projection and never a Redis client or a key.

An event a projection cannot decode or apply (``key_for``, ``evolve``, ``dump`` or ``ops``
raises) is quarantined (``volplane.quarantine``): recorded under ``vp:quarantine:<name>``
in the same Lua call that moves the position past it, logged once and counted. It is
never retried, so one bad event cannot hold a read model, or its service, back.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
import redis.asyncio as aioredis
import redis.exceptions
from pydantic import BaseModel

from volplane.clients import check_redis, connect_redis
from volplane.config import Config
from volplane.errors import Unavailable
from volplane.eventstore import EventStore, Record
from volplane.quarantine import Quarantined, quarantined

__all__ = ["PREFIX", "Projection", "ProjectionBase", "ProjectionRunner", "ReadModels", "canonical_dump", "position_key", "rebuild"]

log = logging.getLogger(__name__)

PREFIX = "vp:"
S = TypeVar("S")
Op = Sequence[str | bytes | int]

# ARGV: n_records, then per record: seq, n_ops, then per op: n_args, args...
_APPLY = """
local pos = tonumber(redis.call('GET', KEYS[1]) or '0')
if pos < tonumber(ARGV[1]) then return -1 end
local i = 2
local applied = 0
local nrec = tonumber(ARGV[i]); i = i + 1
for r = 1, nrec do
  local seq = tonumber(ARGV[i]); local nops = tonumber(ARGV[i + 1]); i = i + 2
  for o = 1, nops do
    local nargs = tonumber(ARGV[i]); i = i + 1
    if seq > pos then redis.call(unpack(ARGV, i, i + nargs - 1)) end
    i = i + nargs
  end
  if seq > pos then pos = seq; applied = applied + 1 end
end
redis.call('SET', KEYS[1], pos)
return applied
"""

# ARGV[1] is the writer's own position. A stored position behind it means Redis lost what
# this writer wrote (flushed, or dropped by ``make rebuild`` while the services run): a
# write on top would record a position over keys that are gone, so the script refuses
# (-1) and the runner starts over from what Redis holds.
_BATCH = 256


class _RedisBehind(Exception):
    """Redis holds less of this projection than the runner wrote: it was flushed or rebuilt."""


def position_key(name: str) -> str:
    return f"{PREFIX}pos:{name}"


def _text(value: bytes | str) -> str:
    # The clients here return bytes; redis-py's types also allow str (decode_responses).
    return value.decode() if isinstance(value, bytes) else value


class Projection(Protocol[S]):
    """One read model. ``evolve`` is pure; ``ops`` adds index writes beside the state."""

    name: str
    filter_subject: str

    def key_for(self, record: Record) -> str | None: ...

    def evolve(self, state: S | None, record: Record) -> S | None: ...

    def dump(self, state: S) -> bytes: ...

    def load(self, raw: bytes) -> S: ...

    def ops(self, key: str, old: S | None, new: S | None) -> list[Op]: ...

    # A Redis hash of running totals (or None). The runner reads it together with its
    # position at start and hands it to ``restore``; from then on the projection keeps
    # the totals in memory through ``observe``, which the runner calls for every event
    # after that position once its write has succeeded (``ops`` stays pure: a batch that
    # fails is computed again), so services can read them without a round trip.
    totals_key: str | None

    def restore(self, totals: dict[bytes, bytes]) -> None: ...

    def observe(self, old: S | None, new: S | None) -> None: ...

    # The runner that follows this projection hands itself over here, for the queries.
    def bind(self, runner: ProjectionRunner[S]) -> None: ...


class ProjectionBase(Generic[S]):
    """What most projections share: no totals, and the runner their queries read through.

        class VolumesProjection(ProjectionBase[VolumeState]):
            async def in_flight(self) -> list[str]:
                return await self.runner.members(INFLIGHT)
    """

    name: str
    totals_key: str | None = None
    _runner: ProjectionRunner[S] | None = None

    def bind(self, runner: ProjectionRunner[S]) -> None:
        self._runner = runner

    @property
    def runner(self) -> ProjectionRunner[S]:
        if self._runner is None:
            raise RuntimeError(f"projection {self.name} is queried before a runner follows it")
        return self._runner

    @property
    def position(self) -> int:
        """The stream sequence of the last event the read model holds."""
        return self.runner.position

    async def settled(self) -> None:
        """Wait until Redis holds every event this process has appended."""
        await self.runner.settled()

    def restore(self, totals: dict[bytes, bytes]) -> None:
        return None

    def observe(self, old: S | None, new: S | None) -> None:
        return None

    def skipped(self, state: S, record: Record) -> S:
        """The state after an event this projection quarantined: unchanged, but at the
        event's stream sequence (a pydantic state's ``version``), which the log's concurrency
        check counts. A projection whose states carry their version elsewhere says so here."""
        if isinstance(state, BaseModel) and "version" in type(state).model_fields:
            return state.model_copy(update={"version": record.seq})
        return state


class ProjectionRunner(Generic[S]):
    def __init__(
        self,
        redis: aioredis.Redis,
        store: EventStore,
        projection: Projection[S],
        *,
        cache_size: int = 200_000,
    ) -> None:
        self._redis = redis
        self._store = store
        self.projection = projection
        self._script = redis.register_script(_APPLY)
        self._pos_key = position_key(projection.name)
        self.position = 0
        self._cache: OrderedDict[str, S | None] = OrderedDict()
        self._cache_size = cache_size
        # States this process appended that the runner has not applied yet: key → (seq, state).
        self._overlay: dict[str, tuple[int, S | None]] = {}
        self.written = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tick = 0
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._queue: asyncio.Queue[Record] | None = None
        self._log_pending = 0
        projection.bind(self)

    async def start(self) -> None:
        """Catch up with the log, then keep following it in the background."""
        await self._load_position()
        target = await self._store.last_seq()
        self._task = asyncio.create_task(self._run(), name=f"projection:{self.projection.name}")
        # Handlers may rely on the projection as soon as start() returns.
        await self._ready.wait()
        await self.wait_for_log(target)

    async def _load_position(self) -> None:
        """Take up where Redis is: its position, and the totals that go with it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._pos_key)
            if self.projection.totals_key:
                pipe.hgetall(self.projection.totals_key)
            raw, *totals = await pipe.execute()
        self.position = int(raw or 0)
        if totals:
            self.projection.restore(totals[0])

    async def rebuild_if_wiped(self) -> bool:
        """Start over from the beginning of the log if Redis lost this projection.

        Positions only grow, so a stored position behind the one this runner reached means
        the database was flushed or replaced. Then the runner forgets what it knew and
        replays the whole log; queries wait meanwhile (they settle on this process's
        writes, which the replay passes again). Returns whether it had to.
        """
        # The position before the read: the runner may apply a batch while the GET is on
        # its way, and its own write is no loss (compared after, it looked like one, and a
        # healthy read model was replayed from the start).
        reached = self.position
        raw = await self._retry(lambda: self._redis.get(self._pos_key))
        if int(raw or 0) >= reached:
            return False
        log.warning("projection %s: Redis lost it (at %s, was %d); replaying the log", self.projection.name, raw, self.position)
        await self.stop()
        self._cache.clear()
        self._overlay.clear()
        self._ready = asyncio.Event()
        await self.start()
        return True

    async def stop(self) -> None:
        # Cancelled again until it ends: a client library that swallows one cancellation
        # (seen in a Redis call) must not leave the runner, and its caller, waiting forever.
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)

    @property
    def lag(self) -> int:
        """Events on this projection's subjects not applied yet: received and queued, or
        still in the log (as the log said when it delivered the last one)."""
        return (self._queue.qsize() if self._queue else 0) + self._log_pending

    def note(self, key: str, state: S | None, seq: int) -> None:
        """Remember the state this process just appended at ``seq``, ahead of the runner."""
        if seq > self.position:
            self._overlay[key] = (seq, state)
            self.written = max(self.written, seq)

    async def folded(self, key: str, subject: str) -> tuple[S | None, int]:
        """(the state at ``key`` folded from ``subject``'s own events in the log, the newest
        one's sequence; 0 when there is none): what Redis will hold once this runner has
        applied them, without waiting for it — a runner can be seconds behind a busy log,
        and an aggregate has few events. Noted ahead of the runner, as our own writes are."""
        state: S | None = None
        newest = 0
        for record in await self._store.read(subject):
            state = self._evolved_or_kept(state, record)
            newest = record.seq
        if newest:
            self.note(key, state, newest)
        return state, newest

    async def settled(self) -> None:
        """Wait until Redis holds every event this process has appended."""
        await self.wait_for(self.written)

    def cached(self, key: str) -> tuple[bool, S | None]:
        """(known, state) from memory alone; known=False means "ask Redis or the log"."""
        if key in self._overlay:
            return True, self._overlay[key][1]
        if key in self._cache:
            return True, self._cache[key]
        return False, None

    async def get(self, key: str) -> S | None:
        """The current state at ``key``: from memory, else from Redis."""
        known, state = self.cached(key)
        if known:
            return state
        raw = await self._redis.get(key)
        return self.projection.load(raw) if isinstance(raw, bytes) else None

    # -- reads for the projection's queries (after ``settled``: Redis as of our own writes) --

    async def members(self, key: str) -> list[str]:
        """The members of a Redis set, sorted."""
        return sorted(_text(m) for m in await self._redis.smembers(key))

    async def count(self, key: str) -> int:
        """How many members a Redis set has."""
        return int(await self._redis.scard(key))

    async def ids_after(self, key: str, after: str = "", limit: int = 0) -> list[str]:
        """Members of a sorted set of equal scores, in order, after ``after`` (""): the
        first ``limit`` of them (0: all)."""
        start = f"({after}" if after else "-"
        if limit:
            ids = await self._redis.zrangebylex(key, start, "+", start=0, num=limit)
        else:
            ids = await self._redis.zrangebylex(key, start, "+")
        return [_text(i) for i in ids]

    async def states(self, keys: Sequence[str]) -> list[S | None]:
        """The states at ``keys`` as Redis holds them, in order (None where absent)."""
        if not keys:
            return []
        raws = await self._redis.mget(list(keys))
        return [self.projection.load(raw) if isinstance(raw, bytes) else None for raw in raws]

    async def quarantined(self, reader: str | None = None) -> list[Quarantined]:
        """The events every projection in this Redis (or only ``reader``) quarantined."""
        return await quarantined(self._redis, reader)

    async def catch_up(self, timeout: float = 10.0) -> None:
        """Wait until every event in the log now is applied (something may have just been recorded)."""
        await self.wait_for_log(await self._store.last_seq(), timeout=timeout)

    async def wait_for(self, seq: int, timeout: float = 30.0) -> None:
        """Return once the event at stream sequence ``seq`` is in Redis."""
        if self.position >= seq:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tick += 1
        heapq.heappush(self._waiters, (seq, self._tick, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise Unavailable(f"projection {self.projection.name} is behind the log (at {self.position}, want {seq})") from exc

    async def wait_for_log(self, target: int, timeout: float = 120.0) -> None:
        """Wait until every event this projection handles up to ``target`` is applied.

        The runner only sees its own subjects, so the stream's last sequence may never
        be reached exactly; the stream is asked how many of ours are still pending.
        ``timeout`` bounds a stall, not the whole wait: a projection that is still moving
        through a long backlog (a service down while a million events were written) is
        waited for; one that does not move for ``timeout`` seconds is an error.
        """
        loop = asyncio.get_running_loop()
        moved, at = loop.time(), self.position
        while self.position < target and not await self._nothing_pending(target):
            if self.position != at:
                moved, at = loop.time(), self.position
            elif loop.time() - moved > timeout:
                raise Unavailable(f"projection {self.projection.name} did not catch up to {target} (stuck at {at} for {timeout:.0f}s)")
            await asyncio.sleep(0.02)

    async def _nothing_pending(self, target: int) -> bool:
        nxt = await self._store.next_seq(self.projection.filter_subject, self.position)
        return nxt is None or nxt > target

    async def _run(self) -> None:
        """Follow the log for good: a failure (Redis, NATS) is logged and the runner starts
        again from its last applied position, never skipping an event. An event the
        projection cannot decode or apply is no such failure: ``_apply`` quarantines it."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except _RedisBehind as exc:
                # Its memory is ahead of Redis now; what this process appended (the overlay)
                # stays true and is dropped as the runner passes it again.
                log.warning("projection %s: %s; replaying the log from there", self.projection.name, exc)
                self._cache.clear()
                await self._retry(self._load_position)
            except (Unavailable, nats.errors.Error) as exc:
                # The log went away (a restart, or this process shutting down): no bug here.
                if not self._store.closing:
                    log.warning("projection %s lost the log at %d (%s); following it again", self.projection.name, self.position, exc)
                await asyncio.sleep(0.5)
            except Exception:  # A projection must outlive any one failure.
                log.exception("projection %s failed at %d; following the log again", self.projection.name, self.position)
                await asyncio.sleep(0.5)

    async def _follow(self) -> None:
        queue: asyncio.Queue[Record] = asyncio.Queue()
        self._queue = queue

        async def feed() -> None:
            async for record in self._store.follow(self.projection.filter_subject, self.position):
                self._log_pending = record.pending
                queue.put_nowait(record)

        feeder = asyncio.create_task(feed())
        self._ready.set()
        try:
            while True:
                if feeder.done():
                    feeder.result()  # Raise what stopped the feed, so that we start over.
                    raise Unavailable("the log's feed ended")
                get = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait({get, feeder}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not get.done():
                        get.cancel()
                if not get.done() or get.cancelled():
                    continue  # the feed ended first: the check at the top raises why
                batch = [get.result()]
                while len(batch) < _BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                await self._apply(batch)
        finally:
            feeder.cancel()

    async def _apply(self, batch: list[Record]) -> None:
        batch = [r for r in batch if r.seq > self.position]
        if not batch:
            return
        states = await self._states_before(batch)
        argv: list[Any] = [self.position, len(batch)]
        changes: list[tuple[str, S | None, S | None, int]] = []
        poisoned: list[Quarantined] = []
        for record in batch:
            ops: list[Op] = []
            failure: Exception | None = None
            try:
                key = self.projection.key_for(record)
            except Exception as exc:  # noqa: BLE001 - a subject that names no key: quarantined below
                key, failure = None, exc
            if key is not None:
                old = states.get(key)
                new, failure = self._fold(old, record)
                try:
                    ops.append(("SET", key, self.projection.dump(new)) if new is not None else ("DEL", key))
                    ops.extend(self.projection.ops(key, old, new))
                except Exception as exc:  # noqa: BLE001 - a state this projection cannot write: the event is quarantined
                    new, failure, ops = old, exc, []
                states[key] = new
                changes.append((key, old, new, record.seq))
            if failure is not None:
                # Recorded with the position, in the same call: a replay writes it again
                # identically, and the runner moves past the event instead of failing on it forever.
                poison = Quarantined.of(self.projection.name, record, failure)
                poisoned.append(poison)
                ops.append(poison.op())
            argv += [record.seq, len(ops)]
            for op in ops:
                argv.append(len(op))
                argv.extend(op)
        if await self._retry(lambda: self._script(keys=[self._pos_key], args=argv)) == -1:
            raise _RedisBehind(f"Redis holds less than the runner wrote (it was at {self.position}): flushed, or dropped by a rebuild")
        # Only now, with the write done, does the runner's memory move on.
        observe = getattr(self.projection, "observe", None)
        for key, old, new, seq in changes:
            self._remember(key, new)
            if observe is not None:
                observe(old, new)
            noted = self._overlay.get(key)
            if noted is not None and noted[0] <= seq:
                del self._overlay[key]
        for poison in poisoned:
            poison.report()
        self.position = batch[-1].seq
        while self._waiters and self._waiters[0][0] <= self.position:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    async def _states_before(self, batch: list[Record]) -> dict[str, S | None]:
        """Each key's state as of this runner's position: from memory, else from Redis —
        unless another runner has taken Redis past this one, in which case the key is
        rebuilt from its own events up to this runner's position."""
        subject_of = {k: r.subject for r in batch if (k := self._key_or_none(r)) is not None}
        states: dict[str, S | None] = {k: self._cache[k] for k in subject_of if k in self._cache}
        missing = sorted(k for k in subject_of if k not in states)
        if not missing:
            return states
        raws = await self._retry(lambda: self._redis.mget([self._pos_key, *missing]))
        if int(raws[0] or 0) <= self.position:
            for key, raw in zip(missing, raws[1:], strict=True):
                states[key] = None if raw is None else self.projection.load(raw)
            return states
        for key in missing:
            state: S | None = None
            for record in await self._store.read(subject_of[key]):
                if record.seq <= self.position:
                    state = self._evolved_or_kept(state, record)
            states[key] = state
        return states

    def _key_or_none(self, record: Record) -> str | None:
        """The record's key, or None for an event whose subject names none (``_apply``
        quarantines it)."""
        try:
            return self.projection.key_for(record)
        except Exception:  # noqa: BLE001 - quarantined where it is applied
            return None

    def _evolved_or_kept(self, state: S | None, record: Record) -> S | None:
        """``evolve``, or for an event that cannot be applied what ``_apply`` made of it when
        it quarantined it: a fold from the log then ends in the state the read model holds."""
        return self._fold(state, record)[0]

    def _fold(self, state: S | None, record: Record) -> tuple[S | None, Exception | None]:
        """(the state after ``record``, None) — or, for an event the projection cannot decode
        or apply, (the state unchanged but at the event's version, why).

        A quarantined event still takes a place on its aggregate's subject, and the log's
        concurrency check counts it: the state moves to that version, so that the next
        append names it instead of conflicting forever (``ProjectionBase.skipped``)."""
        try:
            return self.projection.evolve(state, record), None
        except Exception as exc:  # noqa: BLE001 - any event this projection cannot use is quarantined, not retried.
            skipped = getattr(self.projection, "skipped", None)
            if state is None or skipped is None:
                return state, exc
            try:
                return skipped(state, record), exc
            except Exception:  # noqa: BLE001 - a state that cannot move keeps its version
                return state, exc

    async def _retry(self, call: Any) -> Any:
        """Redis is the read model, not the truth: wait for it, never skip an event."""
        while True:
            try:
                return await call()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                log.warning("redis unavailable, projection %s waits", self.projection.name)
                await asyncio.sleep(0.5)

    def _remember(self, key: str, state: S | None) -> None:
        """Keep ``key``'s state as the read model now holds it, the least recently
        applied dropped beyond ``cache_size``. A key the read model no longer holds (a
        deleted volume) is forgotten rather than kept as None: Redis answers for it just
        as well, and a process that creates and deletes all day would otherwise hold an
        entry for every aggregate it ever saw, until the bound (issue 15: the soak's
        provisioner grew by one per CreateVolume+DeleteVolume pair)."""
        if state is None:
            self._cache.pop(key, None)
            return
        self._cache[key] = state
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


# Every key under a prefix, deleted in one step: a service runner that writes between the
# pages of a client-side scan would keep a position whose keys were then deleted.
_DROP = """
local n = 0
local cursor = "0"
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  for _, k in ipairs(page[2]) do n = n + redis.call('DEL', k) end
until cursor == "0"
return n
"""


async def rebuild(redis: aioredis.Redis, store: EventStore, projections: Sequence[Projection[Any]]) -> int:
    """Drop every projection key (at once) and replay the whole log; returns the keys deleted."""
    deleted = int(await redis.register_script(_DROP)(args=[f"{PREFIX}*"]))
    for projection in projections:
        runner = ProjectionRunner(redis, store, projection)
        await runner.start()
        await runner.stop()
    return deleted


async def canonical_dump(redis: aioredis.Redis) -> dict[str, Any]:
    """Every projection key and its value in a comparable form (sets and hashes sorted)."""
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=f"{PREFIX}*", count=1000):
        key = _text(raw)
        kind = _text(await redis.type(raw))
        if kind == "string":
            out[key] = await redis.get(raw)
        elif kind == "hash":
            out[key] = sorted((await redis.hgetall(raw)).items())
        elif kind == "set":
            out[key] = sorted(await redis.smembers(raw))
        elif kind == "zset":
            out[key] = await redis.zrange(raw, 0, -1, withscores=True)
        else:
            out[key] = (kind, "unsupported")
    return dict(sorted(out.items()))


class ReadModels:
    """Every projection's keys in one Redis, as maintenance sees them (``make rebuild``).

        models = await ReadModels.open(cfg)
        before = await models.dump()
        deleted = await models.rebuild(store, projections)
        skipped = await models.quarantined()      # events no projection could apply
        await models.close()
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    @classmethod
    async def open(cls, cfg: Config) -> ReadModels:
        """Connected to the configured Redis, or Unavailable with a readable message."""
        redis = connect_redis(cfg)
        await check_redis(redis, cfg)
        return cls(redis)

    async def rebuild(self, store: EventStore, projections: Sequence[Projection[Any]]) -> int:
        """Drop every projection key and replay the whole log; returns the keys deleted."""
        return await rebuild(self._redis, store, projections)

    async def dump(self) -> dict[str, Any]:
        """Every projection key and its value in a comparable form."""
        return await canonical_dump(self._redis)

    async def quarantined(self, reader: str | None = None) -> list[Quarantined]:
        """The events the projections skipped because they could not decode or apply them
        (``volplane.quarantine``), by reader and sequence: what ``make rebuild --check`` shows."""
        return await quarantined(self._redis, reader)

    async def close(self) -> None:
        await self._redis.aclose()
