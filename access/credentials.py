"""Credentials of the embedded default: one NATS user per process identity — each service,
and each node's nodeagent and node plugin — allowed only the subjects of its role, and one
Redis ACL user per service and node limited to its read models' keys and the commands
they need; generated once under ``run/`` (mode 0600) and reused by every later run.

    creds = Credentials.load_or_create(Path("run"), nodes=("node-1", "node-2"))
    creds.nats_config(port, store_dir)                # nats-server configuration text
    creds.nats_url(user_of("nodeagent", "node-2", "node-1"), port)   # nats://nodeagent-node-2:…@127.0.0.1:port
    creds.redis_url(port, "provisioner")              # redis://provisioner:…@127.0.0.1:port/0
    creds.redis_acl()                                 # an ACL file for redis-server
    redis_rules(shared_node_identities())["nodeagent"]   # ["resetchannels", "~vp:node:*:*", …, "-@all", "+@read", …]: a user's ACL rules
    creds.nats_config(port, store_dir, tls=certs.server(), cluster=NatsCluster("vp", 6222, routes))   # with TLS

A deployment with its own servers (NATS_URL / REDIS_URL) brings its own credentials;
deploy/ shows how. Identities and their rights come from the catalog of deployables
(``services.catalog``): a cluster-wide entry is one user, a per-node entry one user per
node, allowed its own node's subjects only.

What no service may do, whatever its role: create, update, purge or delete the stream
(the launcher does that as ``admin``, an install job in Kubernetes), create durable
consumers or delete any consumer, read another identity's inbox; in Redis, CONFIG, DEBUG,
MODULE, SHUTDOWN, SAVE, FLUSHALL/FLUSHDB, KEYS, or any key outside its own patterns.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from access.tls import ServerTls
from services import catalog
from services.catalog import CATALOG, Rights
from volplane import subjects

__all__ = ["ADMIN", "PERMISSIONS", "REBUILD", "REDIS_USER", "USERS", "Credentials", "NatsCluster", "identities", "inbox_prefix", "redis_acl_file", "redis_rules", "user_of"]

ADMIN = "admin"  # NATS: the launcher, `make rebuild` and tests — everything, the stream's setup included
REDIS_USER = "volplane"  # Redis: the operator's (the launcher's tests): every vp: key, no server configuration
REBUILD = "rebuild"  # Redis: `make rebuild` — drops and rewrites every vp: key, nothing else
DEFAULT_NODES = ("node-1",)

_STREAM = subjects.STREAM
# A reader of the log asks for the stream's state, reads single events (direct get: by
# sequence in the body, or the last of a subject in the request subject; from the leader
# alone when the stream is replicated, volplane.eventstore), follows with
# ordered consumers — ephemeral, created without a name — and answers their flow control.
# Nothing else of the JetStream API: no STREAM.CREATE/UPDATE/PURGE/DELETE, no
# STREAM.MSG.DELETE, no CONSUMER.DELETE, no durable consumers.
_LOG_READER = [
    f"$JS.API.STREAM.INFO.{_STREAM}",
    f"$JS.API.DIRECT.GET.{_STREAM}",
    f"$JS.API.DIRECT.GET.{_STREAM}.>",
    f"$JS.API.STREAM.MSG.GET.{_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{_STREAM}",
    f"$JS.FC.{_STREAM}.>",
]
# Replies go to the requester's inbox; each identity receives on its own inbox prefix only,
# so that none reads another's replies or consumer deliveries.
_REPLIES = ["_INBOX.>"]

# Redis: what every service's read models need (reads, writes, the projection runners'
# script and transactions), and never what is dangerous (CONFIG, DEBUG, FLUSH*, KEYS, …).
_REDIS_SERVICE = "-@all +@read +@write +@transaction +@connection +eval +evalsha +script|load -@dangerous"
# Listing keys by pattern (SCAN) only for a user that reads another reader's keys by
# pattern (the resource API's quarantined events) or drops them all (the rebuild tool).
_REDIS_NO_SCAN = " -scan"
_REDIS_REBUILD = "-@all +@read +@write +@keyspace +@transaction +@connection +eval +evalsha +script|load -@dangerous"
# The operator's: everything on vp: keys (tests flush the database) except what would
# reconfigure, stop or replicate the server, or write files as its user.
_REDIS_ADMIN = "+@all -config -debug -module -shutdown -save -bgsave -bgrewriteaof -replicaof -slaveof -failover -migrate -acl -monitor -sync -psync -cluster"


def inbox_prefix(user: str) -> str:
    """Where ``user``'s replies and consumer deliveries arrive (``volplane.clients`` connects so)."""
    return f"_INBOX.{user}"


def user_of(service: str, node: str, first_node: str) -> str:
    """The user of ``service``'s process on ``node``: the service's name for a cluster-wide
    entry, and for apigw on the first node (its controller part and that node's plugin,
    ``make run``'s "all" mode); ``<service>-<node>`` for every other per-node process."""
    d = catalog.get(service)
    if not d.per_node or (d.node_publish and node == first_node):
        return d.name
    return f"{d.name}-{subjects.node_token(node)}"


