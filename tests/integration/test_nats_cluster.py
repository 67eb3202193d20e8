"""The event log on a 3-member nats-server cluster, the stream at 3 replicas, every client
given every member: one member killed under load loses nothing and fails nothing beyond a
CO's retries; a minority cannot write and says so in time; after healing it converges.

The services run as the launcher runs them (``devstack.launcher.Stack``), pointed at the
cluster through NATS_URL (all three members' URLs) with a Redis of the stack's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import nats.aio.msg
import pytest

from access.credentials import ADMIN, Credentials, NatsCluster
from devstack.embedded import EmbeddedServer, free_port
from devstack.launcher import Stack
from tests.co import CO
from tests.conftest import mount_cap, needs_root
from volplane import subjects
from volplane.clients import connect_once
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc
from volplane.eventstore import EventStore

pytestmark = needs_root
CAP = mount_cap()
C = grpc.StatusCode
T = TypeVar("T")
PAIRS = 200
WORKERS = 8
KILL_AFTER = 50  # pairs done before the stream leader is killed
CALL_TIMEOUT = 10.0  # a CO's deadline per call (external-provisioner's --timeout)


@dataclass
class Member:
    name: str
    server: EmbeddedServer
    url: str  # the admin's URL of this member alone


@dataclass
class Cluster:
    members: list[Member]
    stack: Stack

    @property
    def admin_url(self) -> str:
        return ",".join(m.url for m in self.members)

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)


def _members(run_dir: Path, creds: Credentials) -> list[Member]:
    names = ("a", "b", "c")
    ports = {n: (free_port(), free_port()) for n in names}
    members = []
    for name in names:
        data = run_dir / f"nats-{name}"
        data.mkdir(parents=True)
        routes = tuple(f"nats-route://127.0.0.1:{ports[o][1]}" for o in names if o != name)
        conf = data / "nats.conf"
        conf.write_text(creds.nats_config(ports[name][0], data, cluster=NatsCluster("vp-test", ports[name][1], routes, server_name=name)))
        conf.chmod(0o600)
        url = creds.nats_url(ADMIN, ports[name][0])
        members.append(Member(name, EmbeddedServer.nats_with_config(conf, ports[name][0], url), url))
    return members


async def _with_store(url: str, job: Callable[[EventStore], Awaitable[T]]) -> T:
    nc = await connect_once(url)
    try:
        return await job(EventStore(nc.jetstream(timeout=10)))
    finally:
        await nc.close()


async def _make_stream(url: str) -> None:
    """The stream at 3 replicas, once the cluster has elected its meta leader."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await _with_store(url, lambda store: store.ensure_stream(replicas=3))
            return
        except Exception:  # no meta leader yet ("JetStream system temporarily unavailable")
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _stream_leader(url: str, timeout: float = 60.0) -> str:
    """The stream's leader, once it has one and both replicas are current: after a member
    restarts, the stream may be electing, or the member still catching up."""
    deadline = time.monotonic() + timeout
    while True:
        nc = await connect_once(url)
        try:
            info = await nc.jetstream(timeout=5).stream_info(subjects.STREAM)
            replicas = (info.cluster.replicas or []) if info.cluster is not None else []
            if info.cluster is not None and info.cluster.leader and len(replicas) == 2 and all(r.current for r in replicas):
                return info.cluster.leader
            state = info.cluster
        except Exception as exc:  # noqa: BLE001 - no leader yet: "JetStream system temporarily unavailable"
            state = exc
        finally:
            await nc.close()
        assert time.monotonic() < deadline, f"the stream has no leader with two current replicas: {state}"
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("nats-cluster")
    creds = Credentials.load_or_create(run_dir, nodes=["node-1"])
    members = _members(run_dir, creds)
    stack: Stack | None = None
    try:
        for m in members:
            m.server.start()
        urls = ",".join(m.url for m in members)
        asyncio.run(_make_stream(urls))
        stack = Stack(run_dir, env={"NATS_URL": urls, "VOLPLANE_SHARED_POOL_CAPACITY": "64Gi"})
        stack.start()
        yield Cluster(members, stack)
    finally:
        if stack is not None:
            stack.stop()
        for m in members:
            if m.server.proc is not None and m.server.proc.poll() is None:
                os.kill(m.server.proc.pid, signal.SIGCONT)
            m.server.stop()


