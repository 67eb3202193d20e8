"""Hypothesis fuzzing of the event log's readers: random and hostile events on every
subject pattern of the log, then everything still starts, serves and rebuilds (issue 14,
item 5).

Each example appends, with the admin connection (what a stolen credential allowed to
publish there could do), one to four events on ``vp.ev.volume.*``, ``vp.ev.snapshot.*``,
``vp.ev.attachment.*``, ``vp.ev.node.<node>.<id>``, ``vp.ev.nodeinfo.<node>``,
``vp.ev.res.<kind>.<ns>.<name>`` (real and unknown kinds, real and hostile names, the
subjects of objects and volumes that exist) and ``vp.ev.rec.*``: random bytes, random
msgpack, event-shaped maps of every known type with fields of the wrong types, objects
that are not valid or not of their subject, and hostile ``Vp-Event-Type`` headers.
Payloads are always invalid for their reader (an event map carries an ``at`` that is no
timestamp; an object event's object is not one of its subject): a *valid* hostile event
is a question of who may write where (issue 14, items 1–3), not of poison.

Then every reader has moved past every event, each service answers health (and again
after a restart), a CSI CreateVolume/DeleteVolume and a resource apply still work, the
readers quarantined what they skipped, no reader failed on an event, and a rebuild of
Redis from the log gives the same read models, quarantine records included.

``VOLPLANE_FUZZ_EXAMPLES`` sets ``max_examples`` (default 50, derandomized unless
``VOLPLANE_FUZZ_RANDOM=1``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.launcher import Stack
from services.nodeagent.adapters.projection import NodeProjection
from services.rebuild import all_projections
from tests.conftest import Csi, mount_cap
from tests.controlplane.conftest import Api, unique
from volplane import codec, subjects
from volplane.csi import csi_pb2 as csi
from volplane.eventstore import EventStore
from volplane.nodes import registered
from volplane.projection import ReadModels, position_key, rebuild
from volplane.quarantine import quarantined

EXAMPLES = int(os.environ.get("VOLPLANE_FUZZ_EXAMPLES", "50"))
pytestmark = pytest.mark.timeout(max(300, EXAMPLES // 2))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("VOLPLANE_FUZZ_RANDOM", "") != "1",
                database=None, suppress_health_check=list(HealthCheck), print_blob=True)
NODE = "node-1"
CAP = mount_cap()
# (reader, the subjects it follows): every projection the stack runs.
READERS = {"volumes": subjects.VOLUME_EVENTS, "snapshots": subjects.SNAPSHOT_EVENTS, "attachments": subjects.ATTACHMENT_EVENTS,
           "nodes": subjects.NODE_INFO_EVENTS, "objects": "vp.ev.res.>", f"node:{NODE}": subjects.node_events(NODE)}
# What the old failure looked like: a reader that fails on an event and follows the log again.
FAILED = re.compile(r"(projection \S+|informer) failed at")


class World:
    """The stack, a NATS connection of the admin on a loop of its own, and what exists."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(stack.env["NATS_URL"], tls=stack.client_tls()))
        self.js = self.nc.jetstream(timeout=10)
        self.published = 0

    def publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            self.loop.run_until_complete(self.js.publish(subject, data, headers=headers or None, stream=subjects.STREAM))
            self.published += 1
        except (nats.js.errors.APIError, nats.errors.Error, ValueError):
            pass  # a subject or header the server refuses: nothing reached the log

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    stack = Stack(tmp_path_factory.mktemp("vpfz-poison") / "run", env={"VOLPLANE_POOL_CAPACITY": "8Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "8Gi"})
    stack.start()
    w = World(stack)
    yield w
    w.close()
    stack.stop()


@pytest.fixture(scope="module")
def victims(world: World) -> dict[str, str]:
    """A volume, published to the node, and an object: existing aggregates to poison."""
    c, a = Csi(world.stack.csi_endpoint), Api(world.stack.api_endpoint)
    try:
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="fuzz-victim", capacity_range=csi.CapacityRange(required_bytes=2**20), volume_capabilities=[CAP])).volume
        c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE, volume_capability=CAP))
        a.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fuzz-victim"}, "provisioner": "kubernetes.io/no-provisioner"})
        return {"volume": vol.volume_id}
    finally:
        c.close()
        a.close()


# -- strategies ------------------------------------------------------------------------

S = st.sampled_from
TOKEN = st.text(alphabet="abcxyz019-_~%$éЖ😀", min_size=1, max_size=12)
JUNK_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(allow_nan=True),
                        st.text(max_size=40), st.binary(max_size=40), S(["x" * 5000, "\x00", "../../etc", "*", ">"]))
