"""On the wire: the embedded default's nats-server speaks TLS only and wants a client
certificate of the stack's own CA; its Redis listens on no network port at all (a unix
socket in a 0700 directory), or — given a redis-server built with TLS — TLS only; every
service connects that way (the whole suite runs on such stacks), and a client that is not
the CA's is turned away: plaintext, no CA, another CA, no client certificate. Routes
between nats-servers of a cluster use the same certificates.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis
import redis.exceptions

from access.credentials import ADMIN, Credentials, NatsCluster
from access.tls import Certificates
from devstack.embedded import EmbeddedServer, free_port
from devstack.launcher import Stack
from services import catalog
from tests.conftest import Csi, mount_cap
from volplane.clients import client_tls
from volplane.csi import csi_pb2 as csi


async def _ignore(exc: Exception) -> None:
    pass


def _connects(url: str, tls: object = None) -> bool:
    """Whether a NATS client gets in at ``url`` with ``tls`` (None: nats-py's default, the system's CAs)."""

    async def go() -> None:
        extra = {"tls": tls} if tls is not None else {}
        nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0, error_cb=_ignore, **extra)
        try:
            await nc.flush(timeout=3)
        finally:
            await nc.close()

    try:
        asyncio.run(go())
        return True
    except Exception:  # noqa: BLE001 - nats-py and ssl raise several types for a refusal
        return False


def _plaintext_answer(port: int, user: str, password: str) -> tuple[dict[str, object], bytes]:
    """A client that speaks the NATS protocol without TLS: the server's INFO, then what it
    answers a CONNECT with the right password and a PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        info = s.makefile("rb").readline()
        assert info.startswith(b"INFO "), info
        s.sendall(b"CONNECT " + json.dumps({"verbose": False, "user": user, "pass": password}).encode() + b"\r\nPING\r\n")
        answer = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer += chunk
    return json.loads(info[5:]), answer


