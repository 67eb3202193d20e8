"""The aggregate repository (``volplane.aggregate``) and the read models' queries, against
a real nats-server and redis-server of this module's own.

Two repositories over two runners in one process stand for two replicas: each has its own
memory of the read model, and only the log's expected-version check stands between them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import nats
import pytest
import redis.asyncio as aioredis

from devstack.embedded import EmbeddedServer
from services.attacher.adapters.projection import ATTACHMENTS, AttachmentsProjection
from services.attacher.domain.attachment import AttachmentState
from services.attacher.domain.events import AttachmentEvent, VolumeAttached, VolumeDetached
from services.provisioner.adapters.projection import VOLUMES, VolumesProjection
from services.provisioner.domain.events import VolumeCreated, VolumeCreating, VolumeDeleted, VolumeDeleting, VolumeEvent
from services.provisioner.domain.volume import VolumeState
from volplane import subjects
from volplane.aggregate import Repository
from volplane.errors import Aborted, ConcurrencyConflict, Internal
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.projection import Projection, ProjectionRunner
from volplane.volumes import StoredCapability

T = TypeVar("T")
S = TypeVar("S")
CAP = StoredCapability(access_type="mount", access_mode=1)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("repository")
    nats_server, redis_server = EmbeddedServer.nats(root / "nats"), EmbeddedServer.redis(root / "redis")
    nats_server.start()
    redis_server.start()
    yield nats_server.url, redis_server.url
    nats_server.stop()
    redis_server.stop()


class World:
    """The log and Redis, and runners started on them (stopped at the end of the test)."""

    def __init__(self, store: EventStore, redis: aioredis.Redis) -> None:
        self.store = store
        self.redis = redis
        self.runners: list[ProjectionRunner[Any]] = []

    async def follow(self, projection: Projection[S]) -> ProjectionRunner[S]:
        runner = ProjectionRunner(self.redis, self.store, projection)
        await runner.start()
        self.runners.append(runner)
        return runner

    async def volumes(self) -> tuple[Repository[VolumeState, VolumeEvent], VolumesProjection]:
        """A replica's view of the volumes: its own runner, memory and locks."""
        projection = VolumesProjection()
        return Repository(self.store, await self.follow(projection), VOLUMES), projection

    async def attachments(self) -> Repository[AttachmentState, AttachmentEvent]:
        return Repository(self.store, await self.follow(AttachmentsProjection()), ATTACHMENTS)


def run(servers: tuple[str, str], scenario: Callable[[World], Awaitable[T]]) -> T:
    async def go() -> T:
        nc = await nats.connect(servers[0])
        redis = aioredis.from_url(servers[1])
        store = EventStore(nc.jetstream())
        await store.ensure_stream()
        world = World(store, redis)
        try:
            return await scenario(world)
        finally:
            for runner in world.runners:
                await runner.stop()
            await redis.aclose()
            await nc.close()

    return asyncio.run(go())


def creating(name: str) -> VolumeCreating:
    return VolumeCreating(volume_id=volume_id_for(name), name=name, pool="shared", capacity_bytes=2**20, capabilities=(CAP,))


def attached(vid: str, node: str) -> VolumeAttached:
    return VolumeAttached(volume_id=vid, node_id=node, capability=CAP, readonly=False, context={})


# -- append, note, reload, retry ----------------------------------------------------