JUNK = st.recursive(JUNK_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
TYPES = ["VolumeCreating", "VolumeCreated", "VolumeCreateFailed", "VolumeExpanding", "VolumeDeleting", "VolumeDeleted", "SnapshotCreating",
         "SnapshotCreated", "SnapshotDeleted", "VolumeAttached", "VolumeDetached", "VolumeStaging", "VolumeStaged", "VolumePublishing",
         "VolumePublished", "VolumeUnstaged", "NodeRegistered", "ObjectCreated", "ObjectChanged", "ObjectDeleted", "EventRecorded",
         "", "Nope", "volumecreated", "x" * 300]
FIELDS = ["volume_id", "name", "pool", "capacity_bytes", "capabilities", "parameters", "snapshot_id", "source_volume_id", "size_bytes",
          "node_id", "topology", "pools", "max_volumes", "staging_path", "target_path", "object", "patch", "manager", "reason",
          "message", "source", "event_type", "v", "type"]
NOT_AN_INSTANT: st.SearchStrategy[Any] = S(["never", [], {}, None, 1.5, "1e999", {"at": 1}])
KIND_TOKENS = ["sc", "pv", "pvc", "pod", "node", "va", "csidriver", "persistentvolume", "PV", "pods", "x", "*", ""]


@st.composite
def event_map(draw: st.DrawFn) -> bytes:
    """An event-shaped map: a known (or unknown) type, random fields, and no valid ``at``."""
    fields = draw(st.dictionaries(S(FIELDS), JUNK, max_size=6))
    fields["type"] = draw(st.one_of(S(TYPES), JUNK))
    fields["at"] = draw(NOT_AN_INSTANT)
    return codec.pack(fields)


@st.composite
def object_event(draw: st.DrawFn) -> bytes:
    """An object event whose object is junk, or valid but of a kind no subject here holds."""
    good = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fuzz-victim-2"}, "provisioner": "x"}
    obj = draw(st.one_of(st.dictionaries(st.text(max_size=10), JUNK, max_size=5), JUNK, st.just(good),
                         st.just({**good, "metadata": {"name": 7}}), st.just({**good, "kind": "Pod", "spec": "x"})))
    body = {"type": draw(S(["ObjectCreated", "ObjectChanged", "ObjectDeleted"])), "object": obj, "manager": draw(JUNK), "patch": draw(JUNK)}
    if draw(st.booleans()):
        body["at"] = draw(NOT_AN_INSTANT)
    return codec.pack(body)


PAYLOAD = st.one_of(st.binary(max_size=300), JUNK.map(codec.pack), event_map(),
                    S([b"", b"{}", codec.pack({}), b"\xc1", b"\x92\x01", b"\xdf\xff\xff\xff\xff", b"\x00" * 4096]))


@st.composite
def subject_and_payload(draw: st.DrawFn, volume: str) -> tuple[str, bytes]:
    own = draw(st.one_of(TOKEN, st.just(volume)))
    node = draw(st.one_of(st.just(NODE), TOKEN))
    kind = draw(st.one_of(S(KIND_TOKENS), TOKEN))
    ns = draw(S(["_", "default", "kube-system", "Bad", "~"]))
    name = draw(st.one_of(S(["fuzz-victim", "x", "a~b", "UPPER"]), TOKEN))
    pattern = draw(S(["volume", "snapshot", "attachment", "node", "nodeinfo", "res", "rec", "deep"]))
    if pattern == "res":
        return f"vp.ev.res.{kind}.{ns}.{name}", draw(st.one_of(object_event(), PAYLOAD))
    if pattern == "rec":
        return f"vp.ev.rec.{kind}.{ns}.{name}", draw(PAYLOAD)
    if pattern == "node":
        return f"vp.ev.node.{node}.{own}", draw(PAYLOAD)
    if pattern == "nodeinfo":
        return f"vp.ev.nodeinfo.{node}", draw(PAYLOAD)
    if pattern == "deep":  # more tokens than the subject's kind has
        return f"vp.ev.{draw(S(['volume', 'snapshot', 'attachment', 'nodeinfo', 'res.pv._']))}.{own}.{draw(TOKEN)}", draw(PAYLOAD)
    return f"vp.ev.{pattern}.{own}", draw(PAYLOAD)


HEADERS = st.one_of(st.none(), st.fixed_dictionaries({subjects.EVENT_TYPE: st.one_of(S(TYPES), st.text(alphabet="abcXYZ 019:-_", max_size=40))}),
                    st.fixed_dictionaries({subjects.EVENT_TYPE: S(TYPES), subjects.MSG_ID: TOKEN}),
                    st.fixed_dictionaries({"traceparent": S(["00-xyz", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])}))


# -- the fuzz, then the checks ----------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_hostile_events_on_every_subject_reach_the_log(world: World, victims: dict[str, str], data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        subject, payload = data.draw(subject_and_payload(victims["volume"]))
        world.publish(subject, payload, data.draw(HEADERS))


def _positions_caught_up(world: World) -> dict[str, tuple[int, int | None]]:
    """reader → (its position, the next event on its subjects after it, None when none)."""

    async def go() -> dict[str, tuple[int, int | None]]:
        store = EventStore(world.js)
        r = redis.asyncio.Redis.from_url(world.stack.env["REDIS_URL"])
        try:
            out = {}
            for name, filter_subject in READERS.items():
                pos = int(await r.get(position_key(name)) or 0)
                out[name] = (pos, await store.next_seq(filter_subject, pos))
            return out
        finally:
            await r.aclose()

    return world.loop.run_until_complete(go())


def test_every_reader_moves_past_every_event_and_every_service_serves(world: World, victims: dict[str, str]) -> None:
    stack = world.stack
    deadline = time.monotonic() + 60
    while True:
        behind = _positions_caught_up(world)
        if all(nxt is None for _, nxt in behind.values()):
            break
        assert time.monotonic() < deadline, f"readers stuck: {behind}; see {stack.run_dir / 'logs'}"
        time.sleep(0.2)
    assert stack.dead() == [], stack.dead()
    stack.wait_healthy(stack.services, timeout=30)
    _serves(world, victims)
    # A restart replays nothing twice and starts as fast as before.
    for name in stack.services:
        stack.restart_service(name, timeout=60)
    _serves(world, victims)
    found = world.loop.run_until_complete(_quarantined(world))
    assert found or world.published == 0
    logs = {p.name: p.read_text(errors="replace") for p in (stack.run_dir / "logs").glob("*.log")}
    failures = {name: FAILED.findall(text)[:3] for name, text in logs.items() if FAILED.search(text)}
    assert failures == {}, failures


async def _quarantined(world: World) -> list[Any]:
    r = redis.asyncio.Redis.from_url(world.stack.env["REDIS_URL"])
    try:
        return await quarantined(r)
    finally:
        await r.aclose()


def _serves(world: World, victims: dict[str, str]) -> None:
    c, a = Csi(world.stack.csi_endpoint), Api(world.stack.api_endpoint)
    try:
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name=unique("after-fuzz"), capacity_range=csi.CapacityRange(required_bytes=2**20), volume_capabilities=[CAP])).volume
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        # The poisoned victims still answer: the volume unpublishes; the class is listed and changes.
        c.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=victims["volume"], node_id=NODE))
        c.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=victims["volume"], node_id=NODE, volume_capability=CAP))
        name = unique("sc")
        a.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": "kubernetes.io/no-provisioner"})
        a.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fuzz-victim", "labels": {"n": name}}, "provisioner": "kubernetes.io/no-provisioner"})
        listed = {o["metadata"]["name"]: o for o in a.list("sc")}
        assert name in listed and listed["fuzz-victim"]["metadata"]["labels"] == {"n": name}
        assert c.identity.Probe(csi.ProbeRequest()) is not None
    except grpc.RpcError as exc:
        raise AssertionError(f"{exc.code()}: {exc.details()}; see {world.stack.run_dir / 'logs'}") from None
    finally:
        c.close()
        a.close()


def test_a_rebuild_gives_the_same_read_models_and_records(world: World) -> None:
    stack = world.stack
    for name in reversed(stack.services):
        stack.stop_service(name)  # nothing writes meanwhile

    async def go() -> tuple[dict[str, Any], dict[str, Any], int]:
        r = redis.asyncio.Redis.from_url(stack.env["REDIS_URL"])
        models = ReadModels(r)
        try:
            store = EventStore(world.js)
            before = await models.dump()
            # The node projections of registered nodes: a node token only a poison event
            # names has no nodeagent, so no read model live to compare with.
            nodes = await registered(store)
            assert nodes == stack.node_ids
            projections = [p for p in await all_projections(store) if not isinstance(p, NodeProjection) or p.node in nodes]
            await rebuild(r, store, projections)
            return before, await models.dump(), len(await quarantined(r))
        finally:
            await r.aclose()

    try:
        before, after, records = world.loop.run_until_complete(go())
        assert after == before, sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))[:10]
        assert records == sum(len(v) for k, v in before.items() if k.startswith("vp:quarantine:"))
    finally:
        for name in stack.services:
            stack.start_service(name)
        stack.wait_healthy(stack.services, timeout=60)
