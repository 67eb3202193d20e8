"""``python -m devstack.launcher`` (``make run``): the whole system on one machine.

Starts a nats-server and a redis-server of its own (unless NATS_URL / REDIS_URL are
set), then every service of the catalog (``services.catalog``) as a separate process —
the cluster-wide ones once, the per-node ones on every node; waits until each answers
its health check; prints the CSI endpoint; and on Ctrl-C or SIGTERM stops the services
in reverse order, then the servers. Data lives under ``run/`` (VOLPLANE_RUN_DIR), so
the next run finds its volumes again. Tests use ``Stack`` the same way.

It creates (or upgrades) the event log's stream itself, as the administrator, before any
service starts: no service's credentials allow it. Each process connects as its own
identity (``access.credentials``): a service, or a node's nodeagent or node plugin.

On the wire (``access.tls``, docs/security.md): its nats-server speaks TLS only, with the
certificates of a CA of its own under ``run/tls`` (made once, 0600), and requires each
client's certificate; every process gets ``tls://`` and ``VOLPLANE_TLS_CA`` /
``VOLPLANE_TLS_CERT`` / ``VOLPLANE_TLS_KEY``. Its redis-server — the pip package's, built
without TLS — listens on a unix socket only, in ``run/redis`` (0700). ``VOLPLANE_REDIS_SERVER``
names a redis-server built with TLS to serve TLS on loopback instead; ``VOLPLANE_TLS=off``
turns TLS off (to compare, ``make bench``).

    stack = Stack(Path("run")); stack.start(); ...; stack.stop()

``HOSTS=3`` (``make run HOSTS=3``) runs ``devstack.hosts.HostsStack`` instead: three
simulated machines, each a network and mount namespace with its own NATS cluster member.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from access.credentials import ADMIN, REBUILD, Credentials, user_of
from access.tls import Certificates
from devstack.embedded import EmbeddedServer, free_port, with_parent
from services import catalog
from services.catalog import CATALOG, Deployable
from services.nodeagent.adapters.transfer import ensure_transfer_store
from volplane import discovery
from volplane.clients import answers, client_tls, connect_once, redact
from volplane.config import Config, ConfigError
from volplane.eventstore import EventStore

__all__ = ["Stack", "ensure_event_log", "main"]


@dataclass
class Stack:
    """The whole system as processes, one per catalog entry — a per-node entry once per
    node. ``nodes`` > 1 adds, per extra node ``node-N``, a nodeagent (``nodeagent-node-N``)
    and an apigw serving that node's CSI Node service on ``run/node-N/csi.sock``
    (``apigw-node-N``), as each Kubernetes node runs its own node plugin; the first node's
    apigw (``apigw``, on ``run/csi.sock``) serves all three CSI services."""

    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    nodes: int = 1
    nats: EmbeddedServer | None = None
    redis: EmbeddedServer | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # process name → host:port of /metrics
    creds: Credentials | None = None
    certs: Certificates | None = None  # our servers' CA and certificates (run/tls), when they speak TLS
    event_log_ready: bool = False  # the stream exists, made or upgraded by us as admin

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir.absolute()
        base = {k: v for k, v in os.environ.items()}
        base.update(self.env)
        base.setdefault("VOLPLANE_RUN_DIR", str(self.run_dir))
        base.setdefault("VOLPLANE_CSI_ENDPOINT", f"unix://{self.run_dir / 'csi.sock'}")
        base.setdefault("VOLPLANE_API_ENDPOINT", f"unix://{self.run_dir / 'api.sock'}")
        base.setdefault("VOLPLANE_NODE_ID", "node-1")
        base.setdefault("VOLPLANE_SHARED_POOL_DIR", str(self.run_dir / "pools" / "shared"))
        self.env = base
        # The launcher's own two settings, checked as every process checks its variables.
        own = Config.from_env({k: base[k] for k in ("VOLPLANE_TLS", "VOLPLANE_REDIS_SERVER") if k in base})
        self.tls_wanted, self.redis_server = own.embedded_tls, own.embedded_redis_server
        self._tls_context: ssl.SSLContext | None = None
        first = self.node_id
        self.node_ids = [first] + [f"node-{i}" for i in range(2, self.nodes + 1) if f"node-{i}" != first]
        self.services: list[str] = [d.name for d in CATALOG if not d.per_node]
        for node in self.node_ids:
            self.services += [d.name if node == first else f"{d.name}-{node}" for d in CATALOG if d.per_node]

    @property
    def csi_endpoint(self) -> str:
        return self.env["VOLPLANE_CSI_ENDPOINT"]

    @property
    def api_endpoint(self) -> str:
        """The resource API (volctl's server)."""
        return self.env["VOLPLANE_API_ENDPOINT"]

    @property
    def node_id(self) -> str:
        return self.env["VOLPLANE_NODE_ID"]

    def endpoint_of(self, node: str) -> str:
        """The CSI endpoint serving ``node``'s Node service."""
        return self.csi_endpoint if node == self.node_id else f"unix://{self.run_dir / node / 'csi.sock'}"

    def pool_dir(self, pool: str) -> Path:
        """Where a pool's images live: ``shared``, or a node's local pool by node id."""
        return Path(self.env["VOLPLANE_SHARED_POOL_DIR"]) if pool == "shared" else self.run_dir / "pools" / pool

    def _process(self, name: str) -> tuple[Deployable, str]:
        """(catalog entry, node) of a process name such as ``nodeagent-node-2`` or
        ``provisioner#2`` (a second replica)."""
        kind, _, node = name.split("#")[0].partition("-")
        return catalog.get(kind), node or self.node_id

    def add_replica(self, kind: str, n: int = 2) -> str:
        """Another replica of ``kind`` (an entry of the catalog that allows replicas:
        ``provisioner``, ``attacher`` or ``apigw``), started by ``start()`` or
        ``start_service``; a second apigw listens on ``run/csi-<n>.sock`` and
        ``run/api-<n>.sock``. Returns its process name."""
        if not catalog.get(kind).replicas:
            raise ValueError(f"a node runs one {kind}, as it runs one kubelet")
        name = f"{kind}#{n}"
        self.services.append(name)
        return name

    def replica_endpoint(self, name: str, api: bool = False) -> str:
        """The socket a replica of apigw serves (its CSI endpoint, or its resource API)."""
        n = name.partition("#")[2]
        if not n:
            return self.api_endpoint if api else self.csi_endpoint
        return f"unix://{self.run_dir / (('api-' if api else 'csi-') + n + '.sock')}"

    def start_servers(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        # Our own servers get our own credentials (run/credentials.json, 0600): a user per
        # service and per node with only the subjects and keys it needs.
        embedded = "NATS_URL" not in self.env or "REDIS_URL" not in self.env
        self.creds = Credentials.load_or_create(self.run_dir, nodes=self.node_ids) if embedded else None
        # TLS with a CA of our own when the nats-server is ours: a server of yours comes with
        # your CA (VOLPLANE_TLS_CA), which ours would replace.
        if self.tls_wanted and "NATS_URL" not in self.env:
            self.certs = Certificates.load_or_create(self.run_dir / "tls")
        server_tls = self.certs.server() if self.certs is not None else None
        if "NATS_URL" not in self.env:
            self.nats = EmbeddedServer.nats(self.run_dir / "nats", creds=self.creds, tls=server_tls)
        if "REDIS_URL" not in self.env:
            # The pip package's redis-server has no TLS: a unix socket only, unless told of one with TLS.
            self.redis = EmbeddedServer.redis(self.run_dir / "redis", creds=self.creds, unix=self.redis_server is None,
                                              tls=server_tls if self.redis_server is not None else None, binary=self.redis_server)
        if self.certs is not None:
            self.env.update(self.certs.client_env())
        for server in (self.nats, self.redis):
            if server is not None:
                server.start()
        if self.nats:
            self.env["NATS_URL"] = self.nats.url
        if self.redis:
            self.env["REDIS_URL"] = self.redis.url

    def client_tls(self) -> ssl.SSLContext | None:
        """The TLS context a client of our servers needs (our CA, our client certificate),
        or None when they speak plaintext: ``nats.connect(url, tls=stack.client_tls())``."""
        if self.certs is None:
            return None
        if self._tls_context is None:
            self._tls_context = client_tls(self.certs.ca, self.certs.client_cert, self.certs.client_key)
        return self._tls_context

    def nats_url_of(self, user: str = ADMIN) -> str:
        """``user``'s URL for our nats-server (``tls://`` when it speaks TLS)."""
        if self.nats is None or self.creds is None:
            return self.env["NATS_URL"]
        return self.creds.nats_url(user, self.nats.port, tls=self.certs is not None)

    def redis_url_of(self, user: str) -> str:
        """``user``'s URL for our redis-server (a unix socket, or ``rediss://`` with TLS)."""
        if self.redis is None or self.creds is None:
            return self.env["REDIS_URL"]
        return self.redis.url_of(self.creds, user)

    @property
    def tool_redis_url(self) -> str:
        """The Redis URL for tools started beside the stack (``make rebuild``): the rebuild
        tool's own user on our own server, which may drop and rewrite vp: keys only."""
        return self.redis_url_of(REBUILD)

    def running_stack(self) -> discovery.RunningStack:
        """What tools started beside us (``make rebuild``) need to find our servers, for
        ``discovery.publish``: the admin's NATS URL, the rebuild tool's Redis URL, our TLS files."""
        return discovery.RunningStack(
            nats_url=self.env["NATS_URL"], redis_url=self.tool_redis_url, pid=os.getpid(),
            csi_endpoint=self.csi_endpoint, api_endpoint=self.api_endpoint, metrics=dict(self.metrics),
            tls=self.certs.client_env() if self.certs is not None else {})

    def start(self, timeout: float = 60.0) -> None:
        self.start_servers()
        for name in self.services:
            self.start_service(name)
        self.wait_healthy(self.services, timeout)

    def ensure_event_log(self) -> None:
        """Create or upgrade the event log's stream as the administrator: done once,
        before the first service starts (no service may do it)."""
        if not self.event_log_ready:
            asyncio.run(ensure_event_log(self.env["NATS_URL"], tls=self.client_tls()))
            self.event_log_ready = True

    def start_service(self, name: str) -> None:
        self.ensure_event_log()
        service, node = self._process(name)
        self.metrics.setdefault(name, f"127.0.0.1:{free_port()}")
        env = dict(self.env, VOLPLANE_NODE_ID=node, VOLPLANE_METRICS_ADDR=self.metrics[name])
        user = user_of(service.name, node, self.node_id)
        if self.nats is not None and self.creds is not None:
            env["NATS_URL"] = self.nats_url_of(user)  # this process's own identity
        if self.redis is not None and self.creds is not None:
            # Its own Redis user; a process that keeps no read model (a node plugin) gets none.
            env["REDIS_URL"] = self.redis_url_of(user) if user in self.creds.redis else _without_user(self.redis.url)
        if "#" in name:
            env["VOLPLANE_CSI_ENDPOINT"] = self.replica_endpoint(name)
            env["VOLPLANE_API_ENDPOINT"] = self.replica_endpoint(name, api=True)
        if node != self.node_id:
            env["VOLPLANE_CSI_ENDPOINT"] = self.endpoint_of(node)
            env["VOLPLANE_APIGW_MODE"] = "node"
        # The child keeps its own copy of the log's descriptor; ours closes with the block.
        with open(self.run_dir / "logs" / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                with_parent(service.argv()),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: Ctrl-C reaches only the launcher, which stops services
                # before the servers they depend on.
                start_new_session=True,
            )

    def stop_service(self, name: str, kill: bool = False) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart_service(self, name: str, kill: bool = False, timeout: float = 60.0) -> None:
        self.stop_service(name, kill=kill)
        self.start_service(name)
        self.wait_healthy((name,), timeout)

    def stop(self) -> None:
        for name in reversed(self.services):
            self.stop_service(name)
        for server in (self.redis, self.nats):
            if server is not None:
                server.stop()

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def wait_healthy(self, names: tuple[str, ...] | list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            for name in list(pending):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.run_dir / 'logs' / (name + '.log')}")
                if self._healthy(name):
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout}s: {', '.join(pending)}; see {self.run_dir / 'logs'}")
            if pending:
                time.sleep(0.1)

    def _healthy(self, name: str) -> bool:
        service, node = self._process(name)
        if service.health == "grpc":
            endpoint = self.replica_endpoint(name) if "#" in name else self.endpoint_of(node)
            try:
                with grpc.insecure_channel(endpoint) as ch:
                    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                return False
        return asyncio.run(answers(self.env["NATS_URL"], service.health_subject(node), tls=self.client_tls()))


def _without_user(url: str) -> str:
    """``url`` with no user or password in it."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('@', 1)[1]}" if "@" in rest else url


async def ensure_event_log(url: str, *, replicas: int = 1, tls: ssl.SSLContext | None = None) -> None:
    """Create or upgrade the event log's stream and the image transfer store's
    (services/nodeagent/adapters/transfer.py), as the administrator (``url``'s user):
    the install step — ``make run`` runs it before any service, a deployment as a job
    (``volplane install``, which reads the TLS settings as a service does):

        python -c 'import asyncio, os; from devstack.launcher import ensure_event_log; asyncio.run(ensure_event_log(os.environ["NATS_URL"]))'
    """
    nc = await connect_once(url, tls=tls)
    try:
        js = nc.jetstream(timeout=10)
        await EventStore(js).ensure_stream(replicas=replicas)
        # Beside it, at the same replicas: the store images cross hosts through (issue 12).
        await ensure_transfer_store(js, replicas=replicas)
    finally:
        await nc.close()


def main() -> None:
    run_dir = Path(os.environ.get("VOLPLANE_RUN_DIR", "run"))
    hosts = os.environ.get("HOSTS", "").strip()
    try:
        if hosts:
            # make run HOSTS=3: every host a network and mount namespace (devstack.hosts).
            from devstack.hosts import HostsError, HostsStack, require_hosts_support

            if not hosts.isdigit() or int(hosts) < 2:
                raise ConfigError("HOSTS", hosts, "is not a number of hosts of 2 or more (leave it unset for one machine)")
            if os.environ.get("NODES", "1") not in ("", "1"):
                raise ConfigError("NODES", os.environ["NODES"], "does not mix with HOSTS: every host is a node")
            try:
                require_hosts_support()
            except HostsError as exc:
                print(f"volplane failed to start: {exc}", file=sys.stderr)
                sys.exit(2)
            stack: Stack = HostsStack(run_dir, hosts=int(hosts))
        else:
            stack = Stack(run_dir, nodes=int(os.environ.get("NODES", "1")))
    except (ConfigError, ValueError) as exc:
        print(f"volplane failed to start: {exc}", file=sys.stderr)
        sys.exit(2)
    started = time.monotonic()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        # Tools started by hand beside us (make rebuild, benches) find our servers here.
        discovery.publish(stack.run_dir, stack.running_stack())
        took = f" in {time.monotonic() - started:.1f} s" if hosts else ""
        print(f"volplane is up{took}\n  CSI endpoint: {stack.csi_endpoint}\n  resource API: {stack.api_endpoint} (volctl)\n  node id:      {stack.node_id}")
        if hosts:
            for line in stack.describe():  # type: ignore[attr-defined]  # a HostsStack when hosts is set
                print(line)
        else:
            for node in stack.node_ids[1:]:
                print(f"  node {node}: {stack.endpoint_of(node)} (Identity and Node services)")
        secret = " (credentials in run/credentials.json)" if stack.creds else ""
        # A cluster's URL names every member, each with the credentials: redact each.
        nats_url = ",".join(redact(part) for part in stack.env["NATS_URL"].split(","))
        print(f"  NATS:         {nats_url}{secret}\n  Redis:        {redact(stack.env['REDIS_URL'])}")
        if stack.certs is not None:
            print(f"  TLS:          CA and certificates in {stack.certs.dir} (VOLPLANE_TLS=off to turn off)")
        print(f"  logs:         {stack.run_dir / 'logs'}")
        print("  metrics:      " + ", ".join(f"{n} http://{a}/metrics" for n, a in stack.metrics.items()))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            print(f"  traces:       OTLP to {os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']}")
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping:
            dead = stack.dead()
            if dead:
                print(f"stopping: {', '.join(dead)} exited; see {stack.run_dir / 'logs'}", file=sys.stderr)
                break
            time.sleep(0.5)
    except RuntimeError as exc:
        print(f"volplane failed to start: {exc}", file=sys.stderr)
        stack.stop()
        sys.exit(1)
    discovery.withdraw(stack.run_dir)
    stack.stop()
    print("volplane stopped")


if __name__ == "__main__":
    main()