def identities(nodes: Sequence[str] = DEFAULT_NODES) -> dict[str, Rights]:
    """Every user of a system on ``nodes`` (the first serves apigw's controller part) → its rights."""
    first = nodes[0]
    out: dict[str, Rights] = {}
    for d in CATALOG:
        if not d.per_node:
            out[d.name] = d.rights()
            continue
        for node in nodes:
            out[user_of(d.name, node, first)] = d.rights(node, plugin_only=bool(d.node_publish) and node != first)
    return out


def shared_node_identities() -> dict[str, Rights]:
    """The users of a deployment that cannot hand every node its own credentials up front
    (the Helm chart: a DaemonSet's pods share one Secret): one user per service, its node
    subjects open to every node (``*``), and for an entry with a node plugin (apigw) a
    ``<name>-node`` user with only the plugin's rights, so that a node's plugin cannot act
    as the controller. A node there could act for another node — the per-node users of
    ``identities`` close that, and need credentials issued per node (docs/security.md)."""
    out: dict[str, Rights] = {}
    for d in CATALOG:
        out[d.name] = d.rights("*") if d.per_node else d.rights()
        if d.per_node and d.node_publish:
            out[f"{d.name}-node"] = d.rights("*", plugin_only=True)
    return out


def nats_permissions(users: Mapping[str, Rights]) -> dict[str, tuple[list[str], list[str]]]:
    """user → (may publish to, may subscribe to), everything included: the JetStream API a
    log reader needs, replies, its own inbox, its role's subjects."""
    return {user: _nats_permissions(user, rights) for user, rights in users.items()}


def _nats_permissions(user: str, rights: Rights) -> tuple[list[str], list[str]]:
    publish = [*(_LOG_READER if rights.reads_log else []), *_REPLIES, *rights.publish]
    return publish, [f"{inbox_prefix(user)}.>", *rights.subscribe]


# user → (may publish to, may subscribe to) of its role, for a one-node system (the chart's
# and compose's users); replies, inboxes and the JetStream API come on top (``nats_config``).
PERMISSIONS: dict[str, tuple[list[str], list[str]]] = {u: (list(r.publish), list(r.subscribe)) for u, r in identities().items()}
USERS = (*PERMISSIONS, ADMIN)


def _quote(text: str) -> str:
    return json.dumps(text)


@dataclass(frozen=True)
class NatsCluster:
    """This nats-server's part in a cluster: its name, the port its routes listen on, and
    the other members' route URLs (``nats-route://host:port``). With ``tls`` given to
    ``nats_config``, routes use it too: both ends present the servers' certificate and
    check the other's against the CA, so only the CA's servers join."""

    name: str
    port: int
    routes: tuple[str, ...] = ()
    server_name: str = ""  # JetStream's name for this member; unique in the cluster
    host: str = "127.0.0.1"


def _redis_users(nodes: Sequence[str]) -> list[str]:
    return [u for u, r in identities(nodes).items() if r.redis_keys] + [REBUILD]


def redis_rules(users: Mapping[str, Rights]) -> dict[str, list[str]]:
    """user → its Redis ACL rules, the password left out: each user of ``users`` that keeps
    read models (its own key patterns, the commands read models need, never a server
    command), and the rebuild tool (every vp: key, SCAN to drop them). ``make run``'s ACL
    file, compose's and the chart's users (charts/volplane/files/redis-acl.json) are these."""
    out: dict[str, list[str]] = {}
    for user, rights in users.items():
        if not rights.redis_keys:
            continue
        scan = "" if "vp:quarantine:*" in rights.redis_keys else _REDIS_NO_SCAN
        out[user] = ["resetchannels", *("~" + k for k in rights.redis_keys), *(_REDIS_SERVICE + scan).split()]
    out[REBUILD] = ["resetchannels", "~vp:*", *_REDIS_REBUILD.split()]
    return out


