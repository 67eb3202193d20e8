"""Commands as NATS request/reply to a service's queue group.

A reply is ``{"ok": result}`` or ``{"err": [kind, message]}``; errors cross the wire by
the name of their ``volplane.errors`` class.

A request never waits out its whole timeout for an answer that cannot come (docs/decisions.md,
"Failing fast on a clustered log"): it carries an id, the time its sender will wait
(``volplane.deadlines``) and asks for signs of life; a handler still busy after PROGRESS_EVERY
seconds sends one every PROGRESS_EVERY seconds. The sender sends the request again — same
id — when its own connection moved to another member (what was in flight may be gone), or
when SILENCE seconds pass without a sign (its responder, or the member between, died), or
briefly while a queue group is empty (its members reconnecting). A copy that reaches the
process still running the first joins it: one execution, every copy answered.

    bus = Bus(nc)
    await bus.serve(subjects.CREATE_VOLUME, "provisioner", CreateVolume, app.create_volume)
    result = await bus.request(subjects.CREATE_VOLUME, CreateVolume(...))
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.api
import redis.exceptions
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.nuid import NUID
from pydantic import BaseModel, ValidationError

from volplane import codec, deadlines
from volplane.clients import reconnected
from volplane.errors import Internal, InvalidArgument, Unavailable, VolplaneError, error_from_wire
from volplane.telemetry import INFLIGHT, OPERATIONS, SpanKind, extract, hot_span, inject

__all__ = ["Bus"]

log = logging.getLogger(__name__)
C = TypeVar("C", bound=BaseModel)
Handler = Callable[[C], Awaitable[Any]]


# Request headers: the request's id (the same on every copy), and a request for signs of life.
REQUEST_ID = "Volplane-Request"
PROGRESS = "Volplane-Progress"
PROGRESS_EVERY = 1.0
SILENCE = 3.5  # seconds without an answer or a sign of life before the request is sent again
NO_RESPONDERS_GRACE = 2.0  # how long an empty queue group is asked again before Unavailable
REPLY_MARGIN = 0.25  # seconds before its timeout a request gives up, to answer its own caller in time
_NO_RESPONDERS = "503"


class _Waiter:
    """One request's answer, and when it last heard from its responder."""

    __slots__ = ("answer", "heard")

    def __init__(self, answer: asyncio.Future[Msg], now: float) -> None:
        self.answer = answer
        self.heard = now


class _SignsOfLife:
    """Every PROGRESS_EVERY seconds until cancelled: an empty "still working" message to the
    reply subject of every copy of a request, so that no sender takes its handler for dead."""

    def __init__(self, nc: NATS, replies: list[str]) -> None:
        self._nc = nc
        self._replies = replies
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.call_later(PROGRESS_EVERY, self._tick)

    def _tick(self) -> None:
        for reply in self._replies:
            task = asyncio.ensure_future(self._nc.publish(reply, b"", headers={PROGRESS: "1"}))
            task.add_done_callback(_ignore_failure)
        self._next = self._loop.call_later(PROGRESS_EVERY, self._tick)

    def cancel(self) -> None:
        self._next.cancel()


def _attributes(subject: str, operation: str) -> dict[str, str]:
    return {"messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation.type": operation}


