"""The attachments read model in Redis, its queries, and the aggregate's specifics.

Keys (all under ``vp:``, so a rebuild can drop them):
  vp:attach:vol:<volume_id>    msgpack AttachmentState, absent while the volume is on no node
  vp:attach:node:<node_id>     set of volume ids published to that node (counted against
                               the node's max_volumes)

    attachments = AttachmentsProjection()
    repository = Repository(store, ProjectionRunner(redis, store, attachments), ATTACHMENTS)
    await attachments.nodes_of(["3f2a…"])     # {"3f2a…": ("node-1",)}
    await attachments.count_on("node-1")      # 1
"""

from __future__ import annotations

from collections.abc import Iterable

from volplane import codec, subjects
from volplane.aggregate import Aggregate
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op, ProjectionBase

from ..domain.attachment import AttachmentState, evolve
from ..domain.events import ATTACHMENT_EVENTS, AttachmentEvent

__all__ = ["ATTACHMENTS", "AttachmentsProjection"]

_VOL = f"{PREFIX}attach:vol:"
_NODE = f"{PREFIX}attach:node:"


def attachment_key(volume_id: str) -> str:
    return _VOL + volume_id


def node_key(node_id: str) -> str:
    return _NODE + node_id


def _kept(state: AttachmentState) -> AttachmentState | None:
    # A volume on no node leaves no key behind; its history stays in the log.
    return state if state.attachments else None


def _tombstone(volume_id: str, version: int) -> AttachmentState:
    return AttachmentState(volume_id=volume_id, attachments=(), version=version)


# One aggregate per volume, on subject ``vp.ev.attachment.<volume_id>``.
ATTACHMENTS: Aggregate[AttachmentState, AttachmentEvent] = Aggregate(
    kind="volume", subject=subjects.attachment, key=attachment_key, evolve=evolve, tombstone=_tombstone, kept=_kept
)


class AttachmentsProjection(ProjectionBase[AttachmentState]):
    name: str = "attachments"
    filter_subject: str = subjects.ATTACHMENT_EVENTS
    _prefix_len = len(subjects.attachment(""))

    def key_for(self, record: Record) -> str | None:
        return attachment_key(record.subject[self._prefix_len :])

    def evolve(self, state: AttachmentState | None, record: Record) -> AttachmentState | None:
        return _kept(evolve(state, codec.decode(ATTACHMENT_EVENTS, record.data), record.seq))

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

    # -- queries --------------------------------------------------------------

    async def nodes_of(self, volume_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The nodes each volume is published to; volumes on no node are left out.
        Includes every write of this process."""
        ids = list(volume_ids)
        if not ids:
            return {}
        await self.runner.settled()
        states = await self.runner.states([attachment_key(v) for v in ids])
        return {vid: state.nodes for vid, state in zip(ids, states, strict=True) if state is not None}

    async def count_on(self, node_id: str) -> int:
        """How many volumes are published to the node, counting every write of this process."""
        await self.runner.settled()
        return await self.runner.count(node_key(node_id))
