"""The node's read model in Redis: what this node did for each volume.

Keys (under ``vp:``):
  vp:node:<node>:vol:<id>      msgpack NodeVolumeState, absent when nothing is left on the node
  vp:node:<node>:inflight      ids with an intent but no result, finished on restart
"""

from __future__ import annotations

from volplane import codec, subjects
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op

from ..domain.events import NODE_VOLUME_EVENTS
from ..domain.volume import NodeVolumeState, evolve, is_idle


class NodeProjection:
    totals_key = None

    def __init__(self, node: str) -> None:
        self.node = node
        self.name = f"node:{node}"
        self.filter_subject = subjects.node_events(node)
        self._subject_prefix = len(subjects.node_volume(node, ""))
        self._key_prefix = f"{PREFIX}node:{node}:vol:"
        self.inflight = f"{PREFIX}node:{node}:inflight"

    def restore(self, totals: dict[bytes, bytes]) -> None:
        return None

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
            return [("SADD", self.inflight, vid)]
        if old is not None and _pending(old):
            return [("SREM", self.inflight, vid)]
        return []


def _pending(state: NodeVolumeState) -> bool:
    return state.stage_phase in ("staging", "unstaging") or state.expanding or any(p.phase != "published" for p in state.publications)
