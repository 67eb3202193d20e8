"""The attachments read model in Redis.

Keys (all under ``vp:``, so a rebuild can drop them):
  vp:attach:vol:<volume_id>    msgpack AttachmentState, absent while the volume is on no node
  vp:attach:node:<node_id>     set of volume ids published to that node (counted against
                               the node's max_volumes)
"""

from __future__ import annotations

from volplane import codec, subjects
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op

from ..domain.attachment import AttachmentState, evolve
from ..domain.events import ATTACHMENT_EVENTS

_VOL = f"{PREFIX}attach:vol:"
_NODE = f"{PREFIX}attach:node:"


def attachment_key(volume_id: str) -> str:
    return _VOL + volume_id


def node_key(node_id: str) -> str:
    return _NODE + node_id


class AttachmentsProjection:
    name: str = "attachments"
    filter_subject: str = subjects.ATTACHMENT_EVENTS
    totals_key: str | None = None
    _prefix_len = len(subjects.attachment(""))

    def restore(self, totals: dict[bytes, bytes]) -> None:
        return None

    def key_for(self, record: Record) -> str | None:
        return attachment_key(record.subject[self._prefix_len :])

    def evolve(self, state: AttachmentState | None, record: Record) -> AttachmentState | None:
        new = evolve(state, codec.decode(ATTACHMENT_EVENTS, record.data), record.seq)
        # A volume on no node leaves no key behind; its history stays in the log.
        return new if new.attachments else None

    def dump(self, state: AttachmentState) -> bytes:
        return codec.encode(state)

    def load(self, raw: bytes) -> AttachmentState:
        return AttachmentState.model_validate(codec.unpack(raw))

    def ops(self, key: str, old: AttachmentState | None, new: AttachmentState | None) -> list[Op]:
        vid = key[len(_VOL) :]
        before = set(old.nodes) if old else set()
        after = set(new.nodes) if new else set()
        ops: list[Op] = [("SREM", node_key(n), vid) for n in sorted(before - after)]
        ops += [("SADD", node_key(n), vid) for n in sorted(after - before)]
        return ops
