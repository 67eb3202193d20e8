"""Commands as NATS request/reply to a service's queue group.

A reply is ``{"ok": result}`` or ``{"err": [kind, message]}``; errors cross the wire by
the name of their ``volplane.errors`` class.

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
import redis.exceptions
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from volplane import codec
from volplane.errors import Internal, InvalidArgument, Unavailable, VolplaneError, error_from_wire
from volplane.telemetry import INFLIGHT, OPERATIONS, SpanKind, extract, inject, span

__all__ = ["Bus"]

log = logging.getLogger(__name__)
C = TypeVar("C", bound=BaseModel)
Handler = Callable[[C], Awaitable[Any]]


def _attributes(subject: str, operation: str) -> dict[str, str]:
    return {"messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation.type": operation}


class Bus:
    def __init__(self, nc: NATS, service: str = "") -> None:
        self.nc = nc
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()

    async def request(self, subject: str, command: BaseModel | dict[str, Any], timeout: float = 60.0) -> Any:
        payload = codec.encode(command) if isinstance(command, BaseModel) else codec.pack(command)
        with span(f"{subject} send", kind=SpanKind.CLIENT, attributes=_attributes(subject, "send")) as s:
            headers = inject({}) if s.is_recording() else None
            try:
                msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
            except nats.errors.NoRespondersError as exc:
                raise Unavailable(f"no service answers {subject}") from exc
            except nats.errors.TimeoutError as exc:
                raise Unavailable(f"{subject} did not answer within {timeout:.0f}s") from exc
        reply = codec.unpack(msg.data)
        if "err" in reply:
            kind, message = reply["err"]
            raise error_from_wire(kind, message)
        return reply["ok"]

    async def serve(self, subject: str, queue: str, model: type[C], handler: Handler[C]) -> None:
        """Answer ``subject`` in queue group ``queue``, each request in its own task."""

        async def on_msg(msg: Msg) -> None:
            if not _from_inbox(msg):
                return
            task = asyncio.create_task(self._handle(msg, model, handler))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await self.nc.subscribe(subject, queue=queue, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def serve_as_sender(self, subject: str, queue: str, model: type[C], handler: Callable[[str, C], Awaitable[Any]]) -> None:
        """Like ``serve``, the handler also given the request's subject: when only one
        identity may publish to each subject (``vp.cmd.objects.node.<node>.append``), the
        subject names the sender, and the handler authorizes by it."""

        async def on_msg(msg: Msg) -> None:
            if not _from_inbox(msg):
                return
            task = asyncio.create_task(self._handle(msg, model, functools.partial(handler, msg.subject)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await self.nc.subscribe(subject, queue=queue, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def _handle(self, msg: Msg, model: type[C], handler: Handler[C]) -> None:
        operation = msg.subject.rsplit(".", 1)[-1]
        started = time.perf_counter()
        result_label = "ok"
        INFLIGHT.labels(self.service).inc()
        parent = extract(msg.headers) if msg.headers else None
        with span(f"{msg.subject} process", kind=SpanKind.SERVER, parent=parent, attributes=_attributes(msg.subject, "process")) as s:
            try:
                try:
                    command = model.model_validate(codec.unpack(msg.data))
                except (ValidationError, ValueError) as exc:
                    raise InvalidArgument(_first_error(exc)) from exc
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
        INFLIGHT.labels(self.service).dec()
        OPERATIONS.labels(self.service, operation, result_label).observe(time.perf_counter() - started)
        if msg.reply:
            try:
                await msg.respond(codec.pack(body))
            except nats.errors.Error:
                log.warning("could not answer %s", msg.subject)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


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
