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
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from volplane import subjects
from volplane.resources.kinds import RECORDED_EVENTS, RESOURCE_EVENTS

__all__ = ["CATALOG", "Deployable", "get", "names"]

# The standalone control plane's objects and their timelines: every service's controllers
# (and apigw's resource API) write them.
_OBJECTS = (RESOURCE_EVENTS, RECORDED_EVENTS)


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
            subjects.NODE_FREEZE_ALL, subjects.NODE_THAW_ALL, *_OBJECTS,
        ),
        subscribe=(f"{subjects.PROVISIONER}.>", subjects.health("provisioner")),
    ),
    Deployable(
        name="attacher",
        module="services.attacher",
        per_node=False,
        replicas=True,
        health="bus",
        publish=(subjects.ATTACHMENT_EVENTS, subjects.GET_VOLUME, *_OBJECTS),
        subscribe=(f"{subjects.ATTACHER}.>", subjects.health("attacher")),
    ),
    Deployable(
        name="nodeagent",
        module="services.nodeagent",
        per_node=True,
        replicas=False,
        health="bus",
        publish=("vp.ev.node.>", subjects.NODE_INFO_EVENTS, subjects.GET_ATTACHMENTS, *_OBJECTS),
        subscribe=("vp.cmd.node.>", subjects.health("nodeagent", ">")),
    ),
    Deployable(
        name="apigw",
        module="services.apigw",
        per_node=True,
        replicas=True,
        health="grpc",
        # Commands to every service, their health checks; objects through the resource API.
        publish=("vp.cmd.>", "vp.health.>", *_OBJECTS),
        subscribe=(),
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
