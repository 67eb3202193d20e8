"""The provisioner's application layer: load → decide → append → act → append.

    app = ProvisionerApp(store, runner, pool)
    info = await app.create_volume(CreateVolume(name="pvc-1", capabilities=(Capability(),)))
"""

from __future__ import annotations

import logging

from volplane import codec, subjects
from volplane.commands import (
    CapacityInfo,
    CreateVolume,
    DeleteVolume,
    Done,
    GetCapacity,
    GetVolume,
    ListVolumes,
    VolumeInfo,
    VolumePage,
)
from volplane.errors import Aborted, ConcurrencyConflict, InvalidArgument, NotFound, ResourceExhausted, VolplaneError
from volplane.eventstore import EventStore
from volplane.locks import KeyedLocks
from volplane.projection import ProjectionRunner

from .adapters.pool import ImagePool
from .adapters.projection import INFLIGHT, VOLS, volume_key
from .domain.events import VOLUME_EVENTS, VolumeCreated, VolumeCreateFailed, VolumeDeleted
from .domain.volume import (
    MAX_NAME,
    MIN_SIZE,
    VolumeState,
    check_capabilities,
    decide_create,
    decide_delete,
    effective_fs_type,
    evolve,
    fs_type_of,
    is_volume_id,
    resolve_size,
    volume_id_for,
)

log = logging.getLogger(__name__)


