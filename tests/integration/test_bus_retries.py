"""Requests and appends that fail fast and are retried (docs/decisions.md, "Failing fast on
a clustered log"), on a real nats-server: a responder that dies is replaced within
seconds, a copy of a request joins the one running, an append whose acknowledgement was
lost is stored once, the caller's deadline reaches the handler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from devstack.embedded import EmbeddedServer
from services.provisioner.domain.events import VolumeDeleted
from volplane import codec, deadlines, subjects
from volplane.bus import REQUEST_ID, SILENCE, Bus
from volplane.errors import Unavailable
from volplane.events import Event
from volplane.eventstore import EventStore


class Ping(BaseModel):
    n: int = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    s = EmbeddedServer.nats(Path(tmp_path_factory.mktemp("bus-retries")))
    s.start()
    yield s
    s.stop()


class Connections:
    """Connections to the test's nats-server, closed when the test's coroutine ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[NATS] = []

    async def __call__(self) -> NATS:
        nc = await nats.connect(self.url)
        self.made.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self.made:
            if not nc.is_closed:
                await nc.close()


def run(server: EmbeddedServer, body: Callable[[Connections], Awaitable[None]]) -> None:
    """No asyncio plugin here: each test runs its coroutine on a loop of its own."""

    async def main() -> None:
        connect = Connections(server.url)
        try:
            await body(connect)
        finally:
            await connect.close()

    asyncio.run(main())


def test_a_request_whose_responder_died_is_sent_again_and_answered_by_another(server: EmbeddedServer) -> None:
    run(server, lambda connect: _test_a_request_whose_responder_died_is_sent_again_and_answered_by_another(connect))


async def _test_a_request_whose_responder_died_is_sent_again_and_answered_by_another(connect: Connections) -> None:
    entered = asyncio.Event()

    async def stuck(_: Ping) -> str:
        entered.set()
        await asyncio.Event().wait()  # never answers: the process dies first
        return "never"

    async def healthy(_: Ping) -> str:
        return "second"

    first = Bus(await connect())
    await first.serve("t.work", "workers", Ping, stuck)
    client = Bus(await connect())
    started = time.monotonic()
    reply = asyncio.create_task(client.request("t.work", Ping(), timeout=60))
    await asyncio.wait_for(entered.wait(), 10)
    second = Bus(await connect())
    await second.serve("t.work", "workers", Ping, healthy)
    await second.nc.flush()
    await first.nc.close()  # the first responder's process is gone, its request with it
    assert await asyncio.wait_for(reply, 30) == "second"
    took = time.monotonic() - started
    assert took < SILENCE + 3, f"the request waited {took:.1f} s for a dead responder"


def test_a_slow_handler_is_not_taken_for_dead(server: EmbeddedServer) -> None:
    run(server, lambda connect: _test_a_slow_handler_is_not_taken_for_dead(connect))


async def _test_a_slow_handler_is_not_taken_for_dead(connect: Connections) -> None:
    runs = 0

    async def slow(_: Ping) -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(SILENCE * 2)
        return runs

    server_bus = Bus(await connect())
    await server_bus.serve("t.slow", "slow", Ping, slow)
    client = Bus(await connect())
    # Signs of life keep it from being sent again: one run, and its own answer.
    assert await client.request("t.slow", Ping(), timeout=30) == 1
    assert runs == 1


def test_a_copy_of_a_running_request_joins_it_and_both_are_answered(server: EmbeddedServer) -> None:
    run(server, lambda connect: _test_a_copy_of_a_running_request_joins_it_and_both_are_answered(connect))


async def _test_a_copy_of_a_running_request_joins_it_and_both_are_answered(connect: Connections) -> None:
    runs = 0

    async def once(_: Ping) -> int:
        nonlocal runs
        runs += 1
        mine = runs
        await asyncio.sleep(0.5)
        return mine

    server_bus = Bus(await connect())
    await server_bus.serve("t.once", "once", Ping, once)
    nc = await connect()
    inbox, stranger = nc.new_inbox(), nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*")
    other = await nc.subscribe(f"{stranger}.*")
    headers = {REQUEST_ID: "the-same-request"}
    for copy in ("a", "b"):
        await nc.publish("t.once", codec.encode(Ping()), reply=f"{inbox}.{copy}", headers=headers)
    # Another sender naming the same id is no copy: its request runs on its own.
    await nc.publish("t.once", codec.encode(Ping()), reply=f"{stranger}.c", headers=headers)
    answers = {(m := await sub.next_msg(timeout=10)).subject.rsplit(".", 1)[1]: codec.unpack(m.data) for _ in range(2)}
    assert answers == {"a": {"ok": 1}, "b": {"ok": 1}}
    assert codec.unpack((await other.next_msg(timeout=10)).data) == {"ok": 2}
    assert runs == 2


def test_the_callers_deadline_reaches_the_handler(server: EmbeddedServer) -> None:
    run(server, lambda connect: _test_the_callers_deadline_reaches_the_handler(connect))


async def _test_the_callers_deadline_reaches_the_handler(connect: Connections) -> None:
    async def left(_: Ping) -> float | None:
        return deadlines.time_left()

    server_bus = Bus(await connect())
    await server_bus.serve("t.deadline", "deadline", Ping, left)
    client = Bus(await connect())
    seen = await client.request("t.deadline", Ping(), timeout=7)
    assert seen is not None and 6.0 < seen <= 7.0


def test_nobody_serving_answers_unavailable_within_seconds(server: EmbeddedServer) -> None:
    run(server, lambda connect: _test_nobody_serving_answers_unavailable_within_seconds(connect))


async def _test_nobody_serving_answers_unavailable_within_seconds(connect: Connections) -> None:
    client = Bus(await connect())
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"no service answers t\.nobody"):
        await client.request("t.nobody", Ping(), timeout=60)
    assert time.monotonic() - started < 5


class _LosesFirstAck:
    """A JetStream context whose first publish reaches the stream but whose acknowledgement
    is lost on the way back — what a member's death between the two does."""

    def __init__(self, js: Any) -> None:
        self._js = js
        self.publishes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        self.publishes += 1
        ack = await self._js.publish(*args, **kwargs)
        if self.publishes == 1:
            raise nats.errors.TimeoutError
        return ack


@pytest.mark.parametrize("expected", [0, None])
def test_an_append_whose_acknowledgement_was_lost_is_stored_once(server: EmbeddedServer, expected: int | None) -> None:
    run(server, lambda connect: _test_an_append_whose_acknowledgement_was_lost_is_stored_once(connect, expected))


async def _test_an_append_whose_acknowledgement_was_lost_is_stored_once(connect: Connections, expected: int | None) -> None:
    nc = await connect()
    store = EventStore(nc.jetstream())
    await store.ensure_stream()
    subject = subjects.volume(f"lost-ack-{expected}")
    lossy = _LosesFirstAck(store._js)
    store._js = lossy  # type: ignore[assignment]  # a stand-in that loses the first acknowledgement
    event: Event = VolumeDeleted(volume_id=f"lost-ack-{expected}")
    seq = await store.append(subject, event, expected=expected)
    assert lossy.publishes == 2  # the append was sent again ...
    records = await store.read(subject)
    assert [(r.seq, r.type) for r in records] == [(seq, "VolumeDeleted")]  # ... and stored once
