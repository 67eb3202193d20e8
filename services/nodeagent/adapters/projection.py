"""The node's read model in Redis: what this node did for each volume.

Keys (under ``vp:``):
  vp:node:<node>:vol:<id>      msgpack NodeVolumeState, absent when nothing is left on the node
  vp:node:<node>:inflight      ids with an intent but no result, finished on restart

    volumes = NodeProjection("node-1")
    repository = Repository(store, ProjectionRunner(redis, store, volumes), node_volumes(volumes))
    await volumes.in_flight()        # ids to finish on start
"""

from __future__ import annotations

from volplane import codec, subjects
from volplane.aggregate import Aggregate
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op, ProjectionBase

from ..domain.events import NODE_VOLUME_EVENTS, NodeVolumeEvent
from ..domain.volume import NodeVolumeState, evolve, is_idle

__all__ = ["NodeProjection", "node_volumes"]


def node_volumes(projection: NodeProjection) -> Aggregate[NodeVolumeState, NodeVolumeEvent]:
    """The aggregate of one volume on the projection's node, on subject ``vp.ev.node.<node>.vol.<id>``.

    An idle volume (nothing left on the node) has no key in Redis, and its tombstone is the
    idle state at the log's version. This process still notes the idle state it appended
    itself (``kept`` is the whole state), so that the next stage appends right after it.
    """
    node = projection.node

    def subject(volume_id: str) -> str:
        return subjects.node_volume(node, volume_id)

    def tombstone(volume_id: str, version: int) -> NodeVolumeState:
        return NodeVolumeState(volume_id=volume_id, version=version)

    return Aggregate(kind="volume", subject=subject, key=projection.key, evolve=evolve, tombstone=tombstone)


class NodeProjection(ProjectionBase[NodeVolumeState]):
    def __init__(self, node: str) -> None:
        self.node = node
        self.name = f"node:{node}"
        self.filter_subject = subjects.node_events(node)
        self._subject_prefix = len(subjects.node_volume(node, ""))
        self._key_prefix = f"{PREFIX}node:{node}:vol:"
        self._inflight = f"{PREFIX}node:{node}:inflight"

    def key(self, volume_id: str) -> str:
        return self._key_prefix + volume_id

    def key_for(self, record: Record) -> str | None:
        return self.key(record.subject[self._subject_prefix :])

    def evolve(self, state: NodeVolumeState | None, record: Record) -> NodeVolumeState | None:
        new = evolve(state, codec.decode(NODE_VOLUME_EVENTS, record.data), record.seq)
        return None if new is None or is_idle(new) else new

    def dump(self, state: NodeVolumeState) -> bytes:
        return codec.encode(state)

    def load(self, raw: bytes) -> NodeVolumeState:
        return NodeVolumeState.model_validate(codec.unpack(raw))

    def ops(self, key: str, old: NodeVolumeState | None, new: NodeVolumeState | None) -> list[Op]:
        vid = key[len(self._key_prefix) :]
        if new is not None and _pending(new):
            return [("SADD", self._inflight, vid)]
        if old is not None and _pending(old):
            return [("SREM", self._inflight, vid)]
        return []

    async def in_flight(self) -> list[str]:
        """Ids of volumes with an intent and no result on this node, sorted (to finish on start)."""
        return await self.runner.members(self._inflight)


def _pending(state: NodeVolumeState) -> bool:
    return state.stage_phase in ("staging", "unstaging") or state.expanding or any(p.phase != "published" for p in state.publications)
