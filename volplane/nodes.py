"""The node registry: each nodeagent announces its id, topology and pools on start.

    await register(store, NodeRegistered(node_id="node-1", topology={TOPOLOGY_KEY: "node-1"}, ...))
    nodes = NodesProjection()
    runner = ProjectionRunner(redis, store, nodes)   # every service that needs nodes
    nodes.nodes["node-1"].pools                      # all of them, in memory
    await nodes.find("node-1")                       # or None, after catching up with the log

A registration that does not decode, or names another node than its subject does, is
quarantined by the projection (``volplane.quarantine``) and skipped by ``register``.

Several services run this projection (the provisioner for pools and topology, the
attacher for node existence); they share its Redis keys and position, which the
runner's once-only writes make safe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import TypeAdapter

from volplane import codec, subjects
from volplane.events import Event, Frozen
from volplane.eventstore import EventStore, Record
from volplane.projection import PREFIX, Op, ProjectionBase
from volplane.quarantine import Undecodable

__all__ = ["SHARED_POOL", "TOPOLOGY_KEY", "NodeInfo", "NodeRegistered", "NodesProjection", "PoolSpec", "register", "registered"]

TOPOLOGY_KEY = "topology.csi.volplane.io/node"
SHARED_POOL = "shared"
NODES = f"{PREFIX}nodes"


class PoolSpec(Frozen):
    name: str
    kind: Literal["local", "shared"]
    directory: str
    capacity: int


class NodeRegistered(Event):
    type: Literal["NodeRegistered"] = "NodeRegistered"
    node_id: str
    topology: dict[str, str]
    max_volumes: int = 0
    pools: tuple[PoolSpec, ...] = ()


class NodeInfo(Frozen):
    node_id: str
    topology: dict[str, str]
    max_volumes: int
    pools: tuple[PoolSpec, ...]
    version: int


_EVENTS: TypeAdapter[NodeRegistered] = TypeAdapter(NodeRegistered)


def _info(event: NodeRegistered, seq: int) -> NodeInfo:
    return NodeInfo(node_id=event.node_id, topology=event.topology, max_volumes=event.max_volumes, pools=event.pools, version=seq)


async def register(store: EventStore, event: NodeRegistered) -> None:
    """Announce a node, unless the log already says exactly this about it."""
    subject = subjects.node_info(event.node_id)
    records = await store.read(subject)
    last = _newest(records)
    if last is not None and last.model_dump(exclude={"at"}) == event.model_dump(exclude={"at"}):
        return
    # After the subject's newest event, quarantined or not: the log checks that sequence.
    await store.append(subject, event, expected=records[-1].seq if records else 0)


async def registered(store: EventStore) -> list[str]:
    """The ids of the nodes the log holds a valid registration of, sorted: the nodes whose
    read models exist (``make rebuild`` replays ``NodeProjection`` for each). A node token
    only poison names — ``vp.ev.node.<anything>.<id>`` is open to whoever may publish there —
    has none."""
    nodes = []
    for subject in await store.subjects(subjects.NODE_INFO_EVENTS):
        last = _newest(await store.read(subject))
        if last is not None:
            nodes.append(last.node_id)
    return sorted(nodes)


def _newest(records: list[Record]) -> NodeRegistered | None:
    """The newest registration that decodes: a quarantined one is skipped, as the
    projection skips it (``volplane.quarantine``), so a node still starts after one."""
    for record in reversed(records):
        try:
            return _registration(record)
        except Exception:  # noqa: BLE001 - quarantined by the projection; skipped here
            continue
    return None


def _registration(record: Record) -> NodeRegistered:
    event = codec.decode(_EVENTS, record.data)
    if subjects.node_info(event.node_id) != record.subject:
        # A registration names the node its subject names, or another node's entry
        # could be overwritten by anyone allowed to write this one.
        raise Undecodable(f"a registration of node {event.node_id[:64]!r} on {record.subject[:128]}")
    return event


class NodesProjection(ProjectionBase[NodeInfo]):
    name = "nodes"
    filter_subject = subjects.NODE_INFO_EVENTS
    totals_key: str | None = NODES

    def __init__(self) -> None:
        # Every registered node, kept whole in memory: there are few, and all are read often.
        self.nodes: dict[str, NodeInfo] = {}

    def restore(self, totals: dict[bytes, bytes]) -> None:
        self.nodes = {k.decode(): self.load(v) for k, v in totals.items()}

    def key_for(self, record: Record) -> str | None:
        return f"{PREFIX}nodeinfo:{record.subject[len(subjects.node_info('')):]}"

    def evolve(self, state: NodeInfo | None, record: Record) -> NodeInfo | None:
        return _info(_registration(record), record.seq)

    def dump(self, state: NodeInfo) -> bytes:
        return codec.encode(state)

    def load(self, raw: bytes) -> NodeInfo:
        return NodeInfo.model_validate(codec.unpack(raw))

    def ops(self, key: str, old: NodeInfo | None, new: NodeInfo | None) -> list[Op]:
        return [] if new is None else [("HSET", NODES, new.node_id, self.dump(new))]

    def observe(self, old: NodeInfo | None, new: NodeInfo | None) -> None:
        if new is not None:
            self.nodes[new.node_id] = new

    async def find(self, node_id: str, timeout: float = 10.0) -> NodeInfo | None:
        """The node, or None when it is not registered: a node this process does not know
        may have registered a moment ago, so the runner catches up with the log first."""
        node = self.nodes.get(node_id)
        if node is None:
            await self.runner.catch_up(timeout)
            node = self.nodes.get(node_id)
        return node