async def _pairs(cluster: Cluster, kill: Callable[[], Awaitable[float]]) -> tuple[list[tuple[float, float, str]], float, CO]:
    """PAIRS create+delete pairs on WORKERS workers; ``kill`` runs once KILL_AFTER are done
    and returns when it struck. Returns (start, end, volume id) per pair, the kill's time."""
    co = CO(cluster.stack.csi_endpoint)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(PAIRS):
        queue.put_nowait(i)
    done: list[tuple[float, float, str]] = []
    killed = asyncio.get_running_loop().create_future()

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.monotonic()
            request = csi.CreateVolumeRequest(name=f"cluster-{i}", capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[CAP])
            created = await co.call("CreateVolume", co.stub.CreateVolume, request)
            vid = created.volume.volume_id
            await co.call("DeleteVolume", co.stub.DeleteVolume, csi.DeleteVolumeRequest(volume_id=vid))
            done.append((started, time.monotonic(), vid))
            if len(done) == KILL_AFTER and not killed.done():
                killed.set_result(await kill())

    try:
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    finally:
        await co.channel.close()
    return done, killed.result(), co


async def _volume_events(url: str, vids: list[str]) -> dict[str, Counter[str]]:
    async def read(store: EventStore) -> dict[str, Counter[str]]:
        out = {}
        for vid in vids:
            out[vid] = Counter(r.type for r in await store.read(subjects.volume(vid)))
        out["<every volume in the log>"] = Counter({s.rsplit(".", 1)[1]: 1 for s in await store.subjects(subjects.VOLUME_EVENTS)})
        return out

    return await _with_store(url, read)


def test_killing_the_stream_leader_under_load_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    leader = asyncio.run(_stream_leader(cluster.admin_url))
    victim = cluster.member(leader)
    survivors = ",".join(m.url for m in cluster.members if m is not victim)

    async def kill() -> float:
        assert victim.server.proc is not None
        os.kill(victim.server.proc.pid, signal.SIGKILL)
        return time.monotonic()

    began = time.monotonic()
    try:
        pairs, killed_at, co = asyncio.run(_pairs(cluster, kill))
        total = time.monotonic() - began
        vids = [vid for _, _, vid in pairs]
        assert len(pairs) == PAIRS and len(set(vids)) == PAIRS
        # Around the kill: every pair running at the moment it struck, or started after it
        # while the cluster was electing a new leader (within 15 s of it).
        around = [end - start for start, end, _ in pairs if end >= killed_at and start <= killed_at + 15]
        longest = max(around)
        print(f"\n{PAIRS} pairs in {total:.1f} s; killed the stream leader {leader} after {KILL_AFTER};"
              f" {len(around)} pairs around the kill, the longest {longest:.2f} s; CO retries: {dict(co.retries) or 'none'}")
        events = asyncio.run(_volume_events(survivors, vids))
        every = events.pop("<every volume in the log>")
        assert set(every) == set(vids), "a volume in the log that no CO asked for (a duplicate), or one missing"
        for vid, kinds in events.items():
            assert kinds["VolumeCreated"] == 1 and kinds["VolumeDeleted"] == 1, (vid, kinds)
        leaked = [p for pool in ("shared", "node-1") if cluster.stack.pool_dir(pool).exists() for p in os.listdir(cluster.stack.pool_dir(pool)) if p.endswith(".img")]
        assert leaked == []
        assert longest <= 15.0, f"a pair took {longest:.1f} s around the kill"
        assert not cluster.stack.dead()
    finally:
        victim.server.start()  # back for the next test: it catches up from the others


def _stop(member: Member, sig: signal.Signals) -> None:
    assert member.server.proc is not None
    os.kill(member.server.proc.pid, sig)


async def _answers_within(url: str, deadline: float) -> tuple[C, float, str]:
    channel = grpc.aio.insecure_channel(url)
    try:
        started = time.monotonic()
        request = csi.CreateVolumeRequest(name="minority", capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[CAP])
        try:
            await rpc.ControllerStub(channel).CreateVolume(request, timeout=deadline)
            return C.OK, time.monotonic() - started, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), time.monotonic() - started, exc.details() or ""
    finally:
        await channel.close()


