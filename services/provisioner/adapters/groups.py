"""The volume group snapshots read model in Redis.

Keys (under ``vp:``):
  vp:gsnap:<id>            msgpack GroupSnapshotState of a live group snapshot
  vp:gsnaps:inflight       group ids with an intent but no result yet, finished on restart

    groups = GroupSnapshotsProjection()
    repository = Repository(store, await rt.follow(groups), GROUP_SNAPSHOTS)
    await groups.in_flight()
"""

from __future__ import annotations

from volplane import codec, subjects
from volplane.aggregate import Aggregate
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op, ProjectionBase

from ..domain.events import GROUP_SNAPSHOT_EVENTS, GroupSnapshotEvent
from ..domain.group_snapshot import GroupSnapshotState, evolve_group

__all__ = ["GROUP_SNAPSHOTS", "GroupSnapshotsProjection"]

GROUPS_INFLIGHT = f"{PREFIX}gsnaps:inflight"
_INFLIGHT = ("creating", "deleting")


def group_key(group_snapshot_id: str) -> str:
    return f"{PREFIX}gsnap:{group_snapshot_id}"


def _kept(state: GroupSnapshotState) -> GroupSnapshotState | None:
    return None if state.phase == "deleted" else state


def _tombstone(group_snapshot_id: str, version: int) -> GroupSnapshotState:
    return GroupSnapshotState(
        group_snapshot_id=group_snapshot_id, name="", source_volume_ids=(), snapshot_ids=(), parameters={}, phase="deleted", version=version, created_at=0
    )


GROUP_SNAPSHOTS: Aggregate[GroupSnapshotState, GroupSnapshotEvent] = Aggregate(
    kind="group snapshot", subject=subjects.group_snapshot, key=group_key, evolve=evolve_group, tombstone=_tombstone, kept=_kept
)


class GroupSnapshotsProjection(ProjectionBase[GroupSnapshotState]):
    name = "group_snapshots"
    filter_subject = subjects.GROUP_SNAPSHOT_EVENTS
    _prefix_len = len(subjects.group_snapshot(""))

    def key_for(self, record: Record) -> str | None:
        return group_key(record.subject[self._prefix_len :])

    def evolve(self, state: GroupSnapshotState | None, record: Record) -> GroupSnapshotState | None:
        new = evolve_group(state, codec.decode(GROUP_SNAPSHOT_EVENTS, record.data), record.seq)
        return None if new is None else _kept(new)

    def dump(self, state: GroupSnapshotState) -> bytes:
        return codec.encode(state)

    def load(self, raw: bytes) -> GroupSnapshotState:
        return GroupSnapshotState.model_validate(codec.unpack(raw))

    def ops(self, key: str, old: GroupSnapshotState | None, new: GroupSnapshotState | None) -> list[Op]:
        gid = key[len(group_key("")) :]
        if new is not None and new.phase in _INFLIGHT:
            return [("SADD", GROUPS_INFLIGHT, gid)]
        if old is not None and old.phase in _INFLIGHT:
            return [("SREM", GROUPS_INFLIGHT, gid)]
        return []

    async def in_flight(self) -> list[str]:
        """Ids of group snapshots with an intent and no result yet, sorted (to finish on start)."""
        return await self.runner.members(GROUPS_INFLIGHT)