def redis_acl_file(passwords: Mapping[str, str], rules: Mapping[str, Sequence[str]]) -> str:
    """An ACL file for redis-server: the default user off, each user of ``passwords`` on,
    with that password and its ``rules``.

        redis_acl_file({"attacher": pw}, redis_rules(identities()))   # "user default off\nuser attacher on >… ~vp:nodes …"
    """
    for user, password in passwords.items():
        # One token each in the file: a space would end the password, and an empty one is no password.
        if not password or any(c.isspace() for c in password):
            raise ValueError(f"Redis user {user!r}: a password must be non-empty and without whitespace")
    lines = ["user default off", *(f"user {user} on >{password} {' '.join(rules[user])}" for user, password in passwords.items())]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Credentials:
    nats: dict[str, str]  # user → password
    redis_password: str  # the operator's Redis user (REDIS_USER)
    redis: dict[str, str] = field(default_factory=dict)  # every other Redis user → password
    nodes: tuple[str, ...] = DEFAULT_NODES

    @classmethod
    def load_or_create(cls, run_dir: Path, nodes: Sequence[str] | None = None) -> Credentials:
        """The credentials in ``run_dir``; with ``nodes``, made to cover exactly those nodes'
        users (passwords of users that stay are kept, new users get new ones). Without
        ``nodes``, whatever is there (a tool beside a running stack), else one node's."""
        path = run_dir / "credentials.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        old_redis = data.get("redis", {})
        if isinstance(old_redis, str):  # the file of a version with one Redis user
            old_redis = {REDIS_USER: old_redis}
        want = tuple(nodes) if nodes is not None else tuple(data.get("nodes", DEFAULT_NODES))
        users = [*identities(want), ADMIN]
        redis_users = [*_redis_users(want), REDIS_USER]
        old_nats = data.get("nats", {})
        nats = {u: old_nats.get(u) or secrets.token_urlsafe(24) for u in users}
        redis = {u: old_redis.get(u) or secrets.token_urlsafe(24) for u in redis_users}
        stored = {"nats": nats, "redis": redis, "nodes": list(want)}
        creds = cls(nats=nats, redis_password=redis[REDIS_USER], redis={u: pw for u, pw in redis.items() if u != REDIS_USER}, nodes=want)
        if stored != data:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(stored, f)
        return creds

    def nats_url(self, user: str, port: int, tls: bool = False, host: str = "127.0.0.1") -> str:
        """``user``'s URL; ``tls``: ``tls://``, which connects with TLS only; ``host``: a
        cluster member's own address (``make run HOSTS=3``, devstack.hosts)."""
        return f"{'tls' if tls else 'nats'}://{user}:{self.nats[user]}@{host}:{port}"

    def redis_url(self, port: int | Path, user: str = REDIS_USER, tls: bool = False) -> str:
        """``user``'s URL for a server on a loopback ``port`` (``tls``: ``rediss://``), or on a
        unix socket at a path."""
        password = self.redis_password if user == REDIS_USER else self.redis[user]
        if isinstance(port, Path):
            return f"unix://{user}:{password}@{port}?db=0"
        return f"{'rediss' if tls else 'redis'}://{user}:{password}@127.0.0.1:{port}/0"

    def nats_config(self, port: int, store_dir: Path, tls: ServerTls | None = None, cluster: NatsCluster | None = None, host: str = "127.0.0.1") -> str:
        """The configuration text; ``host``: the address clients connect to (a cluster
        member's own, in ``make run HOSTS=3``; loopback otherwise)."""
        rights = identities(self.nodes)
        users = []
        for user, password in self.nats.items():
            if user == ADMIN:
                users.append(f"    {{ user: {_quote(user)}, password: {_quote(password)} }}")
                continue
            pub, sub = _nats_permissions(user, rights[user])
            users.append(
                f"    {{ user: {_quote(user)}, password: {_quote(password)}, permissions: {{ "
                f"publish: {json.dumps(pub)}, subscribe: {json.dumps(sub)} }} }}"
            )
        text = f"listen: {host}:{port}\n"
        if tls is not None:
            # Client connections: TLS only, and (verify) a client certificate of the CA.
            text += tls.nats_block() + "\n"
        text += f"jetstream {{ store_dir: {_quote(str(store_dir))} }}\n"
        if cluster is not None:
            text += _cluster_block(cluster, tls)
        return text + "authorization {\n  users: [\n" + ",\n".join(users) + "\n  ]\n}\n"

    def redis_acl(self) -> str:
        """An ACL file: the default user is off; each service's user may touch its own
        keys with the commands read models need; the rebuild tool every vp: key."""
        rules = {REDIS_USER: ["resetchannels", "~vp:*", *_REDIS_ADMIN.split()], **redis_rules(identities(self.nodes))}
        return redis_acl_file({REDIS_USER: self.redis_password, **self.redis}, rules)


# Every member's route options. Clients are given every member (NATS_URL), so a member does
# not hand them the others' addresses (no_advertise): a pool of discovered duplicates would
# double the dead members a reconnect tries, at CONNECT_TIMEOUT each. Routes ping every 2 s
# and are dropped after 2 unanswered pings: a member that is frozen or cut off stops
# holding the queue-group interest of clients that have left it within 4-6 s, where the
# server's default (2 minutes) kept routing requests to them, unanswered, all that time.
ROUTE_OPTIONS = '  no_advertise: true\n  ping_interval: "2s"\n  ping_max: 2\n'


def _cluster_block(cluster: NatsCluster, tls: ServerTls | None) -> str:
    head = f"server_name: {_quote(cluster.server_name)}\n" if cluster.server_name else ""
    routes = ", ".join(_quote(r) for r in cluster.routes)
    body = f"  name: {_quote(cluster.name)}\n  listen: {cluster.host}:{cluster.port}\n  routes: [{routes}]\n" + ROUTE_OPTIONS
    if tls is not None:
        body += "  " + tls.nats_block() + "\n"
    return head + "cluster {\n" + body + "}\n"