async def _wait_until_served(url: str, timeout: float) -> None:
    """Until the services answer their health checks through the member at ``url`` alone:
    they have all moved there."""
    from volplane.clients import answers

    names = ("vp.health.provisioner", "vp.health.attacher")
    began = time.monotonic()
    while not all([await answers(url, n, timeout=1.0) for n in names]):
        assert time.monotonic() < began + timeout, f"the services did not move to the remaining member within {timeout:.0f} s"
        await asyncio.sleep(0.2)
    print(f"\nminority: the services answered through the remaining member {time.monotonic() - began:.1f} s after the freeze")


def test_a_minority_answers_unavailable_in_time_and_converges_after_healing(cluster: Cluster) -> None:
    # Wait until the member restarted by the kill test is current again, so that the
    # minority is exactly one member of an otherwise healthy cluster.
    asyncio.run(_stream_leader(cluster.admin_url))
    alone, frozen = cluster.members[0], cluster.members[1:]
    for m in frozen:
        _stop(m, signal.SIGSTOP)
    try:
        # The clients notice in 4-6 s (2 pings unanswered) and may try a frozen member at 2 s
        # each; the routes drop the frozen members' interest in 4-6 s: 5-10 s on a quiet
        # machine. The rest is room for a loaded one.
        asyncio.run(_wait_until_served(alone.url, 45))
        code, took, details = asyncio.run(_answers_within(cluster.stack.csi_endpoint, CALL_TIMEOUT))
        print(f"\nminority: CreateVolume answered {code.name} after {took:.2f} s ({details})")
        assert code == C.UNAVAILABLE, (code, details)
        assert took < CALL_TIMEOUT
    finally:
        for m in frozen:
            _stop(m, signal.SIGCONT)
    healed = time.monotonic()

    async def converge() -> str:
        co = CO(cluster.stack.csi_endpoint)
        try:
            request = csi.CreateVolumeRequest(name="minority", capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[CAP])
            vid = (await co.call("CreateVolume", co.stub.CreateVolume, request, give_up=60)).volume.volume_id
            await co.call("DeleteVolume", co.stub.DeleteVolume, csi.DeleteVolumeRequest(volume_id=vid), give_up=60)
            return vid
        finally:
            await co.channel.close()

    vid = asyncio.run(converge())
    print(f"healed: the same CreateVolume and its DeleteVolume succeeded {time.monotonic() - healed:.1f} s after SIGCONT")
    kinds = asyncio.run(_volume_events(cluster.admin_url, [vid]))[vid]
    assert kinds["VolumeCreated"] == 1 and kinds["VolumeDeleted"] == 1, kinds
    assert not cluster.stack.dead()


def test_reads_of_a_replicated_log_go_to_its_leader(cluster: Cluster) -> None:
    """A direct get is answered by any replica, and one that is behind would miss an event
    another process has just appended: on an R3 stream, single events are read from the
    leader (STREAM.MSG.GET), never by direct get."""

    async def scenario() -> tuple[list[str], list[str], int]:
        spy = await connect_once(cluster.admin_url)
        nc = await connect_once(cluster.admin_url)
        try:
            seen: list[tuple[str, str]] = []  # (subject, reply) of every read by any process

            async def note(msg: nats.aio.msg.Msg) -> None:
                seen.append((msg.subject, msg.reply))

            await spy.subscribe("$JS.API.DIRECT.GET.>", cb=note)
            await spy.subscribe(f"$JS.API.STREAM.MSG.GET.{subjects.STREAM}", cb=note)
            await spy.flush()
            store = EventStore(nc.jetstream(timeout=10))
            await store.require_stream()  # as every service does before it reads
            aggregates = await store.subjects("vp.ev.>")
            assert aggregates, "the stack wrote no event yet"
            newest = await store.last(aggregates[0])
            history = await store.read(aggregates[0])
            assert newest is not None and history and history[-1].seq == newest.seq
            await asyncio.sleep(0.2)  # the spy's copies of the requests
            # The stack's services read the log too (their completers, DeleteVolume's check):
            # this store's own requests are those answered on its connection's reply prefix.
            ours = (nc._resp_sub_prefix or b"").decode()
            assert ours
            return [s for s, _ in seen], [s for s, reply in seen if reply.startswith(ours)], len(history)
        finally:
            await spy.close()
            await nc.close()

    every, mine, events = asyncio.run(scenario())
    assert mine and all(s == f"$JS.API.STREAM.MSG.GET.{subjects.STREAM}" for s in every), every
    assert len(mine) == events + 2, mine  # the last, then each event and the read's end
