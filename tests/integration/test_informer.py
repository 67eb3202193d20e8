"""The informer's memory of deletions (issue 15: no process grows under steady work), on a
real nats-server of this module's own: objects created and deleted all day leave nothing
behind, while a deletion seen ahead of the log still keeps the log's older events of the
object from bringing it back, and a late observation of an older write cannot either.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import pytest

from devstack.embedded import EmbeddedServer
from volplane.eventstore import EventStore
from volplane.resources.informer import Informer
from volplane.resources.kinds import ref_of, resolve
from volplane.resources.store import ObjectStore, version_of


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedServer.nats(tmp_path_factory.mktemp("informer") / "nats")
    server.start()
    yield server.url
    server.stop()


PVC = resolve("pvc")


def claim(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def run(nats_url: str, scenario: Callable[[ObjectStore, Informer], Awaitable[None]]) -> None:
    async def go() -> None:
        nc = await nats.connect(nats_url)
        store = EventStore(nc.jetstream())
        await store.ensure_stream()
        informer = Informer(store)
        await informer.start()
        try:
            await scenario(ObjectStore(store, "test"), informer)
        finally:
            await informer.stop()
            await nc.close()

    asyncio.run(go())


async def reached(informer: Informer, seq: int) -> None:
    async with asyncio.timeout(10):
        while informer.position < seq:  # noqa: ASYNC110 - the informer offers no event for a position
            await asyncio.sleep(0.01)


def test_objects_created_and_deleted_leave_nothing_in_memory(nats_url: str) -> None:
    async def scenario(objects: ObjectStore, informer: Informer) -> None:
        last = 0
        for i in range(300):
            created = await objects.create(claim(f"c-{uuid.uuid4().hex[:8]}-{i}"))
            gone = await objects.delete(ref_of(created), current=created)
            assert gone is not None
            last = version_of(gone)
        await reached(informer, last)
        assert informer.list(PVC) == []
        assert informer._gone == {} and informer._gone_order == []

    run(nats_url, scenario)


def test_a_late_observation_of_an_older_write_does_not_bring_a_deleted_object_back(nats_url: str) -> None:
    async def scenario(objects: ObjectStore, informer: Informer) -> None:
        created = await objects.create(claim(f"late-{uuid.uuid4().hex[:8]}"))
        gone = await objects.delete(ref_of(created), current=created)
        assert gone is not None
        await reached(informer, version_of(gone))
        informer.observe(created)  # the creator's observation, arriving after the feed's deletion
        assert informer.get(PVC, ref_of(created).key) is None

    run(nats_url, scenario)


def test_a_deletion_seen_ahead_of_the_log_holds_until_the_log_reaches_it(nats_url: str) -> None:
    async def scenario(objects: ObjectStore, informer: Informer) -> None:
        created = await objects.create(claim(f"ahead-{uuid.uuid4().hex[:8]}"))
        ref = ref_of(created)
        await reached(informer, version_of(created))
        # A controller deleted it at a version the feed has not reached (two appends on):
        # the change in between, when the feed brings it, must not bring the object back.
        deleted_at = version_of(created) + 2
        informer.observe(None, ref, deleted_at=deleted_at)
        assert informer.get(PVC, ref.key) is None and ref.key in {key for _, key in informer._gone}
        changed = await objects.update(created, {"metadata": {"labels": {"a": "b"}}})
        assert version_of(changed) == deleted_at - 1
        gone = await objects.delete(ref, current=changed)
        assert gone is not None and version_of(gone) == deleted_at
        await reached(informer, deleted_at)
        assert informer.get(PVC, ref.key) is None
        assert informer._gone == {} and informer._gone_order == []

    run(nats_url, scenario)
