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

The queries the provisioner needs are the projections' methods (a page of volumes or
snapshots, the ids in flight, each pool's totals), and the two aggregates' specifics
for the repository (``VOLUMES``, ``SNAPSHOTS``) are stated here, next to their keys:

    volumes = VolumesProjection()
    repository = Repository(store, ProjectionRunner(redis, store, volumes), VOLUMES)
    states, next_token = await volumes.page(after="", limit=100)
"""

from __future__ import annotations

from collections.abc import Callable

from volplane import codec, subjects
from volplane.aggregate import Aggregate
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op, ProjectionBase

from ..domain.events import SNAPSHOT_EVENTS, VOLUME_EVENTS, SnapshotEvent, VolumeEvent
from ..domain.snapshot import SnapshotState, evolve_snapshot
from ..domain.volume import VolumeState, evolve

__all__ = ["SNAPSHOTS", "VOLUMES", "SnapshotsProjection", "VolumesProjection"]

VOLS = f"{PREFIX}vols"
INFLIGHT = f"{PREFIX}vols:inflight"
_LIVE = ("creating", "ready", "expanding", "deleting")
_INFLIGHT = ("creating", "expanding", "deleting")


def volume_key(volume_id: str) -> str:
    return f"{PREFIX}vol:{volume_id}"


USED = f"{PREFIX}pools:used"
_COUNT = "#volumes"


def _volume_kept(state: VolumeState) -> VolumeState | None:
    # A deleted volume leaves no key behind; its history stays in the log.
    return None if state.phase == "deleted" else state


def _volume_tombstone(volume_id: str, version: int) -> VolumeState:
    return VolumeState(
        volume_id=volume_id, name="", pool="", capacity_bytes=0, capabilities=(), parameters={}, phase="deleted", version=version, created_at=0
    )


VOLUMES: Aggregate[VolumeState, VolumeEvent] = Aggregate(
    kind="volume", subject=subjects.volume, key=volume_key, evolve=evolve, tombstone=_volume_tombstone, kept=_volume_kept
)


class VolumesProjection(ProjectionBase[VolumeState]):
    name = "volumes"
    filter_subject = subjects.VOLUME_EVENTS
    totals_key: str | None = USED
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
        return None if new is None else _volume_kept(new)

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

    # -- queries --------------------------------------------------------------

    async def page(self, after: str = "", limit: int = 0) -> tuple[list[VolumeState], str]:
        """Live volumes in id order after the id ``after``: at most ``limit`` (0: all), and
        the id to resume after ("" at the end). Includes every write of this process."""
        await self.runner.settled()
        # Ids are listed in order, so a page resumes correctly even if the volume it
        # resumes after was deleted since.
        ids = await self.runner.ids_after(VOLS, after, limit + 1 if limit else 0)
        page = ids[:limit] if limit else ids
        more = bool(limit) and len(ids) > limit
        states = await self.runner.states([volume_key(i) for i in page])
        return [s for s in states if s is not None], page[-1] if more else ""

    async def in_flight(self) -> list[str]:
        """Ids of volumes with an intent and no result yet, sorted (to finish on start)."""
        return await self.runner.members(INFLIGHT)


def _deltas(old: VolumeState | None, new: VolumeState | None) -> list[tuple[str, int, int]]:
    """How a change moves each pool's (bytes, volumes): a volume appearing, going, or resized."""
    was = old if old is not None and old.phase in _LIVE else None
    now = new if new is not None and new.phase in _LIVE else None
    if now is not None and was is None:
        return [(now.pool, now.capacity_bytes, 1)]
    if was is not None and now is None:
        return [(was.pool, -was.capacity_bytes, -1)]
    if was is not None and now is not None and was.capacity_bytes != now.capacity_bytes:
        return [(now.pool, now.capacity_bytes - was.capacity_bytes, 0)]
    return []


SNAPS = f"{PREFIX}snaps"
SNAPS_INFLIGHT = f"{PREFIX}snaps:inflight"
SNAP_USED = f"{PREFIX}pools:snapshots"


def snapshot_key(snapshot_id: str) -> str:
    return f"{PREFIX}snap:{snapshot_id}"


def _snapshot_kept(state: SnapshotState) -> SnapshotState | None:
    return None if state.phase == "deleted" else state


def _snapshot_tombstone(snapshot_id: str, version: int) -> SnapshotState:
    return SnapshotState(
        snapshot_id=snapshot_id, name="", source_volume_id="", pool="", size_bytes=0, parameters={}, phase="deleted", version=version, created_at=0
    )


SNAPSHOTS: Aggregate[SnapshotState, SnapshotEvent] = Aggregate(
    kind="snapshot", subject=subjects.snapshot, key=snapshot_key, evolve=evolve_snapshot, tombstone=_snapshot_tombstone, kept=_snapshot_kept
)
# Snapshot ids read from Redis per round trip while a page is filled.
_SNAPSHOT_BATCH = 500


class SnapshotsProjection(ProjectionBase[SnapshotState]):
    name = "snapshots"
    filter_subject = subjects.SNAPSHOT_EVENTS
    totals_key: str | None = SNAP_USED
    _prefix_len = len(subjects.snapshot(""))

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def restore(self, totals: dict[bytes, bytes]) -> None:
        self.used = {k.decode(): int(v) for k, v in totals.items()}

    def key_for(self, record: Record) -> str | None:
        return snapshot_key(record.subject[self._prefix_len :])

    def evolve(self, state: SnapshotState | None, record: Record) -> SnapshotState | None:
        new = evolve_snapshot(state, codec.decode(SNAPSHOT_EVENTS, record.data), record.seq)
        return None if new is None else _snapshot_kept(new)

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

    # -- queries --------------------------------------------------------------

    async def page(self, where: Callable[[SnapshotState], bool], after: str = "", limit: int = 0) -> tuple[list[SnapshotState], str]:
        """Snapshots ``where`` holds for, in id order after the id ``after``: at most
        ``limit`` (0: all), and the id to resume after ("" at the end)."""
        await self.runner.settled()
        out: list[SnapshotState] = []
        # Walk the ordered ids in batches, filtering, until the page is full.
        while True:
            ids = await self.runner.ids_after(SNAPS, after, _SNAPSHOT_BATCH)
            if not ids:
                return out, ""
            for snap in await self.runner.states([snapshot_key(i) for i in ids]):
                if snap is None or not where(snap):
                    continue
                if limit and len(out) == limit:
                    return out, out[-1].snapshot_id
                out.append(snap)
            after = ids[-1]

    async def in_flight(self) -> list[str]:
        """Ids of snapshots with an intent and no result yet, sorted (to finish on start)."""
        return await self.runner.members(SNAPS_INFLIGHT)


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
