"""The deployables, named in one place: what each is called, how it starts, where it runs,
how it reports health and what it may say on the bus.

    for d in CATALOG: print(d.name, d.argv())       # provisioner ['python', '-m', 'services.provisioner']
    catalog.get("nodeagent").health_subject("node-2")  # "vp.health.nodeagent.node-2"

The launcher (``devstack.launcher``) lays out and starts processes from this table, and
the embedded credentials (``access.credentials``) give each entry a NATS user with exactly
its ``publish`` and ``subscribe`` subjects — the contract of who talks to whom: a service
that publishes where it should not gets a permissions violation. A new service is one
entry here plus its ``services/<name>/__main__.py``, whose ``main()`` calls
``volplane.service.run_service`` with the same name.

A per-node entry's subjects and keys say ``{node}`` where its own node goes: each node's
process gets its own user, allowed its own node's subjects only (``Deployable.rights``):

    catalog.get("nodeagent").rights("node-2").publish[0]   # "vp.ev.node.node-2.>"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from volplane import subjects
from volplane.resources.authz import role_subjects

__all__ = ["CATALOG", "NODE", "Deployable", "Rights", "get", "names"]

# Where a per-node entry's subjects and Redis keys name its own node.
NODE = "{node}"

# The standalone control plane's objects and their timelines: each controller only the
# kinds of its role (volplane.resources.authz.ROLES, as Kubernetes' RBAC roles), apigw's
# resource API all of them (it authorizes its callers itself). A node appends none: its
# writes go through apigw's NodeRestriction check (subjects.node_object_write).
_OBJECTS = {role: role_subjects(role) for role in ("provisioner", "attacher", "apigw")}


@dataclass(frozen=True)
class Rights:
    """One process's rights: NATS subjects, Redis keys, and whether it reads the log."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    redis_keys: tuple[str, ...]
    reads_log: bool


def _read_models(*names: str) -> tuple[str, ...]:
    """The keys every projection runner keeps beside its read model: its position in the
    log and its quarantined events (``volplane.projection``, ``volplane.quarantine``)."""
    return tuple(key for name in names for key in (f"vp:pos:{name}", f"vp:quarantine:{name}"))


# The node registry and the attachments, which the provisioner follows as the attacher
# does (a projection is the same bytes whoever writes it).
_NODES_KEYS = ("vp:nodes", "vp:nodeinfo:*", *_read_models("nodes"))
_ATTACHMENTS_KEYS = ("vp:attach:*", *_read_models("attachments"))


