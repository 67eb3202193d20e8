"""The event log: an append-only JetStream stream with one subject per aggregate.

``append`` is optimistic: it states the sequence of the aggregate's last event it has
seen (``Nats-Expected-Last-Subject-Sequence``), so two writers racing on one aggregate
cannot both win; and it names the message by content and position (``Nats-Msg-Id``),
so a retried append of the same event is acknowledged once, not written twice.

    store = EventStore(js)
    seq = await store.append(subjects.volume(vid), event, expected=state.version)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from volplane import codec, subjects
from volplane.deadlines import time_left
from volplane.errors import ConcurrencyConflict, Unavailable
from volplane.events import Event
from volplane.telemetry import SpanKind, carried, hot_span, inject

__all__ = ["EventStore", "Record"]

# Seconds within which a retried append (same Nats-Msg-Id) is stored once.
_DUPLICATE_WINDOW = 120.0
# JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence check.
_WRONG_LAST_SEQUENCE = 10071

# Failing fast on a clustered log (docs/decisions.md). One JetStream request (an append,
# a read) waits API_ATTEMPT seconds for its answer: on a healthy cluster answers take
# milliseconds, and one that went down with a member never comes. It is then sent again —
# an append with the same Nats-Msg-Id, so the log stores it once — until the caller's
# deadline (volplane.deadlines) is DEADLINE_MARGIN away, or for RETRY_BUDGET seconds when
# no caller waits (a control loop, which has its own backoff). What no retry can cure
# (a minority partition: no stream leader) then answers Unavailable in time.
API_ATTEMPT = 2.0
RETRY_BUDGET = 10.0
DEADLINE_MARGIN = 0.5
_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8)
# A feed's consumer sends a heartbeat every FEED_HEARTBEAT seconds while idle; nats-py
# recreates an ordered consumer silent for two of them (its default, 5 s, waited 10–20 s).
FEED_HEARTBEAT = 1.0
# JetStream errors that pass with a leader election or a member's return: "JetStream
# cluster not available" / "system temporarily unavailable", "insufficient resources",
# "no suitable peers", "stream offline", "not current", "duplicate message id is in
# process" (our own earlier try, still being replicated), and every 503.
_TRANSIENT = frozenset({10005, 10006, 10008, 10009, 10023, 10074, 10118, 10158})

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transient(exc: nats.js.errors.APIError) -> bool:
    return exc.code == 503 or exc.err_code in _TRANSIENT


def _budget() -> float:
    """How long the current call may keep retrying."""
    left = time_left()
    return RETRY_BUDGET if left is None else max(0.0, left - DEADLINE_MARGIN)


@dataclass(frozen=True, slots=True)
class Record:
    """One stored event, still encoded: projections decode only what they handle."""

    seq: int
    subject: str
    type: str
    data: bytes
    pending: int = 0  # events on the follower's filter still to come after this one
    # The trace context the event was appended in (traceparent, tracestate): a control
    # loop woken by it carries on that trace (volplane.resources.informer).
    trace: tuple[tuple[str, str], ...] = ()


class EventStore:
    def __init__(self, js: JetStreamContext, stream: str = subjects.STREAM) -> None:
        # The caller's context administers the stream (``ensure_stream``: creating an R3
        # stream may take seconds); appends and reads go through one that gives up on a
        # request after API_ATTEMPT seconds, and are retried (``_retrying``).
        self._admin = js
        self._js = JetStreamContext(js._nc, prefix=js._prefix, timeout=API_ATTEMPT)
        self._stream = stream
        # Whether single events are read by direct get. Any replica answers one, and on a
        # replicated stream a replica may be behind: a read right after another process's
        # append could miss it (a DeleteVolume answered OK for a volume just created). So
        # reads go to the stream's leader (STREAM.MSG.GET) unless the stream has one
        # replica, which is its leader; require_stream and ensure_stream learn which.
        self._direct = False

    async def ensure_stream(self, *, replicas: int = 1) -> None:
        """Create the stream if it is missing, or bring the settings volplane relies on
        (its subjects, direct gets, the duplicate window) up to date on an existing one —
        other settings and the events are left as they are.

        An administrator's step (the launcher as ``admin``; an install job in
        Kubernetes): no service's credentials allow creating or changing the stream, so
        that no compromised service can reconfigure, purge or delete the log.
        """
        try:
            info = await self._admin.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            self._direct = replicas <= 1
            await self._admin.add_stream(
                name=self._stream,
                subjects=[subjects.EVENTS],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                duplicate_window=_DUPLICATE_WINDOW,
                num_replicas=replicas,
                allow_direct=True,
            )
            return
        config = info.config
        self._direct = (config.num_replicas or 1) <= 1
        if config.subjects != [subjects.EVENTS] or not config.allow_direct or config.duplicate_window != _DUPLICATE_WINDOW:
            await self._admin.update_stream(config.evolve(subjects=[subjects.EVENTS], allow_direct=True, duplicate_window=_DUPLICATE_WINDOW))

    async def require_stream(self) -> None:
        """Raise NotFoundError (nats.js.errors) unless the stream exists: a service's check,
        with nothing but the right to read the stream's state."""
        info = await self._js.stream_info(self._stream)
        self._direct = (info.config.num_replicas or 1) <= 1

    async def append(self, subject: str, event: Event, *, expected: int | None) -> int:
        """Append one event after the aggregate's event number ``expected`` (0: none yet).

        Returns the new event's stream sequence. Raises ConcurrencyConflict when
        another writer appended first. ``expected=None`` appends without the check (a
        timeline line that races with nothing); an identical one within the stream's
        duplicate window is then stored once.
        """
        name: str = event.type  # type: ignore[attr-defined]  # every concrete event declares its literal type
        body = event.model_dump()
        payload = codec.pack(body)
        # The id covers the position and the content without its timestamp, so only
        # a true retry of this very append is deduplicated.
        body.pop("at", None)
        digest = hashlib.blake2b(codec.pack(body), digest_size=12).hexdigest()
        headers = {
            subjects.MSG_ID: f"{subject}:{expected}:{digest}",
            subjects.EVENT_TYPE: name,
        }
        if expected is not None:
            headers[subjects.EXPECTED_LAST_SUBJECT_SEQ] = str(expected)
        # Span names carry the aggregate kind, not its id, to keep their cardinality low.
        kind = ".".join(subject.split(".")[:3])
        attributes = {"messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation.type": "publish", "volplane.event": name}
        with hot_span(f"{kind} publish", kind=SpanKind.PRODUCER, attributes=attributes) as s:
            if s.is_recording():
                inject(headers)
            ack = await self._publish(subject, payload, headers, expected)
            s.set_attribute("volplane.stream_seq", ack)
        return ack

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str], expected: int | None) -> int:
        """Publish until acknowledged. A lost acknowledgement (its member died, the stream
        elected a new leader) is retried with the same Nats-Msg-Id: the log stores the event
        once and acknowledges the retry with the first one's sequence. Should the retry meet
        the expected-sequence check first, the aggregate's newest event is ours if it carries
        our id — then that was our append, not a rival's."""
        loop = asyncio.get_running_loop()
        budget = _budget()
        give_up = loop.time() + budget
        for tries in range(1, 1_000_000):
            try:
                # A try never outlasts the budget: the caller must hear back in time.
                wait = min(API_ATTEMPT, max(0.05, give_up - loop.time()))
                ack = await self._js.publish(subject, payload, timeout=wait, headers=headers, stream=self._stream)
                return ack.seq
            except nats.js.errors.APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    if tries > 1 and (mine := await self._stored_as(subject, headers[subjects.MSG_ID])) is not None:
                        return mine
                    raise ConcurrencyConflict(f"{subject} moved past {expected}") from exc
                if not _transient(exc):
                    raise Unavailable(f"event log refused append to {subject}: {exc}") from exc
                why: Exception = exc
            except nats.errors.ConnectionClosedError as exc:
                raise Unavailable(f"event log did not acknowledge append to {subject}: the connection is closed") from exc
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as exc:
                why = exc
            pause = _PAUSES[min(tries, len(_PAUSES)) - 1]
            if loop.time() + pause >= give_up:
                raise Unavailable(f"event log did not acknowledge append to {subject} within {budget:.1f}s ({tries} tries: {_describe(why)})") from why
            if tries == 1:
                log.info("append to %s not acknowledged (%s); retrying with the same message id", subject, _describe(why))
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _stored_as(self, subject: str, msg_id: str) -> int | None:
        """The sequence of the aggregate's newest event if it is the one named ``msg_id``."""
        newest = await self._retrying(f"read {subject}", lambda: self._js.get_last_msg(self._stream, subject, direct=self._direct))
        if newest.headers and newest.headers.get(subjects.MSG_ID) == msg_id:
            return newest.seq
        return None

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """A read of the log, sent again while its answer is lost or the stream is between
        leaders, within the caller's deadline; NotFoundError and other answers pass through."""
        loop = asyncio.get_running_loop()
        budget = _budget()
        give_up = loop.time() + budget
        for tries in range(1, 1_000_000):
            try:
                return await call()
            except nats.js.errors.NotFoundError:
                raise
            except nats.js.errors.APIError as exc:
                if not _transient(exc):
                    raise
                why: Exception = exc
            except nats.errors.ConnectionClosedError as exc:
                raise Unavailable(f"event log: cannot {what}: the connection is closed") from exc
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
                why = exc
            pause = _PAUSES[min(tries, len(_PAUSES)) - 1]
            if loop.time() + pause >= give_up:
                raise Unavailable(f"event log: cannot {what} within {budget:.1f}s ({tries} tries: {_describe(why)})") from why
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def read(self, subject: str) -> list[Record]:
        """Every event of one aggregate, oldest first (used to recover, not on hot paths)."""
        records: list[Record] = []
        seq = 1
        while True:
            try:
                msg = await self._retrying(f"read {subject}", functools.partial(self._js.get_msg, self._stream, seq=seq, subject=subject, next=True, direct=self._direct))
            except nats.js.errors.NotFoundError:
                return records
            record = _stored(msg)
            records.append(record)
            seq = record.seq + 1

    async def last(self, subject: str) -> Record | None:
        """The aggregate's newest event, in one request whatever its history's length."""
        try:
            msg = await self._retrying(f"read {subject}", lambda: self._js.get_last_msg(self._stream, subject, direct=self._direct))
        except nats.js.errors.NotFoundError:
            return None
        return _stored(msg)

    async def next_seq(self, filter_subject: str, after: int) -> int | None:
        """The sequence of the first event on ``filter_subject`` after ``after``, if any."""
        try:
            msg = await self._retrying(f"read {filter_subject}", lambda: self._js.get_msg(self._stream, seq=after + 1, subject=filter_subject, next=True, direct=self._direct))
        except nats.js.errors.NotFoundError:
            return None
        return msg.seq

    async def subjects(self, filter_subject: str) -> list[str]:
        """The subjects holding events under ``filter_subject`` (one per aggregate)."""
        info = await self._retrying("read the stream's subjects", lambda: self._js.stream_info(self._stream, subjects_filter=filter_subject))
        return list((info.state.subjects or {}).keys())

    @property
    def closing(self) -> bool:
        """Whether this process is closing its connection (shutting down): a feed that
        ends then is no loss worth a warning."""
        nc = self._js._nc  # nats-py keeps the connection there
        return bool(nc.is_draining or nc.is_closed)

    async def last_seq(self) -> int:
        info = await self._retrying("read the stream's state", lambda: self._js.stream_info(self._stream))
        return info.state.last_seq

    async def follow(self, filter_subject: str, after: int, *, newest_only: bool = False) -> AsyncIterator[Record]:
        """Every event on ``filter_subject`` after stream sequence ``after``, then live ones.

        With ``newest_only`` (and ``after`` 0) the history is skipped: only the newest event
        of each subject, in stream order, then live ones — a start that costs the number of
        aggregates, not the length of the log.

        An ordered consumer: gaps and redeliveries are handled by the client, which
        recreates the consumer from the last sequence it delivered. It lives on one member
        of the cluster (an R1 consumer): when that member dies, its heartbeats stop, and
        after two missed ones (FEED_HEARTBEAT) the client recreates it on a live member.
        """
        if after:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT if newest_only else api.DeliverPolicy.ALL)
        sub = await self._js.subscribe(
            filter_subject,
            stream=self._stream,
            ordered_consumer=True,
            idle_heartbeat=FEED_HEARTBEAT,
            config=config,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        watchdog = asyncio.create_task(_end_on_reconnect(self._js, sub), name="follow-watchdog")
        try:
            async for msg in sub.messages:
                meta = msg.metadata
                yield _record(meta.sequence.stream, msg.subject, msg.headers, msg.data, meta.num_pending or 0)
        finally:
            watchdog.cancel()
            try:
                await asyncio.shield(sub.unsubscribe())
            except Exception:  # noqa: BLE001 - the connection may already be gone at shutdown.
                pass


async def _end_on_reconnect(js: JetStreamContext, sub: Any) -> None:
    """End a feed when the client reconnects, so that its reader follows again from where
    it was. After nats-server restarts, an ordered consumer that was pushing before stays
    silent until the client notices missed heartbeats — measured at 19 s to 2 minutes
    here (chaos, control plane), with every loop waiting for the next event."""
    stats = js._nc.stats  # nats-py keeps the connection's counters there
    seen = stats["reconnects"]
    while stats["reconnects"] == seen:  # noqa: ASYNC110 - the client counts reconnects; it offers no event to wait on
        await asyncio.sleep(0.25)
    try:
        await sub.unsubscribe()
    except nats.errors.Error:  # closed meanwhile: the feed has ended anyway
        pass


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _stored(msg: api.RawStreamMsg) -> Record:
    # A message read back from the stream always has its sequence and subject.
    assert msg.seq is not None and msg.subject is not None
    return _record(msg.seq, msg.subject, msg.headers, msg.data)


def _record(seq: int, subject: str, headers: dict[str, str] | None, data: bytes | None, pending: int = 0) -> Record:
    kind = (headers or {}).get(subjects.EVENT_TYPE, "")
    return Record(seq=seq, subject=subject, type=kind, data=data or b"", pending=pending, trace=carried(headers))
