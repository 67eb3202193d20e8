"""ControllerPublish / ControllerUnpublish / GetAttachments through NATS, on a whole stack.

Volumes are created through the CSI socket; nodes are fake, registered by appending
``NodeRegistered`` to the log as a nodeagent would, with unique names per test, so the
tests neither need more nodeagents nor see one another's attachments. The commands go
straight to the attacher over the bus (apigw's ControllerPublish wiring is separate).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
import pytest
import redis.asyncio as aioredis

from devstack.embedded import with_parent
from devstack.launcher import Stack
from services.attacher.adapters.projection import ATTACHMENTS, AttachmentsProjection
from services.attacher.adapters.volumes import ProvisionerVolumes
from services.attacher.csi.attachments import AttacherApp
from services.attacher.domain.events import ATTACHMENT_EVENTS, AttachmentEvent, VolumeAttached
from tests.conftest import Csi, mount_cap
from volplane import codec, subjects
from volplane.aggregate import Repository
from volplane.bus import Bus
from volplane.commands import Attachments, Capability, ControllerPublish, ControllerUnpublish, GetAttachments, PublishContext, VolumeInfo
from volplane.csi import csi_pb2 as csi
from volplane.errors import AlreadyExists, FailedPrecondition, NotFound, OperationPending, ResourceExhausted
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.nodes import TOPOLOGY_KEY, NodeRegistered, NodesProjection, PoolSpec, register
from volplane.projection import ProjectionRunner

T = TypeVar("T")
TIMEOUT = 30
MiB = 2**20
GiB = 2**30
SNW = Capability(access_type="mount", access_mode=1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("attacher"), env={"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "16Gi"})
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Csi]:
    c = Csi(stack.csi_endpoint)
    yield c
    c.close()


class Attacher:
    """The attacher over the bus, for one test: ``at.run(lambda bus, store: ...)``."""

    def __init__(self, stack: Stack) -> None:
        self.url, self.tls = stack.env["NATS_URL"], stack.client_tls()

    def run(self, scenario: Callable[[Bus, EventStore], Awaitable[T]]) -> T:
        async def go() -> T:
            nc = await nats.connect(self.url, tls=self.tls)
            try:
                return await scenario(Bus(nc), EventStore(nc.jetstream()))
            finally:
                await nc.close()

        return asyncio.run(go())

    def publish(self, volume_id: str, node_id: str, cap: Capability = SNW, readonly: bool = False) -> dict[str, str]:
        cmd = ControllerPublish(volume_id=volume_id, node_id=node_id, capability=cap, readonly=readonly)
        return PublishContext.model_validate(self.run(lambda bus, _: bus.request(subjects.CONTROLLER_PUBLISH, cmd, TIMEOUT))).context

    def unpublish(self, volume_id: str, node_id: str = "") -> None:
        self.run(lambda bus, _: bus.request(subjects.CONTROLLER_UNPUBLISH, ControllerUnpublish(volume_id=volume_id, node_id=node_id), TIMEOUT))

    def attachments(self, *volume_ids: str) -> dict[str, tuple[str, ...]]:
        reply = self.run(lambda bus, _: bus.request(subjects.GET_ATTACHMENTS, GetAttachments(volume_ids=volume_ids), TIMEOUT))
        return Attachments.model_validate(reply).nodes

    def events(self, volume_id: str) -> list[AttachmentEvent]:
        records = self.run(lambda _, store: store.read(subjects.attachment(volume_id)))
        return [codec.decode(ATTACHMENT_EVENTS, r.data) for r in records]

    def volume(self, volume_id: str) -> VolumeInfo:
        return self.run(lambda bus, _: ProvisionerVolumes(bus).get(volume_id))

    def register(self, prefix: str = "node", max_volumes: int = 0, pool_dir: Path | None = None) -> str:
        """A fake node with a unique name and its own topology segment; with ``pool_dir``,
        a local pool named after it below that directory, as a nodeagent announces one."""
        node_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        pools = (PoolSpec(name=node_id, kind="local", directory=str(pool_dir / node_id), capacity=GiB * 4),) if pool_dir else ()
        event = NodeRegistered(node_id=node_id, topology={TOPOLOGY_KEY: node_id}, max_volumes=max_volumes, pools=pools)
        self.run(lambda _, store: register(store, event))
        return node_id


@pytest.fixture
def at(stack: Stack) -> Attacher:
    return Attacher(stack)


@pytest.fixture
def volumes(client: Csi, at: Attacher) -> Iterator[Callable[..., str]]:
    """``make(**parameters)`` creates a volume (in the shared pool by default), unpublished and deleted at the end."""
    made: list[str] = []

    def make(**parameters: str) -> str:
        req = csi.CreateVolumeRequest(
            name=f"att-{uuid.uuid4().hex}",
            capacity_range=csi.CapacityRange(required_bytes=64 * MiB),
            volume_capabilities=[mount_cap()],
            parameters=parameters,
        )
        # A pool named in the parameters may belong to a node registered a moment ago,
        # which the provisioner learns from the log on its own time.
        deadline = time.monotonic() + 10
        while True:
            try:
                vid = str(client.controller.CreateVolume(req, timeout=TIMEOUT).volume.volume_id)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        made.append(vid)
        return vid

    yield make
    for vid in made:
        at.unpublish(vid)
        client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)


# -- publish ------------------------------------------------------------------


def test_publish_returns_the_node_and_pool_as_context(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, node = volumes(), at.register()
    context = at.publish(vid, node)
    assert context == {"volplane.io/node": node, "volplane.io/pool": at.volume(vid).pool}
    assert at.attachments(vid) == {vid: (node,)}


def test_publishing_ten_times_gives_the_same_answer_and_one_event(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, node = volumes(), at.register()
    answers = [at.publish(vid, node) for _ in range(10)]
    assert all(a == answers[0] for a in answers)
    assert [e.type for e in at.events(vid)] == ["VolumeAttached"]


def test_second_node_is_refused_naming_the_node_that_holds_the_volume(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, first, second = volumes(), at.register(), at.register()
    at.publish(vid, first)
    with pytest.raises(FailedPrecondition, match=first):
        at.publish(vid, second)
    assert at.attachments(vid) == {vid: (first,)}


def test_same_node_readonly_after_read_write_already_exists(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, node = volumes(), at.register()
    at.publish(vid, node)
    with pytest.raises(AlreadyExists):
        at.publish(vid, node, readonly=True)


def test_unknown_node_is_not_found_and_named(at: Attacher, volumes: Callable[..., str]) -> None:
    vid = volumes()
    with pytest.raises(NotFound, match="fake-node-id-1"):
        at.publish(vid, "fake-node-id-1")


@pytest.mark.parametrize("vid", ["fake-vol-id-1", volume_id_for("never-created-" + uuid.uuid4().hex)])
def test_unknown_volume_is_not_found(at: Attacher, vid: str) -> None:
    with pytest.raises(NotFound):
        at.publish(vid, at.register())


def test_after_unpublish_the_volume_goes_to_the_second_node(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, first, second = volumes(), at.register(), at.register()
    at.publish(vid, first)
    at.unpublish(vid, first)
    assert at.attachments(vid) == {}
    assert at.publish(vid, second)["volplane.io/node"] == second
    assert at.attachments(vid) == {vid: (second,)}


def test_local_volume_goes_only_to_the_node_that_owns_its_pool(at: Attacher, volumes: Callable[..., str], stack: Stack) -> None:
    owner = stack.node_id  # a real node: its nodeagent makes the image in its own pool
    vid = volumes(pool=owner)
    assert at.volume(vid).accessible_topology == ({TOPOLOGY_KEY: owner},)
    stranger = at.register()
    with pytest.raises(FailedPrecondition, match=f"not accessible from node {stranger}"):
        at.publish(vid, stranger)
    assert at.publish(vid, owner) == {"volplane.io/node": owner, "volplane.io/pool": owner}


def test_node_at_its_max_volumes_is_exhausted_until_one_is_unpublished(at: Attacher, volumes: Callable[..., str]) -> None:
    node, one, two = at.register(max_volumes=1), volumes(), volumes()
    at.publish(one, node)
    with pytest.raises(ResourceExhausted, match=node):
        at.publish(two, node)
    at.unpublish(one, node)
    at.publish(two, node)
    assert at.attachments(one, two) == {two: (node,)}


# -- attachments and unpublish ------------------------------------------------------


def test_attachments_list_only_published_volumes(at: Attacher, volumes: Callable[..., str]) -> None:
    published, idle, node = volumes(), volumes(), at.register()
    at.publish(published, node)
    assert at.attachments(published, idle, "fake-vol-id") == {published: (node,)}


@pytest.mark.parametrize("vid", ["fake-vol-id", volume_id_for("never-created-" + uuid.uuid4().hex)])
def test_unpublish_of_an_unknown_volume_is_ok(at: Attacher, vid: str) -> None:
    at.unpublish(vid, "fake-node-id")
    at.unpublish(vid)


def test_unpublish_of_a_volume_never_published_is_ok(at: Attacher, volumes: Callable[..., str]) -> None:
    vid = volumes()
    at.unpublish(vid, at.register())
    assert at.events(vid) == []


def test_unpublish_from_a_node_that_does_not_hold_the_volume_is_ok_and_keeps_it(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, node = volumes(), at.register()
    at.publish(vid, node)
    at.unpublish(vid, "fake-node-id")
    at.unpublish(vid, at.register())
    assert at.attachments(vid) == {vid: (node,)}


def test_unpublish_without_a_node_frees_the_volume(at: Attacher, volumes: Callable[..., str]) -> None:
    vid, node = volumes(), at.register()
    at.publish(vid, node)
    at.unpublish(vid)
    assert at.attachments(vid) == {}


# -- replicas ---------------------------------------------------------------------


def test_two_replicas_racing_for_a_single_node_volume_attach_it_once(at: Attacher, volumes: Callable[..., str], stack: Stack) -> None:
    """Two attacher apps in this process, each with its own locks and runners, as two
    replicas would be: only the log's expected-sequence check stands between them."""
    vids = [volumes() for _ in range(5)]
    first, second = at.register(), at.register()

    async def race(bus: Bus, store: EventStore) -> list[list[Any]]:
        redis = aioredis.from_url(stack.env["REDIS_URL"])
        apps: list[AttacherApp] = []
        runners: list[ProjectionRunner[Any]] = []
        for _ in range(2):
            nodes, attachments = NodesProjection(), AttachmentsProjection()
            nodes_runner = ProjectionRunner(redis, store, nodes)
            runner = ProjectionRunner(redis, store, attachments)
            await nodes_runner.start()
            await runner.start()
            runners += [nodes_runner, runner]
            apps.append(AttacherApp(Repository(store, runner, ATTACHMENTS), attachments, nodes, ProvisionerVolumes(bus)))
        try:
            outcomes = []
            for vid in vids:
                a = apps[0].publish(ControllerPublish(volume_id=vid, node_id=first, capability=SNW))
                b = apps[1].publish(ControllerPublish(volume_id=vid, node_id=second, capability=SNW))
                outcomes.append(list(await asyncio.gather(a, b, return_exceptions=True)))
            return outcomes
        finally:
            for r in runners:
                await r.stop()
            await redis.aclose()

    for vid, outcome in zip(vids, at.run(race), strict=True):
        won = [o for o in outcome if isinstance(o, PublishContext)]
        lost = [o for o in outcome if isinstance(o, FailedPrecondition)]
        assert len(won) == 1 and len(lost) == 1, outcome
        holder = won[0].context["volplane.io/node"]
        assert holder in lost[0].message
        assert [(type(e), e.node_id) for e in at.events(vid)] == [(VolumeAttached, holder)]
        assert at.attachments(vid) == {vid: (holder,)}


