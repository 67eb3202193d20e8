"""The provisioner's volumes: load → decide → append intent → act on the pool → append result.

    app = ProvisionerApp(store, runner, capacity, snapshots)
    info = await app.create_volume(CreateVolume(name="pvc-1", capabilities=(Capability(),)))
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from volplane import subjects
from volplane.commands import (
    CapacityInfo,
    CreateVolume,
    DeleteVolume,
    Done,
    ExpandResult,
    ExpandVolume,
    GetCapacity,
    GetVolume,
    ListVolumes,
    VolumeInfo,
    VolumePage,
)
from volplane.errors import (
    Aborted,
    ConcurrencyConflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    VolplaneError,
)
from volplane.eventstore import EventStore
from volplane.locks import KeyedLocks
from volplane.projection import ProjectionRunner

from ..adapters.projection import INFLIGHT, VOLS, snapshot_key, volume_key
from .capacity import Capacity
from ..domain.events import VolumeCreated, VolumeCreateFailed, VolumeDeleted, VolumeExpanded, VolumeExpandFailed
from ..domain.placement import candidates, choose_pool
from ..domain.snapshot import SnapshotState
from ..domain.volume import (
    MAX_NAME,
    MIN_SIZE,
    MIN_SIZE_XFS,
    VolumeState,
    check_capabilities,
    decide_create,
    decide_delete,
    decide_expand,
    effective_fs_type,
    evolve,
    fs_type_of,
    is_volume_id,
    minimum_size,
    resolve_size,
    volume_id_for,
)

log = logging.getLogger(__name__)

# Which nodes a volume is published to (the attacher knows); deleting those is refused.
PublishedOn = Callable[[str], Awaitable[tuple[str, ...]]]


class ProvisionerApp:
    def __init__(
        self,
        store: EventStore,
        runner: ProjectionRunner[VolumeState],
        capacity: Capacity,
        snapshots: ProjectionRunner[SnapshotState],
        published_on: PublishedOn,
    ) -> None:
        self._store = store
        self._published_on = published_on
        self._runner = runner
        self._redis = runner._redis
        self._capacity = capacity
        self._pools = capacity.pools
        self._snapshots = snapshots
        self.locks = KeyedLocks("volume")

    # -- commands -----------------------------------------------------------

    async def create_volume(self, cmd: CreateVolume) -> VolumeInfo:
        name_bytes = len(cmd.name.encode())
        if not cmd.name or name_bytes > MAX_NAME:
            raise InvalidArgument(f"name: must be 1 to {MAX_NAME} bytes, got {name_bytes}")
        check_capabilities(cmd.capabilities)
        fs_type_of(cmd)
        size = resolve_size(cmd.required_bytes, cmd.limit_bytes, minimum_size(cmd))
        vid = volume_id_for(cmd.name)
        async with self.locks.hold(vid):
            # A name the runner has not seen is most likely new: append as the
            # aggregate's first event and let the log's concurrency check say otherwise,
            # rather than asking Redis first.
            known, state = self._runner.cached(volume_key(vid))
            for _ in range(3):
                if state is not None and state.phase not in ("deleted", "failed"):
                    intent = decide_create(state, cmd, pool=state.pool, size=size)
                    assert intent is None
                    if state.phase == "creating":
                        state = await self._finish_create(state)
                    if state.name != cmd.name:
                        raise Aborted(f"volume id collision between {cmd.name!r} and {state.name!r}")
                    return self._info(state)
                try:
                    source = await self._source_of(cmd)
                    size = max(size, self._source_size(cmd, source))
                    pool = choose_pool(self._capacity.views(), size, cmd.parameters, cmd.requisite, cmd.preferred)
                    self._capacity.reserve(vid, pool.name, size)
                except (ResourceExhausted, NotFound):
                    if known:
                        raise
                    # Before refusing, make sure this is not a retry for a volume that exists.
                    known, state = True, await self._load(vid)
                    if state is None:
                        raise
                    continue
                intent = decide_create(state, cmd, pool=pool.name, size=size)
                assert intent is not None
                try:
                    seq = await self._store.append(subjects.volume(vid), intent, expected=state.version if state else 0)
                except ConcurrencyConflict:
                    self._capacity.release(vid)
                    known, state = True, await self._reload(vid)
                    continue
                except BaseException:
                    self._capacity.release(vid)
                    raise
                self._capacity.confirm(vid, seq, self._runner)
                creating = evolve(state, intent, seq)
                assert creating is not None
                self._runner.note(volume_key(vid), creating, seq)
                try:
                    return self._info(await self._finish_create(creating))
                except ConcurrencyConflict:
                    known, state = True, await self._reload(vid)
            raise Aborted(f"volume {cmd.name!r} is contended, retry")

    async def delete_volume(self, cmd: DeleteVolume) -> Done:
        if not is_volume_id(cmd.volume_id):
            return Done()  # Never ours, so already gone: DeleteVolume is OK for unknown ids.
        async with self.locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
            for _ in range(3):
                if state is not None and state.phase == "deleting":
                    await self._finish_delete(state)
                    return Done()
                intent = decide_delete(state)
                if intent is None:
                    return Done()
                assert state is not None
                nodes = await self._published_on(state.volume_id)
                if nodes:
                    raise FailedPrecondition(f"volume {state.volume_id} is published to {', '.join(nodes)}; unpublish it first")
                try:
                    seq = await self._store.append(subjects.volume(state.volume_id), intent, expected=state.version)
                except ConcurrencyConflict:
                    state = await self._reload(cmd.volume_id)
                    continue
                deleting = evolve(state, intent, seq)
                assert deleting is not None
                self._runner.note(volume_key(deleting.volume_id), deleting, seq)
                await self._finish_delete(deleting)
                return Done()
            raise Aborted(f"volume {cmd.volume_id} is contended, retry")

    async def expand_volume(self, cmd: ExpandVolume) -> ExpandResult:
        if not is_volume_id(cmd.volume_id):
            raise NotFound(f"volume {cmd.volume_id[:128]!r} does not exist")
        size = resolve_size(cmd.required_bytes, cmd.limit_bytes)
        async with self.locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
            if state is not None and state.phase == "expanding":
                state = await self._finish_expand(state)
            intent = decide_expand(state, cmd.volume_id, size)
            assert state is not None
            if intent is None:
                if cmd.limit_bytes and state.capacity_bytes > cmd.limit_bytes:
                    raise OutOfRange(f"volume {cmd.volume_id} already has {state.capacity_bytes} bytes, more than limit {cmd.limit_bytes}")
                return ExpandResult(capacity_bytes=state.capacity_bytes, node_expansion_required=False)
            key = f"expand:{cmd.volume_id}"
            self._capacity.reserve(key, state.pool, size - state.capacity_bytes)
            try:
                seq = await self._store.append(subjects.volume(cmd.volume_id), intent, expected=state.version)
            except BaseException:
                self._capacity.release(key)
                raise
            self._capacity.confirm(key, seq, self._runner)
            expanding = evolve(state, intent, seq)
            assert expanding is not None
            self._runner.note(volume_key(cmd.volume_id), expanding, seq)
            done = await self._finish_expand(expanding)
            # Loop devices and filesystems on the node must follow the grown image.
            return ExpandResult(capacity_bytes=done.capacity_bytes, node_expansion_required=True)

    async def get_volume(self, cmd: GetVolume) -> VolumeInfo:
        state = await self._load(cmd.volume_id) if is_volume_id(cmd.volume_id) else None
        # A volume being deleted is gone for every new use (publishing it, validating it).
        if state is None or state.phase in ("deleted", "failed", "deleting"):
            raise NotFound(f"volume {cmd.volume_id[:128]!r} does not exist")
        return self._info(state, check=True)

    async def list_volumes(self, cmd: ListVolumes) -> VolumePage:
        if cmd.max_entries < 0:
            raise InvalidArgument("max_entries: must not be negative")
        if cmd.starting_token and not is_volume_id(cmd.starting_token):
            raise Aborted(f"starting_token {cmd.starting_token[:64]!r} was not issued by this driver")
        await self._runner.settled()
        # The token is the last id returned; ids are listed in order, so a page resumes
        # correctly even if that volume was deleted since.
        start = f"({cmd.starting_token}" if cmd.starting_token else "-"
        if cmd.max_entries:
            ids = await self._redis.zrangebylex(VOLS, start, "+", start=0, num=cmd.max_entries + 1)
        else:
            ids = await self._redis.zrangebylex(VOLS, start, "+")
        page = ids[: cmd.max_entries] if cmd.max_entries else ids
        more = bool(cmd.max_entries) and len(ids) > cmd.max_entries
        raws = await self._redis.mget([volume_key(i.decode()) for i in page]) if page else []
        states = [self._runner.projection.load(r) for r in raws if r is not None]
        return VolumePage(volumes=tuple(self._info(s) for s in states), next_token=page[-1].decode() if more else "")

    async def get_capacity(self, cmd: GetCapacity) -> CapacityInfo:
        await self._runner.settled()
        requisite = (cmd.topology,) if cmd.topology else ()
        pools = {v.name: v for v in self._capacity.views()}
        try:
            options = candidates(list(pools.values()), cmd.parameters, requisite, requisite)
        except InvalidArgument:
            options = []
        free = max((p.free for p in options), default=0)
        total = max((self._pools.get(p.name).capacity for p in options), default=0)
        return CapacityInfo(available_bytes=free, total_bytes=total, maximum_volume_size=free, minimum_volume_size=minimum_size_for(cmd.parameters))

    async def recover(self) -> int:
        """Finish every intent a crash left without its result; returns how many."""
        for pool in self._pools.all():
            if swept := pool.sweep():
                log.info("removed %d half-written copies from pool %s", swept, pool.name)
        ids = sorted(i.decode() for i in await self._redis.smembers(INFLIGHT))
        for vid in ids:
            async with self.locks.hold(vid):
                state = await self._load(vid)
                if state is None:
                    continue
                log.info("recovering volume %s from phase %s", vid, state.phase)
                try:
                    if state.phase == "creating":
                        await self._finish_create(state)
                    elif state.phase == "expanding":
                        await self._finish_expand(state)
                    elif state.phase == "deleting":
                        await self._finish_delete(state)
                except VolplaneError as exc:
                    log.error("could not recover volume %s: %s", vid, exc.message)
        return len(ids)

    # -- steps --------------------------------------------------------------

    async def _finish_create(self, state: VolumeState) -> VolumeState:
        subject = subjects.volume(state.volume_id)
        pool = self._pools.get(state.pool)
        try:
            source = await self._source_image(state)
            if source is None:
                pool.create(state.volume_id, state.capacity_bytes)
            else:
                await pool.copy_in(source, state.volume_id, state.capacity_bytes)
        except VolplaneError as exc:
            # Record the failure first: if another writer finished this intent meanwhile,
            # the append loses (ConcurrencyConflict) and its image is left alone.
            seq = await self._store.append(subject, VolumeCreateFailed(volume_id=state.volume_id, reason=exc.message), expected=state.version)
            self._runner.note(volume_key(state.volume_id), state.model_copy(update={"phase": "failed", "version": seq}), seq)
            pool.delete(state.volume_id)
            raise
        seq = await self._store.append(subject, VolumeCreated(volume_id=state.volume_id), expected=state.version)
        ready = state.model_copy(update={"phase": "ready", "version": seq})
        self._runner.note(volume_key(state.volume_id), ready, seq)
        return ready

    async def _finish_expand(self, state: VolumeState) -> VolumeState:
        try:
            self._pools.get(state.pool).grow(state.volume_id, state.capacity_bytes)
        except VolplaneError as exc:
            # Back to the size it had, so the volume stays usable and deletable.
            back = VolumeExpandFailed(volume_id=state.volume_id, capacity_bytes=state.expand_from or state.capacity_bytes, reason=exc.message)
            seq = await self._store.append(subjects.volume(state.volume_id), back, expected=state.version)
            self._runner.note(volume_key(state.volume_id), evolve(state, back, seq), seq)
            raise
        event = VolumeExpanded(volume_id=state.volume_id, capacity_bytes=state.capacity_bytes)
        seq = await self._store.append(subjects.volume(state.volume_id), event, expected=state.version)
        ready = state.model_copy(update={"phase": "ready", "version": seq})
        self._runner.note(volume_key(state.volume_id), ready, seq)
        return ready

    async def _finish_delete(self, state: VolumeState) -> None:
        self._pools.get(state.pool).delete(state.volume_id)
        seq = await self._store.append(subjects.volume(state.volume_id), VolumeDeleted(volume_id=state.volume_id), expected=state.version)
        self._runner.note(volume_key(state.volume_id), None, seq)

    # -- content sources ----------------------------------------------------

    async def _source_of(self, cmd: CreateVolume) -> VolumeState | SnapshotState | None:
        src = cmd.content_source
        if src is None:
            return None
        if src.kind == "snapshot":
            snap = await self._snapshots.get(snapshot_key(src.id)) if is_volume_id(src.id) else None
            if snap is None or snap.phase != "ready":
                raise NotFound(f"snapshot {src.id[:128]!r} does not exist")
            return snap
        vol = await self._load(src.id) if is_volume_id(src.id) else None
        if vol is None or vol.phase != "ready":
            raise NotFound(f"source volume {src.id[:128]!r} does not exist")
        return vol

    def _source_size(self, cmd: CreateVolume, source: VolumeState | SnapshotState | None) -> int:
        if source is None:
            return 0
        have = source.capacity_bytes if isinstance(source, VolumeState) else source.size_bytes
        if cmd.limit_bytes and have > cmd.limit_bytes:
            raise OutOfRange(f"the content source holds {have} bytes, more than limit_bytes {cmd.limit_bytes}")
        return have

    async def _source_image(self, state: VolumeState) -> Path | None:
        """Where the content source's data is: its own pool, which may differ from ours."""
        src = state.content_source
        if src is None:
            return None
        if src.kind == "snapshot":
            snap = await self._snapshots.get(snapshot_key(src.id))
            if snap is None:
                raise NotFound(f"snapshot {src.id} is gone")
            return self._pools.get(snap.pool).snapshot_path(src.id)
        vol = await self._load(src.id)
        if vol is None:
            raise NotFound(f"source volume {src.id} is gone")
        return self._pools.get(vol.pool).path_for(src.id)

    # -- plumbing -----------------------------------------------------------

    async def _load(self, vid: str) -> VolumeState | None:
        return await self._runner.get(volume_key(vid))

    async def _reload(self, vid: str) -> VolumeState | None:
        """The aggregate as of the log's newest event for it, after losing a race: one
        direct read of the log, then the read model once it has applied that event. A
        deleted volume has no key, so it comes back as a tombstone carrying the version
        the next incarnation's first append must name."""
        last = await self._store.last(subjects.volume(vid))
        if last is None:
            return None
        await self._runner.wait_for(last.seq)
        state = await self._load(vid)
        if state is not None:
            return state
        return VolumeState(
            volume_id=vid, name="", pool="", capacity_bytes=0, capabilities=(), parameters={}, phase="deleted", version=last.seq, created_at=0
        )

    def _info(self, state: VolumeState, check: bool = False) -> VolumeInfo:
        pool = next((p for p in self._capacity.views() if p.name == state.pool), None)
        condition = ""
        if check and state.phase == "ready" and not self._pools.get(state.pool).path_for(state.volume_id).exists():
            condition = f"the image of volume {state.volume_id} is missing from pool {state.pool}"
        return VolumeInfo(
            volume_id=state.volume_id,
            name=state.name,
            capacity_bytes=state.capacity_bytes,
            pool=state.pool,
            capabilities=state.capabilities,
            parameters=state.parameters,
            volume_context={"pool": state.pool, "fsType": effective_fs_type(state.parameters, state.capabilities)},
            accessible_topology=pool.topology if pool else (),
            content_source=state.content_source,
            abnormal=bool(condition),
            condition=condition,
        )


def minimum_size_for(parameters: dict[str, str]) -> int:
    return MIN_SIZE_XFS if parameters.get("fsType") == "xfs" else MIN_SIZE
