"""The volumes read model in Redis.

Keys (all under ``vp:``, so a rebuild can drop them):
  vp:vol:<id>            msgpack VolumeState, absent once the volume is deleted
  vp:vols                sorted set of live volume ids (score 0, ordered by id) for paging
  vp:vols:inflight       ids with an intent but no result yet, finished on restart
  vp:pools:used          hash: pool → bytes promised to its live volumes, and
                         "<pool>#volumes" → how many live volumes it holds
  vp:snap:<id>           msgpack SnapshotState of a live snapshot
  vp:snaps               sorted set of live snapshot ids (ListSnapshots paging)
  vp:snaps:inflight      snapshot ids with an intent but no result yet
  vp:pools:snapshots     hash: pool → bytes held by its snapshots
"""

from __future__ import annotations

from volplane import codec, subjects
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op

from ..domain.events import SNAPSHOT_EVENTS, VOLUME_EVENTS
from ..domain.snapshot import SnapshotState, evolve_snapshot
from ..domain.volume import VolumeState, evolve

VOLS = f"{PREFIX}vols"
INFLIGHT = f"{PREFIX}vols:inflight"
_LIVE = ("creating", "ready", "expanding", "deleting")
_INFLIGHT = ("creating", "expanding", "deleting")


def volume_key(volume_id: str) -> str:
    return f"{PREFIX}vol:{volume_id}"


USED = f"{PREFIX}pools:used"
_COUNT = "#volumes"


class VolumesProjection:
    name = "volumes"
    filter_subject = subjects.VOLUME_EVENTS
    totals_key = USED
    _prefix_len = len(subjects.volume(""))

    def __init__(self) -> None:
        # Bytes used and live volumes per pool, as of the runner's position (see Projection.totals_key).
        self.used: dict[str, int] = {}
        self.count: dict[str, int] = {}

    def restore(self, totals: dict[bytes, bytes]) -> None:
        self.used, self.count = {}, {}
        for raw, value in totals.items():
            field = raw.decode()
            if field.endswith(_COUNT):
                self.count[field[: -len(_COUNT)]] = int(value)
            else:
                self.used[field] = int(value)

    def key_for(self, record: Record) -> str | None:
        return volume_key(record.subject[self._prefix_len :])

    def evolve(self, state: VolumeState | None, record: Record) -> VolumeState | None:
        new = evolve(state, codec.decode(VOLUME_EVENTS, record.data), record.seq)
        # A deleted volume leaves no key behind; its history stays in the log.
        return None if new is not None and new.phase == "deleted" else new

    def dump(self, state: VolumeState) -> bytes:
        return codec.encode(state)

    def load(self, raw: bytes) -> VolumeState:
        return VolumeState.model_validate(codec.unpack(raw))

    def ops(self, key: str, old: VolumeState | None, new: VolumeState | None) -> list[Op]:
        ops: list[Op] = []
        vid = key[len(volume_key("")) :]
        for pool, delta_bytes, delta_count in _deltas(old, new):
            ops.append(("HINCRBY", USED, pool, delta_bytes))
            if delta_count:
                ops.append(("HINCRBY", USED, pool + _COUNT, delta_count))
                ops.append(("ZADD", VOLS, 0, vid) if delta_count > 0 else ("ZREM", VOLS, vid))
        if new is not None and new.phase in _INFLIGHT:
            ops.append(("SADD", INFLIGHT, vid))
        elif old is not None and old.phase in _INFLIGHT:
            ops.append(("SREM", INFLIGHT, vid))
        return ops

    def observe(self, old: VolumeState | None, new: VolumeState | None) -> None:
        for pool, delta_bytes, delta_count in _deltas(old, new):
            self.used[pool] = self.used.get(pool, 0) + delta_bytes
            self.count[pool] = self.count.get(pool, 0) + delta_count


def _deltas(old: VolumeState | None, new: VolumeState | None) -> list[tuple[str, int, int]]:
    """How a change moves each pool's (bytes, volumes): a volume appearing, going, or resized."""
    was = old is not None and old.phase in _LIVE
    now = new is not None and new.phase in _LIVE
    if now and not was:
        assert new is not None
        return [(new.pool, new.capacity_bytes, 1)]
    if was and not now:
        assert old is not None
        return [(old.pool, -old.capacity_bytes, -1)]
    if was and now and old.capacity_bytes != new.capacity_bytes:  # type: ignore[union-attr]
        assert old is not None and new is not None
        return [(new.pool, new.capacity_bytes - old.capacity_bytes, 0)]
    return []


SNAPS = f"{PREFIX}snaps"
SNAPS_INFLIGHT = f"{PREFIX}snaps:inflight"
SNAP_USED = f"{PREFIX}pools:snapshots"


def snapshot_key(snapshot_id: str) -> str:
    return f"{PREFIX}snap:{snapshot_id}"


class SnapshotsProjection:
    name = "snapshots"
    filter_subject = subjects.SNAPSHOT_EVENTS
    totals_key = SNAP_USED
    _prefix_len = len(subjects.snapshot(""))

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def restore(self, totals: dict[bytes, bytes]) -> None:
        self.used = {k.decode(): int(v) for k, v in totals.items()}

    def key_for(self, record: Record) -> str | None:
        return snapshot_key(record.subject[self._prefix_len :])

    def evolve(self, state: SnapshotState | None, record: Record) -> SnapshotState | None:
        new = evolve_snapshot(state, codec.decode(SNAPSHOT_EVENTS, record.data), record.seq)
        return None if new is not None and new.phase == "deleted" else new

    def dump(self, state: SnapshotState) -> bytes:
        return codec.encode(state)

    def load(self, raw: bytes) -> SnapshotState:
        return SnapshotState.model_validate(codec.unpack(raw))

    def ops(self, key: str, old: SnapshotState | None, new: SnapshotState | None) -> list[Op]:
        sid = key[len(snapshot_key("")) :]
        ops: list[Op] = []
        for pool, delta in _snapshot_deltas(old, new):
            ops += [("ZADD", SNAPS, 0, sid) if delta > 0 else ("ZREM", SNAPS, sid), ("HINCRBY", SNAP_USED, pool, delta)]
        if new is not None and new.phase in ("creating", "deleting"):
            ops.append(("SADD", SNAPS_INFLIGHT, sid))
        elif old is not None and old.phase in ("creating", "deleting"):
            ops.append(("SREM", SNAPS_INFLIGHT, sid))
        return ops

    def observe(self, old: SnapshotState | None, new: SnapshotState | None) -> None:
        for pool, delta in _snapshot_deltas(old, new):
            self.used[pool] = self.used.get(pool, 0) + delta


def _snapshot_deltas(old: SnapshotState | None, new: SnapshotState | None) -> list[tuple[str, int]]:
    was = old is not None and old.phase in _LIVE
    now = new is not None and new.phase in _LIVE
    if now and not was:
        assert new is not None
        return [(new.pool, new.size_bytes)]
    if was and not now:
        assert old is not None
        return [(old.pool, -old.size_bytes)]
    return []
