"""The provisioner's snapshots: sparse copies of a volume's image in the same pool, made by
the node that owns the pool (``adapters/pool.py``). A node that does not answer leaves the
intent in the log and the call UNAVAILABLE; a retry, ``complete`` or ``recover`` finishes it.

    app = SnapshotsApp(snapshots, snapshots_projection, volumes, pools)
    info = await app.create_snapshot(CreateSnapshot(name="snap-1", source_volume_id=vid))
    same = await app.get_snapshot(GetSnapshot(snapshot_id=info.snapshot_id))

A member of a volume group snapshot is an ordinary snapshot here too (listed, got, restored
from), but its group takes and deletes it (``group_snapshots.py``): DeleteSnapshot refuses
it and ``recover`` leaves its unfinished copy to the group's cut.

``snapshots`` and ``volumes`` are the aggregates' repositories (``volplane.aggregate``).
"""

from __future__ import annotations

import logging

from volplane.aggregate import Repository
from volplane.commands import CreateSnapshot, DeleteSnapshot, Done, GetSnapshot, ListSnapshots, SnapshotInfo, SnapshotPage
from volplane.errors import Aborted, InvalidArgument, NotFound, Unavailable, VolplaneError
from volplane.ids import is_volume_id

from ..adapters.pool import Pools
from ..adapters.projection import SnapshotsProjection
from ..domain.events import SnapshotCreated, SnapshotCreateFailed, SnapshotDeleted, SnapshotEvent, VolumeEvent
from ..domain.snapshot import SnapshotState, decide_create_snapshot, decide_delete_snapshot, snapshot_id_for
from ..domain.volume import VolumeState
from .completer import complete

log = logging.getLogger(__name__)


