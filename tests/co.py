"""What tests do as a container orchestrator and as an operator writing the log by hand.

    co = CO(stack.csi_endpoint)
    reply = await co.call("create", co.stub.CreateVolume, request)   # retried as a CO does
    co.retries                                                        # Counter of "create UNAVAILABLE"…
    append_event(stack, subjects.volume(vid), VolumeCreating(...))    # a crash's leftover intent
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import nats

from devstack.launcher import Stack
from volplane.csi import csi_pb2_grpc as rpc
from volplane.events import Event
from volplane.eventstore import EventStore

T = TypeVar("T")
C = grpc.StatusCode

CALL_DEADLINE = 10.0  # a CO's deadline per call (external-provisioner's --timeout)
GIVE_UP = 120.0  # the CO's patience for one operation
RETRYABLE = frozenset({C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.ABORTED})


class CO:
    """A deadline per call, and on UNAVAILABLE, DEADLINE_EXCEEDED or ABORTED the same call
    again after a doubling backoff (0.1 s to 2 s), until ``give_up`` seconds have passed."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.stub = rpc.ControllerStub(self.channel)
        self.retries: Counter[str] = Counter()

    async def once(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        return await method(request, timeout=CALL_DEADLINE)

    async def call(self, name: str, method: Callable[..., Awaitable[T]], request: object, give_up: float = GIVE_UP) -> T:
        pause, deadline = 0.1, time.monotonic() + give_up
        while True:
            try:
                return await method(request, timeout=CALL_DEADLINE)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                self.retries[f"{name} {exc.code().name}"] += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def close(self) -> None:
        await self.channel.close()


def append_event(stack: Stack, subject: str, event: Event) -> None:
    """Append ``event`` as the first of its aggregate, as the administrator."""

    async def go() -> None:
        nc = await nats.connect(stack.env["NATS_URL"], tls=stack.client_tls())
        try:
            await EventStore(nc.jetstream()).append(subject, event, expected=0)
        finally:
            await nc.close()

    asyncio.run(go())