def test_tls_files_are_for_root_only(stack: Stack) -> None:
    assert stack.certs is not None
    assert stat.S_IMODE(stack.certs.dir.stat().st_mode) == 0o700
    for path in stack.certs.files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_every_process_is_told_to_connect_with_tls(stack: Stack) -> None:
    assert stack.certs is not None
    for name, proc in stack.procs.items():
        environ = dict(v.partition(b"=")[::2] for v in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0") if v)
        assert environ[b"NATS_URL"].startswith(b"tls://"), name
        assert environ[b"VOLPLANE_TLS_CA"] == str(stack.certs.ca).encode(), name
        assert environ[b"REDIS_URL"].startswith(b"unix://"), name


def test_the_nats_server_refuses_plaintext_clients(stack: Stack) -> None:
    assert stack.nats is not None and stack.creds is not None
    info, answer = _plaintext_answer(stack.nats.port, ADMIN, stack.creds.nats[ADMIN])
    assert info.get("tls_required") is True
    # The right password in plaintext gets nothing, not even an error: the server takes the
    # bytes for a TLS handshake, which they are not, and hangs up.
    assert answer == b"", answer


def test_a_client_without_the_ca_or_with_another_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    assert stack.certs is not None
    url = stack.nats_url_of(ADMIN)
    other = Certificates.load_or_create(tmp_path / "other")
    assert not _connects(url)  # nats-py's default: the system's CAs, which never signed ours
    assert not _connects(url, client_tls(other.ca, other.client_cert, other.client_key))
    # Our CA, but another CA's client certificate: the server refuses the client.
    assert not _connects(url, client_tls(stack.certs.ca, other.client_cert, other.client_key))


def test_a_client_without_a_client_certificate_is_refused(stack: Stack) -> None:
    assert stack.certs is not None
    assert not _connects(stack.nats_url_of(ADMIN), client_tls(stack.certs.ca))
    assert _connects(stack.nats_url_of(ADMIN), stack.client_tls())


def test_redis_listens_on_no_network_port_and_only_root_reaches_it(stack: Stack) -> None:
    assert stack.redis is not None and stack.redis.socket is not None and stack.redis.proc is not None
    assert "--port" in stack.redis.argv and stack.redis.argv[stack.redis.argv.index("--port") + 1] == "0"
    # No listening TCP socket belongs to the redis-server process.
    inodes = set()
    for fd in Path(f"/proc/{stack.redis.proc.pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append(fields[1])
    assert listening == []
    assert stat.S_IMODE(stack.redis.socket.parent.stat().st_mode) == 0o700
    # Another local user cannot even reach the socket.
    probe = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(stack.redis.socket)!r})"
    out = subprocess.run(["python3", "-c", probe], user=65534, group=65534, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "PermissionError" in out.stderr, out.stderr


def test_tls_can_be_turned_off_for_a_comparison(tmp_path: Path) -> None:
    s = Stack(tmp_path / "run", env={"VOLPLANE_TLS": "off"})
    s.start_servers()
    try:
        assert s.certs is None and not (s.run_dir / "tls").exists()
        assert s.env["NATS_URL"].startswith("nats://") and s.client_tls() is None
        assert _connects(s.env["NATS_URL"])
    finally:
        s.stop()


# --- a redis-server built with TLS --------------------------------------------------------


def _tls_redis_server() -> str | None:
    """A redis-server on this machine that knows TLS (Debian's does; the pip package's does not)."""
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", shutil.which("redis-server")):
        if not candidate or not os.path.exists(candidate):
            continue
        out = subprocess.run([candidate, "--port", "0", "--tls-port", "0", "--save", ""], capture_output=True, text=True, timeout=30)
        if "Bad directive" not in out.stdout + out.stderr:
            return candidate
    return None


@pytest.fixture(scope="module")
def tls_redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = _tls_redis_server()
    if server is None:
        pytest.skip("no redis-server built with TLS here (Debian's redis-server package has one); the pip package's has no TLS")
    s = Stack(tmp_path_factory.mktemp("tls-redis") / "run", env={"VOLPLANE_REDIS_SERVER": server, "VOLPLANE_POOL_CAPACITY": "4Gi"})
    s.start()
    yield s
    s.stop()


def test_the_whole_stack_works_over_tls_to_redis(tls_redis_stack: Stack) -> None:
    s = tls_redis_stack
    assert s.env["REDIS_URL"].startswith("rediss://")
    c = Csi(s.csi_endpoint)
    try:
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name="over-tls", capacity_range=csi.CapacityRange(required_bytes=1 << 20), volume_capabilities=[mount_cap()]), timeout=30)
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume.volume_id), timeout=30)
    finally:
        c.close()
    assert not s.dead()


def test_redis_refuses_plaintext_and_strangers_to_its_ca(tls_redis_stack: Stack, tmp_path: Path) -> None:
    s = tls_redis_stack
    assert s.redis is not None and s.certs is not None and s.creds is not None
    url = s.redis_url_of("provisioner")
    plain = url.replace("rediss://", "redis://", 1)
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=5).ping()
    other = Certificates.load_or_create(tmp_path / "other")
    tries = {
        "no CA (the system's)": {},
        "another CA": {"ssl_ca_certs": str(other.ca), "ssl_certfile": str(s.certs.client_cert), "ssl_keyfile": str(s.certs.client_key)},
        "no client certificate": {"ssl_ca_certs": str(s.certs.ca)},
        "another CA's client certificate": {"ssl_ca_certs": str(s.certs.ca), "ssl_certfile": str(other.client_cert), "ssl_keyfile": str(other.client_key)},
    }
    for what, kwargs in tries.items():
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(url, socket_timeout=5, **kwargs).ping()
            pytest.fail(f"{what}: let in")
    ours = {"ssl_ca_certs": str(s.certs.ca), "ssl_certfile": str(s.certs.client_cert), "ssl_keyfile": str(s.certs.client_key)}
    assert redis.Redis.from_url(url, socket_timeout=5, **ours).ping()


# --- a cluster's routes -------------------------------------------------------------------