class SnapshotsApp:
    def __init__(
        self,
        snapshots: Repository[SnapshotState, SnapshotEvent],
        read: SnapshotsProjection,
        volumes: Repository[VolumeState, VolumeEvent],
        pools: Pools,
    ) -> None:
        self._snapshots = snapshots
        self._read = read
        self._volumes = volumes
        self._pools = pools

    async def create_snapshot(self, cmd: CreateSnapshot) -> SnapshotInfo:
        if not cmd.name:
            raise InvalidArgument("name: required")
        if not cmd.source_volume_id:
            raise InvalidArgument("source_volume_id: required")
        sid = snapshot_id_for(cmd.name)

        async def create(state: SnapshotState | None) -> SnapshotInfo:
            if state is not None and state.phase == "creating":
                state = await self._finish_create(state)
            if state is not None and state.phase == "failed":
                # What a failed attempt may have left goes first: an image there would be taken for the new copy.
                await self._pools.remove(state.pool, "snapshot", sid)
            source = await self._volumes.load(cmd.source_volume_id) if is_volume_id(cmd.source_volume_id) else None
            intent = decide_create_snapshot(state, cmd, source)
            if intent is None:
                assert state is not None
                return _info(state)
            creating = await self._snapshots.append(sid, state, intent)
            return _info(await self._finish_create(creating))

        async with self._snapshots.locks.hold(sid):
            return await self._snapshots.retry(sid, await self._snapshots.load(sid), create, what=f"snapshot {cmd.name!r}")

    async def delete_snapshot(self, cmd: DeleteSnapshot) -> Done:
        if not is_volume_id(cmd.snapshot_id):
            return Done()
        sid = cmd.snapshot_id
        async with self._snapshots.locks.hold(sid):
            state = await self._snapshots.load(sid)
            if state is not None and state.phase == "deleting":
                await self._finish_delete(state)
                return Done()
            intent = decide_delete_snapshot(state)
            if intent is None:
                return Done()
            assert state is not None
            await self._finish_delete(await self._snapshots.append(sid, state, intent))
            return Done()

    async def get_snapshot(self, cmd: GetSnapshot) -> SnapshotInfo:
        """GetSnapshot: the snapshot as the log has it, NOT_FOUND once it is gone."""
        state = await self._snapshots.load(cmd.snapshot_id) if is_volume_id(cmd.snapshot_id) else None
        if state is None or state.phase in ("deleted", "failed"):
            raise NotFound(f"snapshot {cmd.snapshot_id[:128]!r} does not exist")
        return _info(state)

    async def delete_member(self, snapshot_id: str) -> None:
        """Delete one member of a group snapshot, for its group (DeleteVolumeGroupSnapshot)."""
        async with self._snapshots.locks.hold(snapshot_id):
            state = await self._snapshots.load(snapshot_id)
            if state is not None and state.phase == "creating":
                # Its group never finished the cut (it failed or was not recovered): no copy counts.
                await self._snapshots.append(snapshot_id, state, SnapshotCreateFailed(snapshot_id=snapshot_id, reason="group snapshot deleted"))
                await self.discard(state.pool, snapshot_id)
                return
            if state is not None and state.phase == "deleting":
                await self._finish_delete(state)
                return
            intent = decide_delete_snapshot(state, by_group=True)
            if intent is not None:
                assert state is not None
                await self._finish_delete(await self._snapshots.append(snapshot_id, state, intent))

    async def list_snapshots(self, cmd: ListSnapshots) -> SnapshotPage:
        if cmd.max_entries < 0:
            raise InvalidArgument("max_entries: must not be negative")
        if cmd.starting_token and not is_volume_id(cmd.starting_token):
            raise Aborted(f"starting_token {cmd.starting_token[:64]!r} was not issued by this driver")
        await self._read.settled()

        def wanted(snap: SnapshotState) -> bool:
            return snap.phase == "ready" and (not cmd.source_volume_id or snap.source_volume_id == cmd.source_volume_id)

        if cmd.snapshot_id:
            state = await self._snapshots.load(cmd.snapshot_id) if is_volume_id(cmd.snapshot_id) else None
            return SnapshotPage(snapshots=tuple(_info(s) for s in [state] if s is not None and wanted(s)))
        found, next_token = await self._read.page(wanted, after=cmd.starting_token, limit=cmd.max_entries)
        return SnapshotPage(snapshots=tuple(_info(s) for s in found), next_token=next_token)

    async def recover(self) -> int:
        """Finish every intent a crash left without its result (on start): those whose node
        does not answer yet wait for ``complete``; returns how many still wait."""
        return await self.complete()

    async def complete(self) -> int:
        """Try again the intents that wait for a node that did not answer; returns how many still wait."""
        finishers = {"creating": self._recover_create, "deleting": self._finish_delete}
        return await complete(self._snapshots, await self._read.in_flight(), finishers, lambda s: s.phase, lambda s: s.pool)

    async def discard(self, pool: str, snapshot_id: str) -> None:
        """A failed snapshot's copy, if its node made one (else removed before the name is used again)."""
        try:
            await self._pools.remove(pool, "snapshot", snapshot_id)
        except VolplaneError as exc:
            log.warning("snapshot %s failed; its copy in pool %s is removed when it is taken again: %s", snapshot_id, pool, exc.message)

    async def _recover_create(self, state: SnapshotState) -> SnapshotState:
        # A group's member is copied only inside its group's cut: GroupSnapshotsApp.recover finishes it.
        return state if state.group_snapshot_id else await self._finish_create(state)

    async def _finish_create(self, state: SnapshotState) -> SnapshotState:
        sid = state.snapshot_id
        try:
            await self._pools.snapshot(state.pool, state.source_volume_id, sid)
        except Unavailable:
            raise  # The node is away: the intent waits for a retry (module docstring).
        except VolplaneError as exc:
            # The failure first, the cleanup only if that append wins (see ProvisionerApp).
            await self._snapshots.append(sid, state, SnapshotCreateFailed(snapshot_id=sid, reason=exc.message))
            await self.discard(state.pool, sid)
            raise
        return await self._snapshots.append(sid, state, SnapshotCreated(snapshot_id=sid))

    async def _finish_delete(self, state: SnapshotState) -> None:
        await self._pools.remove(state.pool, "snapshot", state.snapshot_id)
        await self._snapshots.append(state.snapshot_id, state, SnapshotDeleted(snapshot_id=state.snapshot_id))


def info(state: SnapshotState) -> SnapshotInfo:
    """The reply for one snapshot (also a group's member)."""
    return _info(state)


def _info(state: SnapshotState) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=state.snapshot_id,
        name=state.name,
        source_volume_id=state.source_volume_id,
        size_bytes=state.size_bytes,
        creation_time_ns=state.created_at,
        ready_to_use=state.phase == "ready",
        group_snapshot_id=state.group_snapshot_id,
    )
