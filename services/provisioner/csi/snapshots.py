"""The provisioner's snapshots: sparse copies of a volume's image in the same pool.

    app = SnapshotsApp(store, runner, volumes, pools)
    info = await app.create_snapshot(CreateSnapshot(name="snap-1", source_volume_id=vid))
"""

from __future__ import annotations

import logging

from volplane import subjects
from volplane.commands import CreateSnapshot, DeleteSnapshot, Done, ListSnapshots, SnapshotInfo, SnapshotPage
from volplane.errors import Aborted, ConcurrencyConflict, InvalidArgument, VolplaneError
from volplane.eventstore import EventStore
from volplane.ids import is_volume_id
from volplane.locks import KeyedLocks
from volplane.projection import ProjectionRunner

from ..adapters.pool import Pools
from ..adapters.projection import SNAPS, SNAPS_INFLIGHT, snapshot_key, volume_key
from ..domain.events import SnapshotCreated, SnapshotCreateFailed, SnapshotDeleted
from ..domain.snapshot import SnapshotState, decide_create_snapshot, decide_delete_snapshot, evolve_snapshot, snapshot_id_for
from ..domain.volume import VolumeState

log = logging.getLogger(__name__)


class SnapshotsApp:
    def __init__(self, store: EventStore, runner: ProjectionRunner[SnapshotState], volumes: ProjectionRunner[VolumeState], pools: Pools) -> None:
        self._store = store
        self._runner = runner
        self._volumes = volumes
        self._pools = pools
        self._redis = runner._redis
        self._locks = KeyedLocks("snapshot")

    async def create_snapshot(self, cmd: CreateSnapshot) -> SnapshotInfo:
        if not cmd.name:
            raise InvalidArgument("name: required")
        if not cmd.source_volume_id:
            raise InvalidArgument("source_volume_id: required")
        sid = snapshot_id_for(cmd.name)
        async with self._locks.hold(sid):
            state = await self._runner.get(snapshot_key(sid))
            for _ in range(3):
                if state is not None and state.phase == "creating":
                    state = await self._finish_create(state)
                source = await self._volumes.get(volume_key(cmd.source_volume_id)) if is_volume_id(cmd.source_volume_id) else None
                intent = decide_create_snapshot(state, cmd, source)
                if intent is None:
                    assert state is not None
                    return _info(state)
                try:
                    seq = await self._store.append(subjects.snapshot(sid), intent, expected=state.version if state else 0)
                except ConcurrencyConflict:
                    state = await self._reload(sid)
                    continue
                creating = evolve_snapshot(state, intent, seq)
                assert creating is not None
                self._runner.note(snapshot_key(sid), creating, seq)
                return _info(await self._finish_create(creating))
            raise Aborted(f"snapshot {cmd.name!r} is contended, retry")

    async def delete_snapshot(self, cmd: DeleteSnapshot) -> Done:
        if not is_volume_id(cmd.snapshot_id):
            return Done()
        async with self._locks.hold(cmd.snapshot_id):
            state = await self._runner.get(snapshot_key(cmd.snapshot_id))
            if state is not None and state.phase == "deleting":
                await self._finish_delete(state)
                return Done()
            intent = decide_delete_snapshot(state)
            if intent is None:
                return Done()
            assert state is not None
            seq = await self._store.append(subjects.snapshot(cmd.snapshot_id), intent, expected=state.version)
            deleting = evolve_snapshot(state, intent, seq)
            assert deleting is not None
            self._runner.note(snapshot_key(cmd.snapshot_id), deleting, seq)
            await self._finish_delete(deleting)
            return Done()

    async def list_snapshots(self, cmd: ListSnapshots) -> SnapshotPage:
        if cmd.max_entries < 0:
            raise InvalidArgument("max_entries: must not be negative")
        if cmd.starting_token and not is_volume_id(cmd.starting_token):
            raise Aborted(f"starting_token {cmd.starting_token[:64]!r} was not issued by this driver")
        await self._runner.settled()
        if cmd.snapshot_id:
            state = await self._runner.get(snapshot_key(cmd.snapshot_id)) if is_volume_id(cmd.snapshot_id) else None
            found = [state] if state is not None and state.phase == "ready" else []
            found = [s for s in found if not cmd.source_volume_id or s.source_volume_id == cmd.source_volume_id]
            return SnapshotPage(snapshots=tuple(_info(s) for s in found))
        out: list[SnapshotState] = []
        start = f"({cmd.starting_token}" if cmd.starting_token else "-"
        # Walk the ordered ids in batches, filtering by source, until the page is full.
        while True:
            ids = await self._redis.zrangebylex(SNAPS, start, "+", start=0, num=500)
            if not ids:
                return SnapshotPage(snapshots=tuple(_info(s) for s in out))
            raws = await self._redis.mget([snapshot_key(i.decode()) for i in ids])
            for raw in raws:
                if raw is None:
                    continue
                snap = self._runner.projection.load(raw)
                if snap.phase != "ready" or (cmd.source_volume_id and snap.source_volume_id != cmd.source_volume_id):
                    continue
                if cmd.max_entries and len(out) == cmd.max_entries:
                    return SnapshotPage(snapshots=tuple(_info(s) for s in out), next_token=out[-1].snapshot_id)
                out.append(snap)
            start = f"({ids[-1].decode()}"

    async def recover(self) -> int:
        ids = sorted(i.decode() for i in await self._redis.smembers(SNAPS_INFLIGHT))
        for sid in ids:
            async with self._locks.hold(sid):
                state = await self._runner.get(snapshot_key(sid))
                try:
                    if state is not None and state.phase == "creating":
                        await self._finish_create(state)
                    elif state is not None and state.phase == "deleting":
                        await self._finish_delete(state)
                except VolplaneError as exc:
                    log.error("could not recover snapshot %s: %s", sid, exc.message)
        return len(ids)

    async def _finish_create(self, state: SnapshotState) -> SnapshotState:
        subject = subjects.snapshot(state.snapshot_id)
        pool = self._pools.get(state.pool)
        try:
            await pool.snapshot(state.source_volume_id, state.snapshot_id)
        except VolplaneError as exc:
            # The failure first, the cleanup only if that append wins (see ProvisionerApp).
            seq = await self._store.append(subject, SnapshotCreateFailed(snapshot_id=state.snapshot_id, reason=exc.message), expected=state.version)
            self._runner.note(snapshot_key(state.snapshot_id), state.model_copy(update={"phase": "failed", "version": seq}), seq)
            pool.delete_snapshot(state.snapshot_id)
            raise
        seq = await self._store.append(subject, SnapshotCreated(snapshot_id=state.snapshot_id), expected=state.version)
        ready = state.model_copy(update={"phase": "ready", "version": seq})
        self._runner.note(snapshot_key(state.snapshot_id), ready, seq)
        return ready

    async def _finish_delete(self, state: SnapshotState) -> None:
        self._pools.get(state.pool).delete_snapshot(state.snapshot_id)
        seq = await self._store.append(subjects.snapshot(state.snapshot_id), SnapshotDeleted(snapshot_id=state.snapshot_id), expected=state.version)
        self._runner.note(snapshot_key(state.snapshot_id), None, seq)

    async def _reload(self, sid: str) -> SnapshotState | None:
        """As ProvisionerApp._reload: the newest event, then the read model, or a tombstone."""
        last = await self._store.last(subjects.snapshot(sid))
        if last is None:
            return None
        await self._runner.wait_for(last.seq)
        state = await self._runner.get(snapshot_key(sid))
        if state is not None:
            return state
        return SnapshotState(
            snapshot_id=sid, name="", source_volume_id="", pool="", size_bytes=0, parameters={}, phase="deleted", version=last.seq, created_at=0
        )


def _info(state: SnapshotState) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=state.snapshot_id,
        name=state.name,
        source_volume_id=state.source_volume_id,
        size_bytes=state.size_bytes,
        creation_time_ns=state.created_at,
        ready_to_use=state.phase == "ready",
    )
