"""Least privilege, tried as an intruder would: with each identity's credentials from a
two-node stack (each service, a node's nodeagent and node plugin, an unknown client), do
what it must never do — purge, update or delete the event log's stream; delete or create a
durable consumer; write another aggregate's events, another node's events or commands, a
controller's subjects; read another identity's inbox; Redis CONFIG SET, FLUSHALL, DEBUG,
KEYS, another service's keys — and see each refused while the stack stays healthy.

What the identities need is exercised by the rest of the suite, which runs as them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
import redis
import redis.exceptions
from nats.js import api

from access.credentials import ADMIN, REBUILD, REDIS_USER, Credentials, inbox_prefix
from devstack.launcher import Stack
from volplane import subjects

pytestmark = pytest.mark.timeout(300)

NODES = ("node-1", "node-2")
# The stream's administration and other consumers: no service's business.
ADMIN_API = (
    f"$JS.API.STREAM.PURGE.{subjects.STREAM}",
    f"$JS.API.STREAM.DELETE.{subjects.STREAM}",
    f"$JS.API.STREAM.UPDATE.{subjects.STREAM}",
    f"$JS.API.STREAM.CREATE.{subjects.STREAM}",
    f"$JS.API.STREAM.MSG.DELETE.{subjects.STREAM}",
    f"$JS.API.CONSUMER.DELETE.{subjects.STREAM}.probe",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.STREAM}.mine",
    f"$JS.API.CONSUMER.CREATE.{subjects.STREAM}.mine.vp.ev.volume.>",
    "$JS.API.STREAM.LIST",
    "$JS.API.ACCOUNT.PURGE.>",
    # The image transfer store's, likewise (a node reads and discards transfers, no more).
    f"$JS.API.STREAM.DELETE.{subjects.TRANSFER_STREAM}",
    f"$JS.API.STREAM.UPDATE.{subjects.TRANSFER_STREAM}",
    f"$JS.API.STREAM.CREATE.{subjects.TRANSFER_STREAM}",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.TRANSFER_STREAM}.mine",
)
# Another node's transfer (its key starts with that node's token): a manifest and a chunk.
NODE_1_TRANSFER = ("vp.xfer.m.node-1.snapshot.ffffffffffffffffffffffffffffffff", "vp.xfer.c.node-1.snapshot.ffffffffffffffffffffffffffffffff.0.1000.00")
VOLUME = "vp.ev.volume.ffffffffffffffffffffffffffffffff"
ATTACHMENT = "vp.ev.attachment.ffffffffffffffffffffffffffffffff"
# Identity → what it must not publish to, beyond ADMIN_API (which every identity is refused).
REFUSED_PUBLISH: dict[str, tuple[str, ...]] = {
    "provisioner": (ATTACHMENT, "vp.ev.node.node-1.x", "vp.ev.nodeinfo.node-1", "vp.cmd.node.node-1.stage", "vp.cmd.provisioner.create_volume"),
    "attacher": (VOLUME, "vp.ev.node.node-1.x", "vp.cmd.node.node-1.stage", "vp.cmd.provisioner.create_volume"),
    # A node: not another node's events or registration, commands to another node or to the
    # controllers, nor any controller's aggregates.
    "nodeagent-node-2": (
        "vp.ev.node.node-1.x", "vp.ev.nodeinfo.node-1", "vp.cmd.node.node-1.stage", "vp.cmd.node.node-2.stage",
        VOLUME, ATTACHMENT, "vp.cmd.provisioner.create_volume", "vp.cmd.attacher.publish", "vp.health.nodeagent.node-1",
        # Nor command another node's pool, or the shared pool: only the provisioner asks for image work.
        "vp.cmd.pool.node.node-1.remove", "vp.cmd.pool.shared.remove", "vp.cmd.pool.node.node-1.make",
        # Nor store under another node's transfer keys (it asks that node to send instead).
        *NODE_1_TRANSFER,
    ),
    # Node 2's plugin: its own node's commands and nothing else, the log included.
    "apigw-node-2": (
        "vp.cmd.node.node-1.stage", "vp.cmd.provisioner.create_volume", "vp.cmd.attacher.publish", VOLUME,
        # Its node's images are the nodeagent's, asked by the provisioner only.
        "vp.cmd.pool.node.node-2.remove", "vp.cmd.pool.shared.remove",
        "vp.ev.node.node-2.x", f"$JS.API.STREAM.INFO.{subjects.STREAM}", f"$JS.API.CONSUMER.CREATE.{subjects.STREAM}",
        # Nor ask for images or touch the transfer store: the nodeagent's business.
        "vp.cmd.pool.node.node-1.send", "vp.xfer.m.node-2.snapshot.x", f"$JS.API.STREAM.PURGE.{subjects.TRANSFER_STREAM}",
    ),
    # The controller part (and node 1's plugin): commands, not a node's or another service's events.
    "apigw": (VOLUME, ATTACHMENT, "vp.ev.node.node-1.x", "vp.cmd.node.node-2.stage", "vp.cmd.pool.node.node-1.remove", "vp.cmd.pool.shared.remove", *NODE_1_TRANSFER),
}
# Identity → what it must not receive: another node's commands, every inbox, the controllers' commands.
REFUSED_SUBSCRIBE: dict[str, tuple[str, ...]] = {
    "provisioner": ("_INBOX.>", "_INBOX.apigw.>", "vp.cmd.attacher.>", "vp.ev.>"),
    "attacher": ("_INBOX.>", "vp.cmd.provisioner.>"),
    "nodeagent-node-2": ("vp.cmd.node.node-1.>", "vp.cmd.node.>", "vp.cmd.pool.node.node-1.>", "vp.cmd.pool.>", "_INBOX.>", "_INBOX.nodeagent-node-1.>", "vp.cmd.provisioner.>"),
    "apigw-node-2": ("vp.cmd.node.>", "_INBOX.>", "_INBOX.apigw.>"),
    "apigw": ("_INBOX.>", "vp.cmd.provisioner.>", "vp.cmd.node.>"),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("least-privilege"), env={"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "16Gi"}, nodes=len(NODES))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def creds(stack: Stack) -> Credentials:
    return Credentials.load_or_create(stack.run_dir)


def _port(stack: Stack) -> int:
    assert stack.nats is not None
    return stack.nats.port


async def _violations(stack: Stack, user: str, password: str, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = ()) -> set[str]:
    """The subjects the server refused ``user`` to publish or subscribe to, of those tried,
    as nats-server logs them (the client hears of them too, but not reliably of each one)."""
    assert stack.nats is not None
    log = stack.nats.log_path
    offset = log.stat().st_size
    url = f"nats://{user}:{password}@127.0.0.1:{stack.nats.port}"
    nc = await nats.connect(url, inbox_prefix=inbox_prefix(user), error_cb=_ignore, max_reconnect_attempts=0, allow_reconnect=False, tls=stack.client_tls())
    try:
        for subject in subscribe:
            await nc.subscribe(subject)
        for subject in publish:
            await nc.publish(subject, b"\x80")  # an empty msgpack map: a hostile event's body
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    lines = log.read_bytes()[offset:].decode(errors="replace").splitlines()
    refused = set()
    for line in lines:
        if f'"$G/user:{user}"' in line and "Violation - Subject" in line:
            refused.add(line.split('Subject "', 1)[1].split('"', 1)[0])
    return refused & {*publish, *subscribe}


@pytest.mark.parametrize("user", sorted(REFUSED_PUBLISH))
def test_an_identity_may_not_administer_the_log_nor_step_outside_its_role(stack: Stack, creds: Credentials, user: str) -> None:
    assert set(creds.nats) >= set(REFUSED_PUBLISH)
    tried = (*ADMIN_API, *REFUSED_PUBLISH[user])
    refused = asyncio.run(_violations(stack, user, creds.nats[user], publish=tried, subscribe=REFUSED_SUBSCRIBE[user]))
    assert refused == {*tried, *REFUSED_SUBSCRIBE[user]}, f"{user} was allowed: {sorted({*tried, *REFUSED_SUBSCRIBE[user]} - refused)}"
    assert not stack.dead()


def test_what_each_node_needs_is_still_allowed(stack: Stack, creds: Credentials) -> None:
    # The permissions themselves: the rest of the suite exercises them end to end.
    url, port, pw = creds.nats_url, _port(stack), creds.nats
    assert asyncio.run(_violations(
        stack, "nodeagent-node-2", pw["nodeagent-node-2"],
        # Its registration; and for a restore from node 1's pool: node 1's send, the transfer store's API.
        publish=("vp.ev.nodeinfo.node-2", "vp.cmd.pool.node.node-1.send", f"$JS.API.STREAM.INFO.{subjects.TRANSFER_STREAM}"),
        subscribe=("vp.cmd.node.node-2.probe", "vp.cmd.pool.node.node-2.probe", "vp.cmd.pool.shared.probe"),
    )) == set()
    assert asyncio.run(_violations(stack, "apigw-node-2", pw["apigw-node-2"], publish=("vp.cmd.node.node-2.probe",))) == set()
    assert asyncio.run(_violations(stack, "apigw", pw["apigw"], publish=("vp.cmd.provisioner.probe", "vp.cmd.node.node-1.probe"))) == set()

    async def limits(user: str) -> bool:
        # Node 2's plugin asks node 2's nodeagent, as NodeGetInfo does, and gets the answer.
        nc = await nats.connect(url(user, port), inbox_prefix=inbox_prefix(user), tls=stack.client_tls())
        try:
            await nc.request(subjects.node_command("node-2", subjects.NODE_LIMITS), b"\x80", timeout=5)
            return True
        finally:
            await nc.close()

    assert asyncio.run(limits("apigw-node-2"))


def test_the_log_survives_every_identitys_attempts(stack: Stack, creds: Credentials) -> None:
    port = _port(stack)

    async def go() -> None:
        admin = await nats.connect(creds.nats_url(ADMIN, port), tls=stack.client_tls())
        try:
            jsm = admin.jetstream()
            await jsm.add_consumer(subjects.STREAM, durable_name="probe", deliver_policy=api.DeliverPolicy.LAST)
            before = (await jsm.stream_info(subjects.STREAM)).state
            for user in REFUSED_PUBLISH:
                nc = await nats.connect(creds.nats_url(user, port), inbox_prefix=inbox_prefix(user), error_cb=_ignore, tls=stack.client_tls())
                js = nc.jetstream(timeout=1)
                try:
                    for attempt in (
                        js.purge_stream(subjects.STREAM),
                        js.delete_stream(subjects.STREAM),
                        js.update_stream(api.StreamConfig(name=subjects.STREAM, subjects=["vp.>"])),
                        js.delete_consumer(subjects.STREAM, "probe"),
                        js.add_consumer(subjects.STREAM, durable_name=f"mine-{user}"),
                        js.delete_msg(subjects.STREAM, 1),
                    ):
                        with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                            await attempt
                    # An appended event another role owns is never stored (no acknowledgement).
                    with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                        await js.publish(VOLUME if user != "provisioner" else ATTACHMENT, b"\x80", stream=subjects.STREAM)
                finally:
                    await nc.close()
            after = await jsm.stream_info(subjects.STREAM)
            assert after.config.subjects == [subjects.EVENTS]
            assert after.state.first_seq == before.first_seq and after.state.last_seq >= before.last_seq
            assert (await jsm.consumer_info(subjects.STREAM, "probe")).name == "probe"
            names = [c.name for c in await jsm.consumers_info(subjects.STREAM)]
            assert not [n for n in names if n.startswith("mine-")], names
            for subject in (VOLUME, ATTACHMENT):
                with pytest.raises(nats.js.errors.NotFoundError):
                    await jsm.get_last_msg(subjects.STREAM, subject)
            await jsm.delete_consumer(subjects.STREAM, "probe")
        finally:
            await admin.close()

    asyncio.run(go())
    assert not stack.dead()


async def _ignore(exc: Exception) -> None:
    pass


def test_an_unknown_client_is_not_let_in(stack: Stack, creds: Credentials) -> None:
    port = _port(stack)

    async def connect(url: str) -> None:
        # With the CA and a client certificate: what keeps it out is its login, not TLS.
        nc = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2, error_cb=_ignore, tls=stack.client_tls())
        await nc.close()

    for url in (f"nats://127.0.0.1:{port}", f"nats://nodeagent-node-3:guess@127.0.0.1:{port}", f"nats://nodeagent-node-2:{creds.nats['nodeagent-node-1']}@127.0.0.1:{port}"):
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises several types for a refused login
            asyncio.run(connect(url))
    assert stack.redis is not None and stack.redis.socket is not None
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(unix_socket_path=str(stack.redis.socket)).ping()


# Redis: commands no identity may run, and keys that are another's.
DANGEROUS = (
    ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"), ("FLUSHALL",), ("FLUSHDB",), ("DEBUG", "SLEEP", "0"),
    ("KEYS", "*"), ("SHUTDOWN", "NOSAVE"), ("SAVE",), ("BGSAVE",), ("MODULE", "LIST"), ("ACL", "LIST"), ("MONITOR",),
    ("REPLICAOF", "127.0.0.1", "1"), ("MIGRATE", "127.0.0.1", "1", "vp:x", "0", "1"),
)
OTHERS_KEYS: dict[str, tuple[str, ...]] = {
    "provisioner": ("vp:node:node-1:vol:x", "vp:obj:pv:x", "vp:pos:objects", "vp:pos:node:node-1", "outside"),
    "attacher": ("vp:vol:x", "vp:snap:x", "vp:node:node-1:vol:x", "vp:obj:pv:x", "vp:pos:volumes"),
    "nodeagent-node-2": ("vp:node:node-1:vol:x", "vp:node:node-1:inflight", "vp:pos:node:node-1", "vp:vol:x", "vp:attach:vol:x", "vp:nodes", "vp:obj:pv:x"),
    "apigw": ("vp:vol:x", "vp:attach:vol:x", "vp:node:node-1:vol:x", "vp:pos:volumes"),
    REBUILD: ("outside",),
}


def _redis_as(stack: Stack, creds: Credentials, user: str) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url_of(user))


@pytest.mark.parametrize("user", [*sorted(OTHERS_KEYS), REDIS_USER])
def test_no_redis_user_may_reconfigure_flush_or_debug_the_server(stack: Stack, creds: Credentials, user: str) -> None:
    r = _redis_as(stack, creds, user)
    assert r.ping()
    for command in DANGEROUS:
        if user == REDIS_USER and command[0] in ("FLUSHALL", "FLUSHDB", "KEYS"):
            continue  # the operator's (tests flush between runs); still no server configuration
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)
    assert not stack.dead()


@pytest.mark.parametrize("user", sorted(OTHERS_KEYS))
def test_a_redis_user_may_not_touch_another_services_keys(stack: Stack, creds: Credentials, user: str) -> None:
    r = _redis_as(stack, creds, user)
    for key in OTHERS_KEYS[user]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set(key, b"x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.get(key)
        # Not through a script either: Redis checks the keys a script's commands touch.
        with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)noperm|permission|can't access"):
            r.eval("return redis.call('SET', ARGV[1], 'x')", 0, key)


def test_a_node_has_no_redis_key_of_any_other_node_and_a_node_plugin_no_redis_user(stack: Stack, creds: Credentials) -> None:
    assert "apigw-node-2" not in creds.redis  # the node plugin keeps no read model
    r = _redis_as(stack, creds, "nodeagent-node-2")
    r.set("vp:node:node-2:probe", b"x")  # its own node's prefix
    assert r.get("vp:node:node-2:probe") == b"x"
    r.delete("vp:node:node-2:probe")
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.scan(0, match="vp:*")  # listing keys is the rebuild tool's and the resource API's


def test_the_rebuild_tool_has_its_own_user_limited_to_volplanes_keys(stack: Stack, creds: Credentials) -> None:
    r = _redis_as(stack, creds, REBUILD)
    assert isinstance(r.scan(0, match="vp:*"), tuple)
    r.set("vp:rebuild-probe", b"x")
    assert r.delete("vp:rebuild-probe") == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.set("outside", b"x")


def test_credentials_cover_each_node_and_keep_their_passwords(stack: Stack, tmp_path: Path) -> None:
    one = Credentials.load_or_create(tmp_path, nodes=("node-1",))
    two = Credentials.load_or_create(tmp_path, nodes=("node-1", "node-2"))
    assert {"nodeagent-node-1", "nodeagent-node-2", "apigw", "apigw-node-2"} <= set(two.nats)
    assert "nodeagent-node-2" not in one.nats
    assert all(two.nats[u] == p for u, p in one.nats.items())  # a new node draws new passwords only for itself
    assert Credentials.load_or_create(tmp_path) == two  # a tool beside the stack reads what is there


def _operations(stack: Stack, service: str, operation: str) -> float:
    """How many ``operation`` commands ``service`` has handled, whatever their result."""
    import urllib.request

    with urllib.request.urlopen(f"http://{stack.metrics[service]}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    prefix = "volplane_operations_seconds_count{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'service="{service}"' in line and f'operation="{operation}"' in line
    )


def test_a_node_may_not_have_the_log_deliver_its_events_to_a_controllers_commands(stack: Stack, creds: Credentials) -> None:
    # The confused deputy: a node writes a command's body to its own subject, then asks
    # JetStream to push that subject to the provisioner's command subject, in its queue
    # group: nats-server does not check the deliver subject against the creator's rights.
    from volplane import codec

    user = "nodeagent-node-2"
    # A delivery keeps its stored subject, whose last token the provisioner's metrics name.
    before = _operations(stack, "provisioner", "deliver-probe")

    async def attack() -> None:
        nc = await nats.connect(creds.nats_url(user, _port(stack)), inbox_prefix=inbox_prefix(user), error_cb=_ignore, tls=stack.client_tls())
        try:
            js = nc.jetstream(timeout=2)
            evil = "vp.ev.node.node-2.deliver-probe"
            await js.publish(evil, codec.pack({"volume_id": "f" * 32}), stream=subjects.STREAM)
            try:
                await js.add_consumer(subjects.STREAM, config=api.ConsumerConfig(filter_subject=evil, deliver_subject=subjects.GET_VOLUME, deliver_group=subjects.queue("provisioner"), ack_policy=api.AckPolicy.NONE))
            except (nats.errors.Error, TimeoutError):
                return  # refused: what we want
            await asyncio.sleep(1.5)
        finally:
            await nc.close()

    asyncio.run(attack())
    assert _operations(stack, "provisioner", "deliver-probe") == before


def test_the_stream_is_created_and_upgraded_by_the_administrator_only(tmp_path: Path) -> None:
    from devstack.launcher import ensure_event_log

    s = Stack(tmp_path / "run", nodes=2)
    s.start_servers()
    try:
        assert s.creds is not None and s.nats is not None
        for user in ("provisioner", "nodeagent-node-2"):
            with pytest.raises((nats.errors.Error, TimeoutError)):
                asyncio.run(ensure_event_log(s.creds.nats_url(user, s.nats.port), tls=s.client_tls()))
        s.ensure_event_log()

        async def settings(change: bool) -> tuple[bool, float]:
            nc = await nats.connect(s.env["NATS_URL"], tls=s.client_tls())
            try:
                js = nc.jetstream()
                config = (await js.stream_info(subjects.STREAM)).config
                if change:  # an older install's stream
                    await js.update_stream(config.evolve(allow_direct=False, duplicate_window=10.0))
                    config = (await js.stream_info(subjects.STREAM)).config
                return bool(config.allow_direct), float(config.duplicate_window or 0)
            finally:
                await nc.close()

        assert asyncio.run(settings(change=True)) == (False, 10.0)
        asyncio.run(ensure_event_log(s.env["NATS_URL"], tls=s.client_tls()))  # the install step, run again on upgrade
        assert asyncio.run(settings(change=False)) == (True, 120.0)
    finally:
        s.stop()
