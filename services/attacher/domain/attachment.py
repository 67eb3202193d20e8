"""The attachment aggregate's state, ``evolve`` and ``decide`` — pure functions.

    state = reduce(evolve, events, None)
    event = decide_publish(state, cmd, volume=info, node=node, node_load=3)   # None: already so
    events = decide_unpublish(state, cmd)                                     # (): nothing to do

The state answers "which nodes hold this volume, how": one ``Attachment`` per node,
sorted by node id so that replaying the log rebuilds the same bytes. An aggregate with
no attachments left keeps its version (the next publish appends after it); the
projection drops it, since the log keeps the history.
"""

from __future__ import annotations

from volplane.commands import ControllerPublish, ControllerUnpublish, VolumeInfo
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from volplane.events import Frozen
from volplane.nodes import NodeInfo
from volplane.volumes import SINGLE_NODE_MODES, StoredCapability, Topology

from .events import AttachmentEvent, VolumeAttached, VolumeDetached

__all__ = [
    "NODE_CONTEXT_KEY",
    "POOL_CONTEXT_KEY",
    "SINGLE_NODE_MODES",
    "Attachment",
    "AttachmentState",
    "accessible_from",
    "decide_publish",
    "decide_unpublish",
    "evolve",
    "publish_context",
]

NODE_CONTEXT_KEY = "volplane.io/node"
POOL_CONTEXT_KEY = "volplane.io/pool"


class Attachment(Frozen):
    node_id: str
    capability: StoredCapability
    readonly: bool
    context: dict[str, str]


class AttachmentState(Frozen):
    volume_id: str
    attachments: tuple[Attachment, ...]  # sorted by node id
    version: int  # stream sequence of this aggregate's last event

    def on(self, node_id: str) -> Attachment | None:
        return next((a for a in self.attachments if a.node_id == node_id), None)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(a.node_id for a in self.attachments)


def publish_context(node_id: str, pool: str) -> dict[str, str]:
    """What NodeStage gets back: ``{"volplane.io/node": "node-1", "volplane.io/pool": "shared"}``."""
    return {NODE_CONTEXT_KEY: node_id, POOL_CONTEXT_KEY: pool}


def accessible_from(segments: tuple[Topology, ...], node_topology: Topology) -> bool:
    """Whether a volume limited to ``segments`` (none: everywhere) can be reached from a node.

    A segment matches when every one of its keys has the same value on the node.

    >>> accessible_from(({"zone": "a"},), {"zone": "a", "rack": "1"})
    True
    >>> accessible_from(({"zone": "a"},), {"zone": "b"})
    False
    """
    if not segments:
        return True
    return any(all(node_topology.get(k) == v for k, v in segment.items()) for segment in segments)


def decide_publish(
    state: AttachmentState | None,
    cmd: ControllerPublish,
    *,
    volume: VolumeInfo,
    node: NodeInfo,
    node_load: int,
) -> VolumeAttached | None:
    """The event to record, or None when the volume is already published so to that node.

    ``volume`` and ``node`` must exist (the caller answers NotFound otherwise);
    ``node_load`` is how many volumes the node holds now (only read when it has a maximum).
    """
    types = {c.access_type for c in volume.capabilities}
    if types and cmd.capability.access_type not in types:
        raise InvalidArgument(
            f"volume_capability: volume {volume.volume_id} was created for {'/'.join(sorted(types))} access, "
            f"not {cmd.capability.access_type}"
        )
    capability = cmd.capability.stored()
    held = state.on(cmd.node_id) if state else None
    if held is not None:
        if held.capability == capability and held.readonly == cmd.readonly:
            return None
        raise AlreadyExists(
            f"volume {volume.volume_id} is published to node {cmd.node_id} with another capability or readonly flag"
        )
    others = state.nodes if state else ()
    if others and _exclusive(state, cmd, volume):
        raise FailedPrecondition(
            f"volume {volume.volume_id} is published to node {others[0]} and its access mode allows one node at a time"
        )
    if not accessible_from(volume.accessible_topology, node.topology):
        raise FailedPrecondition(
            f"volume {volume.volume_id} is not accessible from node {node.node_id} (it lives in pool {volume.pool})"
        )
    if node.max_volumes > 0 and node_load >= node.max_volumes:
        raise ResourceExhausted(f"node {node.node_id} already holds {node_load} volumes, its maximum")
    return VolumeAttached(
        volume_id=volume.volume_id,
        node_id=cmd.node_id,
        capability=capability,
        readonly=cmd.readonly,
        context=publish_context(cmd.node_id, volume.pool),
    )


def _exclusive(state: AttachmentState | None, cmd: ControllerPublish, volume: VolumeInfo) -> bool:
    """Whether the volume may be on one node only: the volume was created for single-node
    modes alone, or the request or any current attachment asks for one."""
    if volume.capabilities and all(c.access_mode in SINGLE_NODE_MODES for c in volume.capabilities):
        return True
    if cmd.capability.access_mode in SINGLE_NODE_MODES:
        return True
    return state is not None and any(a.capability.access_mode in SINGLE_NODE_MODES for a in state.attachments)


def decide_unpublish(state: AttachmentState | None, cmd: ControllerUnpublish) -> tuple[VolumeDetached, ...]:
    """One VolumeDetached per node to let go of (every node when ``node_id`` is empty)."""
    if state is None:
        return ()
    nodes = state.nodes if not cmd.node_id else tuple(n for n in state.nodes if n == cmd.node_id)
    return tuple(VolumeDetached(volume_id=state.volume_id, node_id=n) for n in nodes)


def evolve(state: AttachmentState | None, event: AttachmentEvent, seq: int) -> AttachmentState:
    # Both events replace what is known about one node, so applying an event to a state
    # that already contains it changes nothing (a projection replica may load such a state).
    kept = tuple(a for a in (state.attachments if state else ()) if a.node_id != event.node_id)
    match event:
        case VolumeAttached():
            added = Attachment(node_id=event.node_id, capability=event.capability, readonly=event.readonly, context=event.context)
            attachments = tuple(sorted((*kept, added), key=lambda a: a.node_id))
        case VolumeDetached():
            attachments = kept
        case _:
            raise TypeError(f"unknown event {event!r}")
    return AttachmentState(volume_id=event.volume_id, attachments=attachments, version=seq)