def test_an_append_notes_the_new_state_so_this_process_reads_it_at_once(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        volumes, _ = await world.volumes()
        name = f"v-{uuid.uuid4().hex}"
        vid = volume_id_for(name)
        assert volumes.cached(vid) == (False, None)
        state = await volumes.append(vid, None, creating(name))
        assert volumes.cached(vid) == (True, state)
        assert (await volumes.load(vid)) == state
        last = await world.store.last(subjects.volume(vid))
        assert last is not None and state.phase == "creating" and state.version == last.seq

    run(servers, scenario)


def test_a_step_that_lost_the_race_runs_again_on_the_newest_state(servers: tuple[str, str]) -> None:
    """Replica A decides on what it knows (nothing); replica B appended first; A's append is
    refused, A reloads from the log and decides again on B's state."""

    async def scenario(world: World) -> None:
        a, b = await world.attachments(), await world.attachments()
        vid = uuid.uuid4().hex
        stale = await a.load(vid)
        await b.append(vid, await b.load(vid), attached(vid, "node-b"))
        seen: list[tuple[str, ...] | None] = []

        async def publish(state: AttachmentState | None) -> AttachmentState:
            seen.append(state.nodes if state else None)
            return await a.append(vid, state, attached(vid, "node-a"))

        final = await a.retry(vid, stale, publish)
        assert seen == [None, ("node-b",)]
        assert final.nodes == ("node-a", "node-b")
        records = await world.store.read(subjects.attachment(vid))
        assert [r.type for r in records] == ["VolumeAttached", "VolumeAttached"] and final.version == records[-1].seq

    run(servers, scenario)


def test_a_reload_does_not_wait_for_a_runner_behind_the_log(servers: tuple[str, str]) -> None:
    """Replica B's runner is behind the log (here: not started at all), as a busy replica's
    can be by seconds: B's reload folds the volume's own events from the log at once,
    and remembers the result, instead of waiting for its runner to get there."""

    async def scenario(world: World) -> None:
        a, _ = await world.volumes()
        b = Repository(world.store, ProjectionRunner(world.redis, world.store, VolumesProjection()), VOLUMES)
        name = f"v-{uuid.uuid4().hex}"
        vid = volume_id_for(name)
        made = await a.append(vid, await a.append(vid, None, creating(name)), VolumeCreated(volume_id=vid))
        seen = await asyncio.wait_for(b.reload(vid), 5)
        assert seen == made and seen.phase == "ready"
        assert b.cached(vid) == (True, made)
        gone = await a.append(vid, await a.append(vid, made, VolumeDeleting(volume_id=vid)), VolumeDeleted(volume_id=vid))
        assert gone.phase == "deleted"
        tomb = await asyncio.wait_for(b.reload(vid), 5)
        assert tomb is not None and tomb.phase == "deleted" and tomb.version == gone.version
        assert b.cached(vid) == (True, None)

    run(servers, scenario)


def test_a_step_that_keeps_losing_is_aborted_after_three_runs(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        a, b = await world.attachments(), await world.attachments()
        vid = uuid.uuid4().hex
        runs = 0

        async def publish(state: AttachmentState | None) -> None:
            nonlocal runs
            runs += 1
            # Another replica gets in first every time.
            latest = await b.reload(vid)
            await b.append(vid, latest, attached(vid, f"node-{runs}"))
            await a.append(vid, state, attached(vid, "node-a"))

        with pytest.raises(Aborted, match=f"volume {vid} is contended, retry"):
            await a.retry(vid, await a.load(vid), publish)
        assert runs == 3
        latest = await a.reload(vid)
        assert latest is not None and latest.nodes == ("node-1", "node-2", "node-3")

    run(servers, scenario)


def test_an_error_other_than_a_lost_race_is_not_retried(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        a = await world.attachments()
        runs = 0

        async def fail(state: AttachmentState | None) -> None:
            nonlocal runs
            runs += 1
            raise Internal("the host said no")

        with pytest.raises(Internal):
            await a.retry(uuid.uuid4().hex, None, fail)
        assert runs == 1

    run(servers, scenario)


def test_a_deleted_aggregate_reloads_as_its_tombstone_and_its_next_incarnation_appends_after_it(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        volumes, _ = await world.volumes()
        name = f"v-{uuid.uuid4().hex}"
        vid = volume_id_for(name)
        state = await volumes.append(vid, None, creating(name))
        state = await volumes.append(vid, state, VolumeCreated(volume_id=vid))
        state = await volumes.append(vid, state, VolumeDeleting(volume_id=vid))
        gone = await volumes.append(vid, state, VolumeDeleted(volume_id=vid))
        assert gone.phase == "deleted"
        assert await volumes.load(vid) is None  # the read model keeps no key of a deleted volume

        # Another replica knows nothing of it: its "new" volume loses the race...
        other, _ = await world.volumes()
        with pytest.raises(ConcurrencyConflict):
            await other.append(vid, await other.load(vid), creating(name))
        # ...and the reload says why: a tombstone at the log's version, after which it appends.
        tombstone = await other.reload(vid)
        assert tombstone is not None and tombstone.phase == "deleted" and tombstone.version == gone.version
        again = await other.append(vid, tombstone, creating(name))
        assert again.phase == "creating" and again.version > gone.version

    run(servers, scenario)


def test_reload_of_an_aggregate_the_log_never_saw_is_none(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        volumes, _ = await world.volumes()
        assert await volumes.reload(volume_id_for(f"v-{uuid.uuid4().hex}")) is None

    run(servers, scenario)


# -- recover -------------------------------------------------------------------------


def test_recover_finishes_each_intent_a_crash_left_by_its_phase(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        crashed, _ = await world.volumes()
        names = [f"v-{uuid.uuid4().hex}" for _ in range(3)]
        vids = [volume_id_for(n) for n in names]
        for name, vid in zip(names, vids, strict=True):
            await crashed.append(vid, None, creating(name))
        # The last one fails to finish, and must not keep the others from being finished.
        finished: list[str] = []
        restarted, projection = await world.volumes()

        async def finish_create(state: VolumeState) -> None:
            if state.volume_id == vids[-1]:
                raise Internal("pool is gone")
            finished.append(state.volume_id)
            await restarted.append(state.volume_id, state, VolumeCreated(volume_id=state.volume_id))

        in_flight = await projection.in_flight()
        assert set(vids) <= set(in_flight)
        count = await restarted.recover([v for v in in_flight if v in vids], {"creating": finish_create}, phase=lambda s: s.phase)
        assert count == 3
        assert finished == sorted(vids[:-1])
        assert [s.phase if s else None for s in [await restarted.load(v) for v in vids]] == ["ready", "ready", "creating"]
        await projection.settled()
        assert set(await projection.in_flight()) & set(vids) == {vids[-1]}

    run(servers, scenario)


def test_recover_leaves_a_phase_without_a_finisher_alone(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        volumes, _ = await world.volumes()
        name = f"v-{uuid.uuid4().hex}"
        vid = volume_id_for(name)
        await volumes.append(vid, None, creating(name))
        calls: list[str] = []

        async def finish(state: VolumeState) -> None:
            calls.append(state.volume_id)

        assert await volumes.recover([vid], {"deleting": finish}, phase=lambda s: s.phase) == 1
        assert calls == []

    run(servers, scenario)


# -- queries -------------------------------------------------------------------------


def test_a_page_of_volumes_resumes_after_its_token_and_includes_this_process_writes(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        volumes, projection = await world.volumes()
        prefix = uuid.uuid4().hex[:6]
        made = set()
        for i in range(5):
            name = f"{prefix}-{i}"
            made.add(volume_id_for(name))
            await volumes.append(volume_id_for(name), None, creating(name))
        seen: list[str] = []
        token = ""
        while True:
            page, token = await projection.page(after=token, limit=2)
            assert len(page) <= 2
            seen += [s.volume_id for s in page]
            if not token:
                break
        assert seen == sorted(seen) and made <= set(seen)
        everything, end = await projection.page()
        assert [s.volume_id for s in everything] == seen and end == ""

    run(servers, scenario)


def test_attachments_answer_which_nodes_hold_a_volume_and_how_many_a_node_holds(servers: tuple[str, str]) -> None:
    async def scenario(world: World) -> None:
        projection = AttachmentsProjection()
        repository = Repository(world.store, await world.follow(projection), ATTACHMENTS)
        node = f"node-{uuid.uuid4().hex[:8]}"
        first, second, idle = (uuid.uuid4().hex for _ in range(3))
        await repository.append(first, None, attached(first, node))
        state = await repository.append(second, None, attached(second, node))
        assert await projection.count_on(node) == 2
        await repository.append(second, state, VolumeDetached(volume_id=second, node_id=node))
        assert await projection.nodes_of([first, second, idle]) == {first: (node,)}
        assert await projection.count_on(node) == 1

    run(servers, scenario)
