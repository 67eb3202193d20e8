"""The provisioner's volume group snapshots: one consistent cut across several volumes.

    app = GroupSnapshotsApp(groups, groups_read, snapshots_app, snapshots, volumes, pools, published_on, cut)
    info = await app.create_group(CreateGroupSnapshot(name="g-1", source_volume_ids=(a, b, c)))

The cut (docs/decisions.md, "Volume group snapshots"): the group's intent names every
member snapshot; each member's intent follows; then writes are frozen on every member at
once — ``fsfreeze -f`` of its staging mount by the node it is staged on, asked through
``NodeCut`` — and only then is any image copied; the volumes are thawed when the copies
are done or failed (and by the node itself when the freeze's lease runs out, should this
process die holding it). A member nobody has staged has no writer, so its image is copied
as it is. Where a member may be staged is what the controller knows: the nodes it is
published to (ControllerPublishVolume), and for a local pool its own node; a node run with
``VOLPLANE_REQUIRE_ATTACHMENT=0`` stages shared volumes nobody published, and those it
does not freeze. A block volume staged on a node cannot be frozen (no filesystem holds its
writers), so a group holding one is FAILED_PRECONDITION, as the spec has it for volumes
that "cannot be snapshotted together".

Results are recorded only after every copy is on disk, so on restart ``recover`` knows
which cut a member holds: if any member is recorded ready, all copies are complete and the
rest are recorded; if none is, the whole cut is taken again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from volplane import subjects
from volplane.aggregate import Repository
from volplane.bus import Bus
from volplane.commands import (
    CreateGroupSnapshot,
    DeleteGroupSnapshot,
    Done,
    FreezeVolumes,
    FrozenVolumes,
    GetGroupSnapshot,
    GroupSnapshotInfo,
    ThawVolumes,
)
from volplane.errors import Aborted, InvalidArgument, NotFound, VolplaneError
from volplane.ids import is_volume_id

from ..adapters.groups import GroupSnapshotsProjection
from ..adapters.pool import Pools
from ..domain.events import (
    GroupSnapshotCreated,
    GroupSnapshotCreateFailed,
    GroupSnapshotDeleted,
    GroupSnapshotEvent,
    SnapshotCreated,
    SnapshotCreateFailed,
    SnapshotEvent,
    VolumeEvent,
)
from ..domain.group_snapshot import (
    GroupSnapshotState,
    check_members,
    decide_create_group,
    decide_delete_group,
    group_snapshot_id_for,
)
from ..domain.snapshot import SnapshotState, decide_create_member
from ..domain.volume import VolumeState
from .snapshots import SnapshotsApp, info

log = logging.getLogger(__name__)

PublishedOn = Callable[[str], Awaitable[tuple[str, ...]]]
# How long a node holds a freeze without hearing a thaw: longer than the sparse copies of
# a group take, short enough that a crashed provisioner stalls writers only for minutes. A
# cut whose copies outlast it is not one point in time any more, and fails.
FREEZE_LEASE_S = 300.0
FREEZE_TIMEOUT_S = 60.0


class NodeCut:
    """Freeze and thaw volumes on the nodes they are staged on, over the bus."""

    def __init__(self, bus: Bus, lease_s: float = FREEZE_LEASE_S) -> None:
        self._bus = bus
        self.lease_s = lease_s

    async def freeze(self, node: str, volume_ids: tuple[str, ...]) -> tuple[str, ...]:
        reply = await self._bus.request(
            subjects.node_command(node, subjects.NODE_FREEZE), FreezeVolumes(volume_ids=volume_ids, lease_s=self.lease_s), FREEZE_TIMEOUT_S
        )
        return FrozenVolumes.model_validate(reply).volume_ids

    async def thaw(self, node: str, volume_ids: tuple[str, ...]) -> None:
        await self._bus.request(subjects.node_command(node, subjects.NODE_THAW), ThawVolumes(volume_ids=volume_ids), FREEZE_TIMEOUT_S)


class GroupSnapshotsApp:
    def __init__(
        self,
        groups: Repository[GroupSnapshotState, GroupSnapshotEvent],
        read: GroupSnapshotsProjection,
        members: SnapshotsApp,
        snapshots: Repository[SnapshotState, SnapshotEvent],
        volumes: Repository[VolumeState, VolumeEvent],
        pools: Pools,
        published_on: PublishedOn,
        cut: NodeCut,
    ) -> None:
        self._groups = groups
        self._read = read
        self._members = members
        self._snapshots = snapshots
        self._volumes = volumes
        self._pools = pools
        self._published_on = published_on
        self._cut = cut

    # -- commands -----------------------------------------------------------

    async def create_group(self, cmd: CreateGroupSnapshot) -> GroupSnapshotInfo:
        if not cmd.name:
            raise InvalidArgument("name: required")
        gid = group_snapshot_id_for(cmd.name)
        async with self._groups.locks.hold(gid):
            state = await self._groups.load(gid)
            if state is not None and state.phase == "creating":
                state = await self._finish_create(state)
            sources = {v: await self._volumes.load(v) for v in cmd.source_volume_ids if is_volume_id(v)}
            intent = decide_create_group(state, cmd, sources)
            if intent is None:
                assert state is not None
                return await self._info(state)
            creating = await self._groups.append(gid, state, intent)
            return await self._info(await self._finish_create(creating))

    async def delete_group(self, cmd: DeleteGroupSnapshot) -> Done:
        if not is_volume_id(cmd.group_snapshot_id):
            return Done()  # Not an id of ours: no such group, which DeleteVolumeGroupSnapshot answers with OK.
        gid = cmd.group_snapshot_id
        async with self._groups.locks.hold(gid):
            state = await self._groups.load(gid)
            if state is not None and state.phase == "deleting":
                check_members(state, cmd.snapshot_ids)
                await self._finish_delete(state)
                return Done()
            intent = decide_delete_group(state, cmd.snapshot_ids)
            if intent is not None:
                assert state is not None
                await self._finish_delete(await self._groups.append(gid, state, intent))
            return Done()

    async def get_group(self, cmd: GetGroupSnapshot) -> GroupSnapshotInfo:
        state = await self._groups.load(cmd.group_snapshot_id) if is_volume_id(cmd.group_snapshot_id) else None
        if state is None or state.phase in ("deleted", "failed"):
            raise NotFound(f"group snapshot {cmd.group_snapshot_id[:128]!r} does not exist")
        check_members(state, cmd.snapshot_ids)
        return await self._info(state)

    async def recover(self) -> int:
        """Finish every group intent a crash left without its result; returns how many."""
        finishers = {"creating": self._recover_create, "deleting": self._finish_delete}
        return await self._groups.recover(await self._read.in_flight(), finishers, phase=lambda s: s.phase)

    # -- steps --------------------------------------------------------------

    async def _recover_create(self, state: GroupSnapshotState) -> None:
        try:
            await self._finish_create(state)
        except VolplaneError:
            pass  # Recorded as failed by _finish_create; nothing is left frozen or half-copied.

    async def _finish_create(self, state: GroupSnapshotState) -> GroupSnapshotState:
        gid = state.group_snapshot_id
        members: list[SnapshotState] = []
        try:
            for sid, vid in zip(state.snapshot_ids, state.source_volume_ids, strict=True):
                members.append(await self._member_intent(state, sid, vid))
            pending = [m for m in members if m.phase == "creating"]
            # Any member recorded ready means the cut's copies all reached the disk before a
            # crash: record the rest as they are. None ready: take the whole cut (again).
            if pending and len(pending) == len(members):
                await self._take_cut(pending)
            for i, member in enumerate(members):
                if member.phase == "creating":
                    members[i] = await self._snapshots.append(member.snapshot_id, member, SnapshotCreated(snapshot_id=member.snapshot_id))
        except VolplaneError as exc:
            await self._fail(state, members, exc.message)
            raise
        return await self._groups.append(gid, state, GroupSnapshotCreated(group_snapshot_id=gid))

    async def _member_intent(self, group: GroupSnapshotState, sid: str, vid: str) -> SnapshotState:
        async with self._snapshots.locks.hold(sid):
            member = await self._snapshots.load(sid)
            source = await self._volumes.load(vid)
            intent = decide_create_member(member, sid, f"{group.name}/{vid}", group.group_snapshot_id, source, vid)
            if intent is None:
                assert member is not None
                return member
            return await self._snapshots.append(sid, member, intent)

    async def _take_cut(self, members: list[SnapshotState]) -> None:
        """Freeze every member where it is staged, copy every image, thaw: one point in time."""
        by_node: dict[str, list[str]] = {}
        for member in members:
            # Where it may be staged: the nodes it is published to, and a local pool's own node.
            pool = self._pools.get(member.pool)
            nodes = set(await self._published_on(member.source_volume_id)) | ({pool.node} if pool.kind == "local" and pool.node else set())
            for node in sorted(nodes):
                by_node.setdefault(node, []).append(member.source_volume_id)
        requests = [(node, tuple(vids)) for node, vids in sorted(by_node.items())]
        # A copy an earlier attempt left (a crash before any member was recorded) is of
        # another moment: the nodes keep an image that exists, so it goes before the cut.
        await asyncio.gather(*(self._pools.remove(m.pool, "snapshot", m.snapshot_id) for m in members))
        loop = asyncio.get_running_loop()
        frozen_at = loop.time()
        results = await asyncio.gather(*(self._cut.freeze(node, vids) for node, vids in requests), return_exceptions=True)
        frozen = [(node, vids) for (node, vids), r in zip(requests, results, strict=True) if not isinstance(r, BaseException)]
        try:
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            copies = await asyncio.gather(*(self._pools.snapshot(m.pool, m.source_volume_id, m.snapshot_id) for m in members), return_exceptions=True)
            failed = next((r for r in copies if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            if frozen and loop.time() - frozen_at >= self._cut.lease_s:
                # A node may have thawed on its own before the last copy ended.
                raise Aborted(f"the copies took longer than the {self._cut.lease_s:.0f} s freeze lease: the cut is not consistent")
        finally:
            for node, vids in frozen:
                try:
                    await self._cut.thaw(node, vids)
                except Exception as exc:  # noqa: BLE001 - the node's lease thaws it anyway; the others must still be thawed.
                    log.error("could not thaw %s on node %s: %s (its freeze lease will)", ", ".join(vids), node, getattr(exc, "message", exc))

    async def _fail(self, state: GroupSnapshotState, members: list[SnapshotState], reason: str) -> None:
        """Record the group and its unfinished members failed, then remove their copies."""
        gid = state.group_snapshot_id
        for member in members:
            if member.phase == "creating":
                await self._snapshots.append(member.snapshot_id, member, SnapshotCreateFailed(snapshot_id=member.snapshot_id, reason=reason))
                await self._members.discard(member.pool, member.snapshot_id)
            elif member.phase == "ready":
                # Failed after some were recorded (only a member's source gone on recovery): none outlive the group.
                await self._members.delete_member(member.snapshot_id)
        await self._groups.append(gid, state, GroupSnapshotCreateFailed(group_snapshot_id=gid, reason=reason))

    async def _finish_delete(self, state: GroupSnapshotState) -> None:
        for sid in state.snapshot_ids:
            await self._members.delete_member(sid)
        gid = state.group_snapshot_id
        await self._groups.append(gid, state, GroupSnapshotDeleted(group_snapshot_id=gid))

    async def _info(self, state: GroupSnapshotState) -> GroupSnapshotInfo:
        snaps = []
        for sid in state.snapshot_ids:
            member = await self._snapshots.load(sid)
            if member is not None and member.phase not in ("deleted", "failed"):
                snaps.append(info(member))
        ready = state.phase == "ready" and len(snaps) == len(state.snapshot_ids) and all(s.ready_to_use for s in snaps)
        return GroupSnapshotInfo(group_snapshot_id=state.group_snapshot_id, snapshots=tuple(snaps), creation_time_ns=state.created_at, ready_to_use=ready)
