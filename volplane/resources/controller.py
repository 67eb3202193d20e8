"""The level-based loop every controller runs: a queue of keys, one ``sync(key)``.

    loop = Loop("pv-controller", sync, workers=4, resync=30.0, keys=all_keys)
    informer.on_change(lambda kind, old, new: loop.add(key_of(new or old)))
    await loop.start()

An event only enqueues a key; ``sync`` compares desired with actual and converges, so a
missed or repeated event changes nothing. A key is never synced by two workers at once;
a key added while it is being synced is synced again afterwards. A failing sync is
retried with per-key exponential backoff (50 ms doubling to 30 s); a lost write race
(ConcurrencyConflict) is retried at once. Every ``resync`` seconds all keys are queued
again, which is what finishes work a crash interrupted.

A key added inside a trace (an informer handler running in the trace of the event that
woke it, or another sync) is synced in a span ``<loop> sync`` of that trace, the newest
such trace winning; what the sync writes or calls carries the trace on. A key queued by
a resync alone is synced outside any trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from volplane.errors import ConcurrencyConflict, VolplaneError
from volplane.telemetry import counter, gauge, traced_context, tracer

__all__ = ["Loop", "Retry"]

log = logging.getLogger(__name__)

QUEUE_DEPTH = gauge("volplane_reconcile_queue_depth", "Keys waiting to be synced.", ("controller",))
SYNCS = counter("volplane_reconcile_total", "Syncs by outcome.", ("controller", "result"))

_BASE_DELAY = 0.05
_MAX_DELAY = 30.0


class Retry(Exception):
    """Raised by a sync that is waiting for something else: try the key again after ``after`` s."""

    def __init__(self, after: float = 1.0, why: str = "") -> None:
        super().__init__(why)
        self.after = after


class Loop:
    def __init__(
        self,
        name: str,
        sync: Callable[[str], Awaitable[None]],
        *,
        workers: int = 4,
        resync: float = 30.0,
        keys: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.name = name
        self._sync = sync
        self._workers = workers
        self._resync = resync
        self._keys = keys
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # The trace each waiting key's sync continues (the newest that queued it).
        self._traces: dict[str, otel_context.Context] = {}

    def add(self, key: str | None) -> None:
        if key is None:
            return
        context = traced_context()
        if context is not None:
            self._traces[key] = context
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.put_nowait(key)
        QUEUE_DEPTH.labels(self.name).set(len(self._dirty))

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds; one timer per key (the earliest wins), so
        events during a key's backoff do not pile up retries."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None and pending.when() <= when:
            return
        if pending is not None:
            pending.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    @property
    def depth(self) -> int:
        return len(self._dirty)

    async def start(self) -> None:
        for i in range(self._workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"{self.name}-{i}"))
        if self._keys is not None:
            for key in self._keys():
                self.add(key)
            self._tasks.append(asyncio.create_task(self._resync_forever(), name=f"{self.name}-resync"))

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _resync_forever(self) -> None:
        keys = self._keys
        assert keys is not None  # started only when there is a way to list the keys
        while True:
            await asyncio.sleep(self._resync)
            for key in keys():
                self.add(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._dirty.discard(key)
            self._processing.add(key)
            QUEUE_DEPTH.labels(self.name).set(len(self._dirty))
            with self._span(key) as span:
                try:
                    await self._sync(key)
                except asyncio.CancelledError:
                    raise
                except Retry as exc:
                    SYNCS.labels(self.name, "waiting").inc()
                    span.set_attribute("volplane.retry_after", exc.after)
                    self._done(key)
                    self.add_after(key, exc.after)
                    continue
                except ConcurrencyConflict:
                    SYNCS.labels(self.name, "conflict").inc()
                    self._done(key)
                    self.add(key)
                    continue
                except Exception as exc:  # The loop retries every failure with backoff.
                    failures = self._failures.get(key, 0) + 1
                    self._failures[key] = failures
                    delay = min(_BASE_DELAY * 2 ** (failures - 1), _MAX_DELAY)
                    SYNCS.labels(self.name, "error").inc()
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:256]))
                    if isinstance(exc, VolplaneError):
                        log.warning("%s: sync %s failed (%s: %s); retry in %.2fs", self.name, key, type(exc).__name__, exc.message, delay)
                    else:
                        log.exception("%s: sync %s failed; retry in %.2fs", self.name, key, delay)
                    self._done(key)
                    self.add_after(key, delay)
                    continue
                else:
                    SYNCS.labels(self.name, "ok").inc()
                    self._failures.pop(key, None)
            self._done(key)

    @contextmanager
    def _span(self, key: str) -> Iterator[trace.Span]:
        """The sync's span in the trace that queued ``key``; none for a key no trace queued.
        Retries (``add_after``, ``add``) are queued inside it, so they stay in that trace."""
        parent = self._traces.pop(key, None)
        if parent is None:
            yield trace.INVALID_SPAN
            return
        attributes = {"volplane.controller": self.name, "volplane.key": key}
        with tracer().start_as_current_span(f"{self.name} sync", context=parent, attributes=attributes, record_exception=False, set_status_on_exception=False) as span:
            yield span

    def _done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.put_nowait(key)