def _cluster_member(tmp: Path, name: str, creds: Credentials, certs: Certificates, port: int, route_port: int, peers: list[int]) -> EmbeddedServer:
    data = tmp / name
    data.mkdir()
    conf = data / "nats.conf"
    cluster = NatsCluster("vp-test", route_port, tuple(f"nats-route://127.0.0.1:{p}" for p in peers), server_name=name)
    conf.write_text(creds.nats_config(port, data, tls=certs.server(), cluster=cluster))
    return EmbeddedServer.nats_with_config(conf, port, creds.nats_url(ADMIN, port, tls=True))


def test_cluster_routes_speak_tls_and_only_the_cas_servers_join(tmp_path: Path) -> None:
    creds = Credentials.load_or_create(tmp_path)
    certs, rogue_certs = Certificates.load_or_create(tmp_path / "tls"), Certificates.load_or_create(tmp_path / "rogue-tls")
    ports = {n: (free_port(), free_port()) for n in ("a", "b", "rogue")}
    a = _cluster_member(tmp_path, "a", creds, certs, *ports["a"], [ports["b"][1]])
    b = _cluster_member(tmp_path, "b", creds, certs, *ports["b"], [ports["a"][1]])
    rogue = _cluster_member(tmp_path, "rogue", creds, rogue_certs, *ports["rogue"], [ports["a"][1]])
    ctx = client_tls(certs.ca, certs.client_cert, certs.client_key)
    servers = [a, b, rogue]
    try:
        for server in servers:
            server.start()

        async def across() -> bytes:
            """A message published on a, received on b: the route carries it."""
            sub_nc = await nats.connect(b.url, tls=ctx)
            pub_nc = await nats.connect(a.url, tls=ctx)
            try:
                sub = await sub_nc.subscribe("probe.route")
                await sub_nc.flush()
                deadline = time.monotonic() + 30
                while True:  # until the route is up (the servers dial each other on start)
                    await pub_nc.publish("probe.route", b"over tls")
                    await pub_nc.flush()
                    try:
                        return (await sub.next_msg(timeout=0.5)).data
                    except nats.errors.TimeoutError:
                        assert time.monotonic() < deadline, "no route between a and b"
            finally:
                await sub_nc.close()
                await pub_nc.close()

        assert asyncio.run(across()) == b"over tls"
        # The rogue's route (its only one, to a), signed by another CA, fails its TLS
        # handshake: neither end accepts the other's certificate.
        deadline = time.monotonic() + 30
        while not all("TLS route handshake error" in srv.log_path.read_text(errors="replace") for srv in (a, rogue)):
            assert time.monotonic() < deadline, rogue.log_path.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        assert "Route connection created" not in rogue.log_path.read_text(errors="replace")
        # A plaintext route is refused too: routes start with the TLS handshake, so the
        # server waits for one, gets a CONNECT instead, and hangs up without a word.
        seen = a.log_path.stat().st_size
        with socket.create_connection(("127.0.0.1", ports["a"][1]), timeout=10) as s:
            s.sendall(b"CONNECT {}\r\nPING\r\n")
            assert s.recv(4096) == b""
        deadline = time.monotonic() + 30
        while "TLS route handshake error" not in a.log_path.read_bytes()[seen:].decode(errors="replace"):
            assert time.monotonic() < deadline, "the plaintext route was not refused"
            time.sleep(0.1)
    finally:
        for server in servers:
            server.stop()


def test_a_service_with_a_broken_ca_file_stops_with_a_clear_message(stack: Stack, tmp_path: Path) -> None:
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate\n")
    env = dict(stack.env, VOLPLANE_TLS_CA=str(broken), VOLPLANE_METRICS_ADDR="", NATS_URL=stack.nats_url_of("provisioner"))
    out = subprocess.run(catalog.get("provisioner").argv(), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "cannot use the TLS files for NATS at tls://***@127.0.0.1" in out.stderr and "VOLPLANE_TLS_CA" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
