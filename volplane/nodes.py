"""The node registry: each nodeagent announces its id, topology and pools on start.

    await register(store, NodeRegistered(node_id="node-1", topology={TOPOLOGY_KEY: "node-1"}, ...))
    nodes = NodesProjection()
    runner = ProjectionRunner(redis, store, nodes)   # every service that needs nodes
    nodes.nodes["node-1"].pools                      # all of them, in memory
    await nodes.find("node-1")                       # or None, after catching up with the log

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

__all__ = ["SHARED_POOL", "TOPOLOGY_KEY", "NodeInfo", "NodeRegistered", "NodesProjection", "PoolSpec", "register"]

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
    if records:
        last = codec.decode(_EVENTS, records[-1].data)
        if last.model_dump(exclude={"at"}) == event.model_dump(exclude={"at"}):
            return
    await store.append(subject, event, expected=records[-1].seq if records else 0)


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
        return _info(codec.decode(_EVENTS, record.data), record.seq)

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