class Bus:
    def __init__(self, nc: NATS, service: str = "") -> None:
        self.nc = nc
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()
        # The metrics' labelled children, looked up once (``labels()`` takes a lock each call).
        self._inflight = INFLIGHT.labels(service)
        self._operations: dict[tuple[str, str], Any] = {}
        # Our answers arrive on <inbox>.<token>, one subscription for every request.
        self._inbox = ""
        self._inbox_ready: asyncio.Lock | None = None
        self._waiting: dict[str, _Waiter] = {}
        self._nuid = NUID()
        # Requests being handled here, by id: the reply subjects of every copy that came.
        self._running: dict[str, list[str]] = {}

    async def request(self, subject: str, command: BaseModel | dict[str, Any], timeout: float = 60.0) -> Any:
        payload = codec.encode(command) if isinstance(command, BaseModel) else codec.pack(command)
        with hot_span(f"{subject} send", kind=SpanKind.CLIENT, attributes=_attributes(subject, "send")) as s:
            headers = inject({}) if s.is_recording() else {}
            msg = await self._ask(subject, payload, headers, timeout)
        reply = codec.unpack(msg.data)
        if "err" in reply:
            kind, message = reply["err"]
            raise error_from_wire(kind, message)
        return reply["ok"]

    async def _ask(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> Msg:
        """Send until answered or ``timeout`` passes; see the module's docstring."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Given up a moment before the caller's deadline, so that the caller hears why
        # (UNAVAILABLE, not a bare DEADLINE_EXCEEDED when it is a CO's deadline).
        give_up = started + timeout - min(REPLY_MARGIN, timeout * 0.1)
        inbox = await self._reply_inbox()
        rid = self._nuid.next().decode()  # names the request, the same on every copy
        headers[REQUEST_ID] = rid
        headers[PROGRESS] = "1"
        for tries in range(1, 1_000_000):
            left = give_up - loop.time()
            if left <= 0:
                raise Unavailable(f"{subject} did not answer within {timeout:.0f}s")
            headers[deadlines.HEADER] = f"{left:.3f}"
            token = f"{rid}{tries}"
            answer: asyncio.Future[Msg] = loop.create_future()
            waiter = self._waiting[token] = _Waiter(answer, loop.time())
            try:
                await self.nc.publish(subject, payload, reply=f"{inbox}.{token}", headers=headers)
                lost = reconnected(self.nc)
                while True:
                    wait = min(give_up, waiter.heard + SILENCE) - loop.time()
                    if wait > 0:
                        await asyncio.wait((answer, lost), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                    if answer.done() or lost.done() or loop.time() >= give_up:
                        break
                    if loop.time() - waiter.heard >= SILENCE:
                        break  # nothing heard: the request or its responder is gone
            finally:
                del self._waiting[token]
            if answer.done():
                msg = answer.result()
                if not (msg.headers and msg.headers.get(nats.js.api.Header.STATUS) == _NO_RESPONDERS):
                    return msg
                if loop.time() - started >= NO_RESPONDERS_GRACE:
                    raise Unavailable(f"no service answers {subject}")
                await asyncio.sleep(min(0.05 * tries, 0.25))
                continue
            if loop.time() < give_up:
                log.info("sending %s again (%s)", subject, "reconnected" if lost.done() else f"nothing heard for {SILENCE:.1f}s")
        raise AssertionError("unreachable")

    async def _reply_inbox(self) -> str:
        if self._inbox:
            return self._inbox
        if self._inbox_ready is None:
            self._inbox_ready = asyncio.Lock()
        async with self._inbox_ready:
            if not self._inbox:
                inbox = self.nc.new_inbox()  # _INBOX.<user>.<unique>: only this user may read it
                await self.nc.subscribe(f"{inbox}.*", cb=self._on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1)
                self._inbox = inbox
        return self._inbox

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.subject.rpartition(".")[2])
        if waiter is None or waiter.answer.done():
            return  # an answer to a copy given up on, or a second answer
        if msg.headers and PROGRESS in msg.headers and not msg.data:
            waiter.heard = asyncio.get_running_loop().time()
            return
        waiter.answer.set_result(msg)

    async def serve(self, subject: str, queue: str, model: type[C], handler: Handler[C]) -> None:
        """Answer ``subject`` in queue group ``queue``, each request in its own task."""

        async def on_msg(msg: Msg) -> None:
            self._dispatch(msg, model, handler)

        await self.nc.subscribe(subject, queue=queue, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def serve_as_sender(self, subject: str, queue: str, model: type[C], handler: Callable[[str, C], Awaitable[Any]]) -> None:
        """Like ``serve``, the handler also given the request's subject: when only one
        identity may publish to each subject (``vp.cmd.objects.node.<node>.append``), the
        subject names the sender, and the handler authorizes by it."""

        async def on_msg(msg: Msg) -> None:
            self._dispatch(msg, model, functools.partial(handler, msg.subject))

        await self.nc.subscribe(subject, queue=queue, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    def _dispatch(self, msg: Msg, model: type[C], handler: Handler[C]) -> None:
        """Handle ``msg`` in a task of its own — unless it is a copy of a request this process
        is handling (sent again by a sender that heard nothing): then it is answered with it."""
        if not _from_inbox(msg):
            return
        replies = [msg.reply]
        rid = msg.headers.get(REQUEST_ID) if msg.headers else None
        if rid:
            # Scoped to the sender's reply inbox (``_INBOX.<user>.<its bus>``): no one else's
            # request can be joined, or kept from running, by naming its id.
            rid = f"{msg.reply.rpartition('.')[0]} {rid}"
            running = self._running.get(rid)
            if running is not None:
                running.append(msg.reply)
                return
            self._running[rid] = replies
        task = asyncio.create_task(self._handle(msg, model, handler, replies, rid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg, model: type[C], handler: Handler[C], replies: list[str] | None = None, rid: str | None = None) -> None:
        operation = msg.subject.rsplit(".", 1)[-1]
        started = time.perf_counter()
        result_label = "ok"
        self._inflight.inc()
        headers = msg.headers or {}
        parent = extract(headers) if headers else None
        alive = _SignsOfLife(self.nc, replies) if replies and PROGRESS in headers else None
        with hot_span(f"{msg.subject} process", kind=SpanKind.SERVER, parent=parent, attributes=_attributes(msg.subject, "process")) as s:
            try:
                try:
                    command = model.model_validate(codec.unpack(msg.data))
                except (ValidationError, ValueError) as exc:
                    raise InvalidArgument(_first_error(exc)) from exc
                with deadlines.within(deadlines.parse(headers.get(deadlines.HEADER))):
                    result = await handler(command)
                body: dict[str, Any] = {"ok": result.model_dump() if isinstance(result, BaseModel) else result}
            except VolplaneError as exc:
                body = {"err": [type(exc).__name__, exc.message]}
                result_label = type(exc).__name__
                s.set_attribute("volplane.error", result_label)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                # Redis (the read model) away or restarting: the caller retries, nothing is lost.
                body = {"err": [Unavailable.__name__, f"Redis is unavailable: {exc}"]}
                result_label = Unavailable.__name__
                s.set_attribute("volplane.error", result_label)
            except Exception as exc:  # a bug must still answer the caller.
                log.exception("handler for %s failed", msg.subject)
                body = {"err": [Internal.__name__, f"{type(exc).__name__}: {exc}"]}
                result_label = Internal.__name__
                s.set_attribute("volplane.error", result_label)
        self._inflight.dec()
        observed = self._operations.get((operation, result_label))
        if observed is None:
            observed = self._operations[operation, result_label] = OPERATIONS.labels(self.service, operation, result_label)
        observed.observe(time.perf_counter() - started)
        if alive is not None:
            alive.cancel()
        if rid:
            self._running.pop(rid, None)
        data = codec.pack(body)
        for reply in replies or [msg.reply]:
            if not reply:
                continue
            try:
                await self.nc.publish(reply, data)
            except nats.errors.Error:
                log.warning("could not answer %s", msg.subject)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _ignore_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # a sign of life that could not be sent: the sender asks again


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "request"
        return f"{where}: {err['msg']}"
    return str(exc)


def _from_inbox(msg: Msg) -> bool:
    """Whether ``msg`` is a request from a client: its reply goes to an inbox.

    Every command is a request, and a client's replies come to ``_INBOX.<user>.…``. A
    message without one is dropped, not served: JetStream delivers a consumer's messages
    to whatever deliver subject its creator names — nats-server does not check it against
    the creator's publish rights — so a node could otherwise have the log push its own
    events into a controller's command subject (its deliveries' reply is ``$JS.ACK.…``).
    """
    if msg.reply.startswith("_INBOX."):
        return True
    log.warning("dropped a message on %s that is not a request from a client (reply %r)", msg.subject, msg.reply[:64])
    return False