def test_a_second_attacher_process_keeps_a_single_node_volume_on_one_node(
    at: Attacher, volumes: Callable[..., str], stack: Stack
) -> None:
    log_path = stack.run_dir / "logs" / f"attacher-extra-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            with_parent([sys.executable, "-m", "services.attacher"]),
            env=stack.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while b'"attacher ready"' not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the second attacher did not start"
            time.sleep(0.1)
        vid, nodes = volumes(), [at.register() for _ in range(8)]

        async def race(bus: Bus, _: EventStore) -> list[Any]:
            calls = [
                bus.request(subjects.CONTROLLER_PUBLISH, ControllerPublish(volume_id=vid, node_id=n, capability=SNW), TIMEOUT)
                for n in nodes
            ]
            return list(await asyncio.gather(*calls, return_exceptions=True))

        outcomes = at.run(race)
        won = [o for o in outcomes if isinstance(o, dict)]
        assert len(won) == 1, outcomes
        # The losers were refused by the winner's record, or found the volume busy in their process.
        assert all(isinstance(o, (dict, FailedPrecondition, OperationPending)) for o in outcomes), outcomes
        holder = won[0]["context"]["volplane.io/node"]
        assert at.attachments(vid) == {vid: (holder,)}
    finally:
        proc.terminate()
        proc.wait(15)