@dataclass(frozen=True)
class Deployable:
    name: str  # the process, its NATS user, the "service" of its log lines
    module: str  # started as ``python -m <module>``; the module's ``main()`` runs it
    # One process on every node (a node plugin, the kubelet's part) rather than one for
    # the whole cluster; its node id scopes its subjects and its health check.
    per_node: bool
    # More than one process may serve the same scope, the queue group sharing the load;
    # a node runs one nodeagent, as it runs one kubelet.
    replicas: bool
    # "bus": answers ``vp.health.<name>[.<node>]``; "grpc": grpc.health.v1 on its CSI socket.
    health: Literal["bus", "grpc"]
    publish: tuple[str, ...]  # subjects it may publish to, besides inboxes and the JetStream API
    subscribe: tuple[str, ...]  # subjects it may subscribe to, besides inboxes
    # Redis keys (glob patterns) of the read models it keeps or reads, its projections'
    # positions and quarantine records included; () for none: it gets no Redis user.
    redis_keys: tuple[str, ...] = ()
    # Whether it reads the event log (stream info, direct gets, ordered consumers); a
    # service that only sends commands needs none of the JetStream API.
    reads_log: bool = True
    # An entry with a node plugin beside its cluster-wide part (apigw): what the plugin
    # publishes, "{node}" its node. A node-mode process gets only these rights; the
    # first node's process, which serves both, gets both.
    node_publish: tuple[str, ...] = ()

    def rights(self, node: str | None = None, *, plugin_only: bool = False) -> Rights:
        """What this entry may do, as the process on ``node`` (per-node entries): its
        subjects and keys with ``{node}`` filled in. ``plugin_only``: a node-mode process
        of an entry with a node plugin (apigw on a node other than the first)."""
        if node is None and self.per_node:
            raise ValueError(f"{self.name} runs on every node: say which node's rights")
        token = subjects.node_token(node) if node is not None else ""

        def fill(patterns: tuple[str, ...], value: str) -> tuple[str, ...]:
            return tuple(p.replace(NODE, value) for p in patterns)

        if plugin_only:
            return Rights(publish=fill(self.node_publish, token), subscribe=(), redis_keys=(), reads_log=False)
        return Rights(
            publish=fill(self.publish + self.node_publish, token),
            subscribe=fill(self.subscribe, token),
            # Keys carry the node id as it is (volplane's read models name nodes so).
            redis_keys=fill(self.redis_keys, node or ""),
            reads_log=self.reads_log,
        )

    def argv(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", self.module]

    def health_subject(self, node: str) -> str:
        """Where a ``bus`` health check asks this service on ``node``."""
        return subjects.health(self.name, node if self.per_node else None)


# In the order the launcher starts them on each node (and stops them in reverse): the
# backends before the gateway in front of them.
CATALOG: tuple[Deployable, ...] = (
    Deployable(
        name="provisioner",
        module="services.provisioner",
        per_node=False,
        replicas=True,
        health="bus",
        publish=(
            subjects.VOLUME_EVENTS, subjects.SNAPSHOT_EVENTS, subjects.GROUP_SNAPSHOT_EVENTS, f"{subjects.ATTACHER}.>",
            # A group snapshot's cut: the nodes holding its volumes freeze and thaw them.
            subjects.NODE_FREEZE_ALL, subjects.NODE_THAW_ALL, subjects.NODE_IO_LIMITS_ALL, *_OBJECTS["provisioner"],
            # The pools' images: made, copied, grown and removed by the nodes that own them.
            subjects.POOL_COMMANDS,
        ),
        subscribe=(f"{subjects.PROVISIONER}.>", subjects.health("provisioner")),
        redis_keys=(
            "vp:vol:*", "vp:vols", "vp:vols:*", "vp:snap:*", "vp:snaps", "vp:snaps:*", "vp:pools:*", "vp:gsnap:*", "vp:gsnaps:*",
            *_read_models("volumes", "snapshots", "group_snapshots"), *_NODES_KEYS, *_ATTACHMENTS_KEYS,
        ),
    ),
    Deployable(
        name="attacher",
        module="services.attacher",
        per_node=False,
        replicas=True,
        health="bus",
        publish=(subjects.ATTACHMENT_EVENTS, subjects.GET_VOLUME, *_OBJECTS["attacher"]),
        subscribe=(f"{subjects.ATTACHER}.>", subjects.health("attacher")),
        redis_keys=(*_NODES_KEYS, *_ATTACHMENTS_KEYS),
    ),
    Deployable(
        name="nodeagent",
        module="services.nodeagent",
        per_node=True,
        replicas=False,
        health="bus",
        # Its own node's volumes and registration, and its own node's commands only; for a
        # restore or clone from another node's pool, that node's send command, its own
        # transfers' subjects, and the transfer stream's API (read any transfer, discard one).
        publish=(f"vp.ev.node.{NODE}.>", f"vp.ev.nodeinfo.{NODE}", subjects.GET_ATTACHMENTS, subjects.GET_VOLUME, subjects.node_object_write(NODE),
                 subjects.NODE_POOL_SENDS, f"vp.xfer.*.{NODE}.>", *subjects.TRANSFER_API),
        # Its own pool's image commands, and the shared pool's (in a queue group of every node that has it).
        subscribe=(f"vp.cmd.node.{NODE}.>", f"vp.health.nodeagent.{NODE}", subjects.node_pool_command(NODE, ">"), subjects.SHARED_POOL_COMMANDS),
        redis_keys=(f"vp:node:{NODE}:*", *_read_models(f"node:{NODE}")),
    ),
    Deployable(
        name="apigw",
        module="services.apigw",
        per_node=True,
        replicas=True,
        health="grpc",
        # Its controller part: commands to the provisioner and the attacher; objects
        # through the resource API, listed from their projection.
        publish=(f"{subjects.PROVISIONER}.>", f"{subjects.ATTACHER}.>", *_OBJECTS["apigw"]),
        # Nodes' object writes, which it checks (NodeRestriction) and appends.
        subscribe=(subjects.NODE_OBJECT_WRITES,),
        redis_keys=("vp:obj:*", "vp:objs:*", *_read_models("objects"),
                    # The resource API lists every reader's quarantined events (read-only in intent;
                    # Redis 6's ACLs cannot tell reads from writes on a key).
                    "vp:quarantine:*"),
        # Its node plugin (the Node service): commands to its own node's nodeagent.
        node_publish=(f"vp.cmd.node.{NODE}.>",),
    ),
)

_BY_NAME = {d.name: d for d in CATALOG}


def get(name: str) -> Deployable:
    """The entry called ``name``; a KeyError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no service {name!r} in the catalog (known: {', '.join(_BY_NAME)})") from None


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)