class ProvisionerApp:
    def __init__(self, store: EventStore, runner: ProjectionRunner[VolumeState], pool: ImagePool) -> None:
        self._store = store
        self._runner = runner
        self._redis = runner._redis
        self._pool = pool
        self._locks = KeyedLocks("volume")
        # Bytes promised to creates in flight: id → (size, seq of the intent, 0 until appended).
        self._reserved: dict[str, tuple[int, int]] = {}

    # -- commands -----------------------------------------------------------

    async def create_volume(self, cmd: CreateVolume) -> VolumeInfo:
        name_bytes = len(cmd.name.encode())
        if not cmd.name or name_bytes > MAX_NAME:
            raise InvalidArgument(f"name: must be 1 to {MAX_NAME} bytes, got {name_bytes}")
        check_capabilities(cmd.capabilities)
        fs_type_of(cmd)
        size = resolve_size(cmd.required_bytes, cmd.limit_bytes)
        vid = volume_id_for(cmd.name)
        async with self._locks.hold(vid):
            # A name the runner has not seen is most likely new: append as the
            # aggregate's first event and let the log's concurrency check say otherwise,
            # rather than asking Redis first.
            known, state = self._runner.cached(volume_key(vid))
            for _ in range(3):
                intent = decide_create(state, cmd, pool=self._pool.name, size=size)
                if intent is None:
                    assert state is not None
                    if state.phase == "creating":
                        state = await self._finish_create(state)
                    if state.name != cmd.name:
                        raise Aborted(f"volume id collision between {cmd.name!r} and {state.name!r}")
                    return self._info(state)
                try:
                    self._reserve(vid, size)
                except ResourceExhausted:
                    if known:
                        raise
                    # Before refusing, make sure this is not a retry for a volume that exists.
                    known, state = True, await self._load(vid)
                    continue
                try:
                    seq = await self._store.append(subjects.volume(vid), intent, expected=state.version if state else 0)
                except ConcurrencyConflict:
                    self._reserved.pop(vid, None)
                    state = await self._reload(vid)
                    continue
                except BaseException:
                    self._reserved.pop(vid, None)
                    raise
                # Held until the runner counts the intent in the pool's used total.
                self._reserved[vid] = (size, seq)
                creating = evolve(state, intent, seq)
                assert creating is not None
                self._runner.note(volume_key(vid), creating, seq)
                try:
                    return self._info(await self._finish_create(creating))
                except ConcurrencyConflict:
                    state = await self._reload(vid)
            raise Aborted(f"volume {cmd.name!r} is contended, retry")

    async def delete_volume(self, cmd: DeleteVolume) -> Done:
        if not is_volume_id(cmd.volume_id):
            return Done()  # Never ours, so already gone: DeleteVolume is OK for unknown ids.
        async with self._locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
            for _ in range(3):
                if state is not None and state.phase == "deleting":
                    await self._finish_delete(state)
                    return Done()
                intent = decide_delete(state)
                if intent is None:
                    return Done()
                assert state is not None
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

    async def get_volume(self, cmd: GetVolume) -> VolumeInfo:
        state = await self._load(cmd.volume_id) if is_volume_id(cmd.volume_id) else None
        if state is None or state.phase not in ("ready", "creating", "deleting"):
            raise NotFound(f"volume {cmd.volume_id!r} does not exist")
        return self._info(state)

    async def list_volumes(self, cmd: ListVolumes) -> VolumePage:
        if cmd.max_entries < 0:
            raise InvalidArgument("max_entries: must not be negative")
        if cmd.starting_token and not is_volume_id(cmd.starting_token):
            raise Aborted(f"starting_token {cmd.starting_token[:64]!r} was not issued by this driver")
        await self._runner.settled()
        start = f"({cmd.starting_token}" if cmd.starting_token else "-"
        limit = cmd.max_entries or 1000
        ids = await self._redis.zrangebylex(VOLS, start, "+", start=0, num=limit + 1)
        page, more = ids[:limit], len(ids) > limit
        raws = await self._redis.mget([volume_key(i.decode()) for i in page]) if page else []
        states = [self._runner.projection.load(r) for r in raws if r is not None]
        return VolumePage(
            volumes=tuple(self._info(s) for s in states),
            next_token=page[-1].decode() if more else "",
        )

    async def get_capacity(self, cmd: GetCapacity) -> CapacityInfo:
        free = max(0, self._pool.capacity - self._used() - self._in_flight())
        return CapacityInfo(
            available_bytes=free,
            total_bytes=self._pool.capacity,
            maximum_volume_size=free,
            minimum_volume_size=MIN_SIZE,
        )

    async def recover(self) -> int:
        """Finish every intent a crash left without its result; returns how many."""
        ids = sorted(i.decode() for i in await self._redis.smembers(INFLIGHT))
        for vid in ids:
            async with self._locks.hold(vid):
                state = await self._load(vid)
                if state is None:
                    continue
                log.info("recovering volume %s from phase %s", vid, state.phase)
                if state.phase == "creating":
                    await self._finish_create(state)
                elif state.phase == "deleting":
                    await self._finish_delete(state)
        return len(ids)

    # -- steps --------------------------------------------------------------

    async def _finish_create(self, state: VolumeState) -> VolumeState:
        subject = subjects.volume(state.volume_id)
        try:
            self._pool.create(state.volume_id, state.capacity_bytes)
        except VolplaneError as exc:
            self._pool.delete(state.volume_id)
            seq = await self._store.append(subject, VolumeCreateFailed(volume_id=state.volume_id, reason=exc.message), expected=state.version)
            self._runner.note(volume_key(state.volume_id), state.model_copy(update={"phase": "failed", "version": seq}), seq)
            raise
        seq = await self._store.append(subject, VolumeCreated(volume_id=state.volume_id), expected=state.version)
        ready = state.model_copy(update={"phase": "ready", "version": seq})
        self._runner.note(volume_key(state.volume_id), ready, seq)
        return ready

    async def _finish_delete(self, state: VolumeState) -> None:
        self._pool.delete(state.volume_id)
        seq = await self._store.append(subjects.volume(state.volume_id), VolumeDeleted(volume_id=state.volume_id), expected=state.version)
        self._runner.note(volume_key(state.volume_id), None, seq)

    def _reserve(self, vid: str, size: int) -> None:
        """Promise ``size`` bytes of the pool to ``vid`` or raise ResourceExhausted.

        The projection's in-memory total counts intents the runner has applied;
        ``_reserved`` counts ours it has not applied yet. Other replicas' in-flight
        intents are not seen: two replicas may briefly over-commit a pool by at most
        what they have in flight (a known shortcut until capacity becomes an aggregate).
        """
        used = self._used() + self._in_flight()
        if used + size > self._pool.capacity:
            free = max(0, self._pool.capacity - used)
            raise ResourceExhausted(f"pool {self._pool.name} has {free} bytes free, {size} requested")
        self._reserved[vid] = (size, 0)

    def _in_flight(self) -> int:
        """Bytes reserved and not yet in the projection's total; drops what it has counted."""
        position = self._runner.position
        for vid in [v for v, (_, seq) in self._reserved.items() if 0 < seq <= position]:
            del self._reserved[vid]
        return sum(size for size, _ in self._reserved.values())

    def _used(self) -> int:
        return self._runner.projection.used.get(self._pool.name, 0)  # type: ignore[attr-defined]

    async def _load(self, vid: str) -> VolumeState | None:
        return await self._runner.get(volume_key(vid))

    async def _reload(self, vid: str) -> VolumeState | None:
        """The aggregate from the log itself, after losing a race to another writer."""
        state: VolumeState | None = None
        for record in await self._store.read(subjects.volume(vid)):
            state = evolve(state, codec.decode(VOLUME_EVENTS, record.data), record.seq)
        return state

    def _info(self, state: VolumeState) -> VolumeInfo:
        fs = effective_fs_type(state.parameters, state.capabilities)
        return VolumeInfo(
            volume_id=state.volume_id,
            name=state.name,
            capacity_bytes=state.capacity_bytes,
            pool=state.pool,
            capabilities=state.capabilities,
            parameters=state.parameters,
            volume_context={"pool": state.pool, "fsType": fs},
        )
