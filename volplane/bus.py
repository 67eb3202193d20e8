"""Commands as NATS request/reply to a service's queue group.

A reply is ``{"ok": result}`` or ``{"err": [kind, message]}``; errors cross the wire by
the name of their ``volplane.errors`` class.

    bus = Bus(nc)
    await bus.serve(subjects.CREATE_VOLUME, "provisioner", CreateVolume, app.create_volume)
    result = await bus.request(subjects.CREATE_VOLUME, CreateVolume(...))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from volplane import codec
from volplane.errors import Internal, InvalidArgument, Unavailable, VolplaneError, error_from_wire

__all__ = ["Bus"]

log = logging.getLogger(__name__)
C = TypeVar("C", bound=BaseModel)
Handler = Callable[[C], Awaitable[Any]]


class Bus:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._tasks: set[asyncio.Task[None]] = set()

    async def request(self, subject: str, command: BaseModel | dict[str, Any], timeout: float = 60.0) -> Any:
        payload = codec.encode(command) if isinstance(command, BaseModel) else codec.pack(command)
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout)
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
            task = asyncio.create_task(self._handle(msg, model, handler))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await self.nc.subscribe(subject, queue=queue, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def _handle(self, msg: Msg, model: type[C], handler: Handler[C]) -> None:
        try:
            try:
                command = model.model_validate(codec.unpack(msg.data))
            except (ValidationError, ValueError) as exc:
                raise InvalidArgument(_first_error(exc)) from exc
            result = await handler(command)
            body: dict[str, Any] = {"ok": result.model_dump() if isinstance(result, BaseModel) else result}
        except VolplaneError as exc:
            body = {"err": [type(exc).__name__, exc.message]}
        except Exception as exc:  # noqa: BLE001 - a bug must still answer the caller.
            log.exception("handler for %s failed", msg.subject)
            body = {"err": [Internal.__name__, f"{type(exc).__name__}: {exc}"]}
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
