"""The volumes read model in Redis.

Keys (all under ``vp:``, so a rebuild can drop them):
  vp:vol:<id>            msgpack VolumeState, absent once the volume is deleted
  vp:vols                sorted set of live volume ids (score 0, ordered by id) for paging
  vp:vols:inflight       ids with an intent but no result yet, finished on restart
  vp:pools:used          hash: pool → bytes promised to its live volumes
"""

from __future__ import annotations

from volplane import codec, subjects
from volplane.eventstore import Record
from volplane.projection import PREFIX, Op

from ..domain.events import VOLUME_EVENTS
from ..domain.volume import VolumeState, evolve

VOLS = f"{PREFIX}vols"
INFLIGHT = f"{PREFIX}vols:inflight"
_LIVE = ("creating", "ready", "deleting")
_INFLIGHT = ("creating", "deleting")


def volume_key(volume_id: str) -> str:
    return f"{PREFIX}vol:{volume_id}"


USED = f"{PREFIX}pools:used"


class VolumesProjection:
    name = "volumes"
    filter_subject = subjects.VOLUME_EVENTS
    totals_key = USED
    _prefix_len = len(subjects.volume(""))

    def __init__(self) -> None:
        # Bytes used per pool, as of the runner's position (see Projection.totals_key).
        self.used: dict[str, int] = {}

    def restore(self, totals: dict[bytes, bytes]) -> None:
        self.used = {k.decode(): int(v) for k, v in totals.items()}

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
        was_live = old is not None and old.phase in _LIVE
        is_live = new is not None and new.phase in _LIVE
        if is_live and not was_live:
            assert new is not None
            ops += [("ZADD", VOLS, 0, vid), ("HINCRBY", USED, new.pool, new.capacity_bytes)]
            self.used[new.pool] = self.used.get(new.pool, 0) + new.capacity_bytes
        elif was_live and not is_live:
            assert old is not None
            ops += [("ZREM", VOLS, vid), ("HINCRBY", USED, old.pool, -old.capacity_bytes)]
            self.used[old.pool] = self.used.get(old.pool, 0) - old.capacity_bytes
        if new is not None and new.phase in _INFLIGHT:
            ops.append(("SADD", INFLIGHT, vid))
        elif old is not None and old.phase in _INFLIGHT:
            ops.append(("SREM", INFLIGHT, vid))
        return ops
