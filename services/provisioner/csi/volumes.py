"""The provisioner's volumes: load → decide → append intent → have the pool's node act → append result.

    app = ProvisionerApp(volumes, volumes_projection, capacity, snapshots, published_on, NodeIoLimits(bus))
    info = await app.create_volume(CreateVolume(name="pvc-1", capabilities=(Capability(),)))
    await app.modify_volume(ModifyVolume(volume_id=info.volume_id, mutable_parameters={"writeIOPS": "100"}))

``volumes`` and ``snapshots`` are the aggregates' repositories (``volplane.aggregate``):
they load, append with the expected version, note the new state and, when another
writer wins a race, reload and run the handler's step again.

The images themselves are made, grown, copied and removed by the node that owns their pool,
asked over the bus (``adapters/pool.py``; docs/decisions.md, "Pools and topology"). A node
that does not answer (down, frozen, cut off) leaves the intent in the log without its
result and the call UNAVAILABLE: the CO's retry, or ``complete`` (run every few seconds,
``csi/completer.py``) and ``recover`` (on start), finish it through the node once it is
back. A CreateVolume never records a volume whose image is not made; a DeleteVolume stays
"deleting" (gone for every new use) until its node has removed the image.

I/O limits (docs/decisions.md, "I/O limits"): ModifyVolume records the volume's new limits
(VolumeModifying), asks every node the volume may be staged on to apply them to its loop
device, and records that they did (VolumeModified). A node that stages the volume later asks
for the limits then, so the log is the one truth. A node that cannot be reached fails the
call with the intent left in the log: the CO retries ControllerModifyVolume (the
external-resizer does, with backoff), and the retry carries the same limits again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from volplane import subjects, volumes
from volplane.aggregate import Repository
from volplane.bus import Bus
from volplane.commands import (
    Capability,
    CapacityInfo,
    ContentSource,
    CreateVolume,
    DeleteVolume,
    Done,
    ExpandResult,
    ExpandVolume,
    GetCapacity,
    GetVolume,
    ImageSource,
    IoLimitsApplied,
    ListVolumes,
    ModifyVolume,
    SetIoLimits,
    VolumeInfo,
    VolumePage,
)
from volplane.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
    VolplaneError,
)

from ..adapters.projection import VolumesProjection
from ..domain.events import (
    SnapshotEvent,
    VolumeCreated,
    VolumeCreateFailed,
    VolumeDeleted,
    VolumeEvent,
    VolumeExpanded,
    VolumeExpandFailed,
    VolumeModified,
)
from ..domain.placement import candidates, choose_pool
from ..domain.snapshot import SnapshotState
from ..domain.volume import (
    MAX_NAME,
    VolumeState,
    check_capabilities,
    decide_create,
    decide_delete,
    decide_expand,
    decide_modify,
    effective_fs_type,
    fs_type_of,
    is_volume_id,
    minimum_size,
    resolve_size,
    volume_id_for,
)
from .capacity import Capacity, Reservation
from .completer import complete

log = logging.getLogger(__name__)

# Which nodes a volume is published to (the attacher knows); deleting those is refused.
PublishedOn = Callable[[str], Awaitable[tuple[str, ...]]]

# How long a node may take to write a volume's limits into its cgroup.
IO_LIMITS_TIMEOUT_S = 30.0


class NodeIoLimits:
    """Carries a volume's I/O limits to a node over the bus: ``await carry.apply(node, SetIoLimits(...))``."""

    def __init__(self, bus: Bus, timeout: float = IO_LIMITS_TIMEOUT_S) -> None:
        self._bus = bus
        self._timeout = timeout

    async def apply(self, node: str, cmd: SetIoLimits) -> bool:
        """Whether the volume is staged on ``node`` (and now limited there)."""
        reply = await self._bus.request(subjects.node_command(node, subjects.NODE_IO_LIMITS), cmd, self._timeout)
        return IoLimitsApplied.model_validate(reply).staged


class ProvisionerApp:
    def __init__(
        self,
        volumes: Repository[VolumeState, VolumeEvent],
        read: VolumesProjection,
        capacity: Capacity,
        snapshots: Repository[SnapshotState, SnapshotEvent],
        published_on: PublishedOn,
        io_limits: NodeIoLimits | None = None,
    ) -> None:
        """``io_limits`` None: limits are recorded and applied only by the nodes that stage later."""
        self._io_limits = io_limits
        self._volumes = volumes
        self._read = read
        self._published_on = published_on
        self._capacity = capacity
        self._pools = capacity.pools
        self._snapshots = snapshots

    # -- commands -----------------------------------------------------------

    async def create_volume(self, cmd: CreateVolume) -> VolumeInfo:
        size = _requested_size(cmd)
        volumes.io_limits(cmd.mutable_parameters)  # InvalidArgument before anything is recorded
        vid = volume_id_for(cmd.name)
        async with self._volumes.locks.hold(vid):
            # Load. A name the runner has not seen is most likely new: it is assumed new,
            # without a round trip to Redis, and the log's concurrency check on the append
            # says otherwise (the repository then reloads and runs ``create`` again).
            known, state = self._volumes.cached(vid)

            async def create(state: VolumeState | None) -> VolumeInfo:
                nonlocal known
                assumed, known = not known, True
                if state is not None and state.phase not in ("deleted", "failed"):
                    return await self._existing(state, cmd, size)
                if state is not None and state.phase == "failed":
                    # What a failed attempt may have left in its pool goes before a new one
                    # starts: an image there would be taken for the new one's, made already.
                    await self._pools.remove(state.pool, "volume", vid)
                try:
                    held = await self._reserve(vid, cmd, size)
                except (ResourceExhausted, NotFound):
                    # Before refusing, make sure this is not a retry for a volume that exists.
                    existing = await self._volumes.load(vid) if assumed else None
                    if existing is None:
                        raise
                    return await create(existing)
                with held:  # the pool's bytes, released unless the intent is in the log
                    intent = decide_create(state, cmd, pool=held.pool, size=held.size)
                    assert intent is not None
                    creating = await self._volumes.append(vid, state, intent)
                    held.confirm(creating.version)
                # The limits follow the intent as their own events (VolumeModifying): a crash
                # between the two leaves a volume without them, which the CO's retry of
                # CreateVolume completes (``_existing``).
                creating = await self._record_initial_limits(creating, cmd)
                done = await self._finish_create(creating)
                if done.modifying:  # No node can have staged a volume this new: nothing to carry.
                    done = await self._volumes.append(vid, done, VolumeModified(volume_id=vid))
                return self._info(done)

            return await self._volumes.retry(vid, state, create, what=f"volume {cmd.name!r}")

    async def delete_volume(self, cmd: DeleteVolume) -> Done:
        if not is_volume_id(cmd.volume_id):
            return Done()  # Never ours, so already gone: DeleteVolume is OK for unknown ids.
        vid = cmd.volume_id

        async def delete(state: VolumeState | None) -> Done:
            if state is not None and state.phase == "deleting":
                await self._finish_delete(state)
                return Done()
            intent = decide_delete(state)
            if intent is None:
                return Done()
            assert state is not None
            nodes = await self._published_on(vid)
            if nodes:
                raise FailedPrecondition(f"volume {vid} is published to {', '.join(nodes)}; unpublish it first")
            await self._finish_delete(await self._volumes.append(vid, state, intent))
            return Done()

        async with self._volumes.locks.hold(vid):
            return await self._volumes.retry(vid, await self._settled(vid), delete, what=f"volume {vid}")

    async def _settled(self, vid: str) -> VolumeState | None:
        """The volume's state, read again from the log when the read model does not know it
        or has it between intent and result: another replica may have created it, or
        finished that intent, a moment ago (a CO's DeleteVolume right after CreateVolume,
        answered by the other replica, or by one whose Redis is being rebuilt), and this
        process must neither answer "already gone" for a volume that exists nor "still
        being created" for one that is created."""
        state = await self._volumes.load(vid)
        if state is None or state.phase in ("creating", "expanding"):
            state = await self._volumes.reload(vid)
        return state

    async def expand_volume(self, cmd: ExpandVolume) -> ExpandResult:
        if not is_volume_id(cmd.volume_id):
            raise NotFound(f"volume {cmd.volume_id[:128]!r} does not exist")
        size = resolve_size(cmd.required_bytes, cmd.limit_bytes)
        vid = cmd.volume_id
        async with self._volumes.locks.hold(vid):
            state = await self._settled(vid)
            if state is not None and state.phase == "expanding":
                state = await self._finish_expand(state)
            intent = decide_expand(state, vid, size)
            assert state is not None
            if intent is None:
                if cmd.limit_bytes and state.capacity_bytes > cmd.limit_bytes:
                    raise OutOfRange(f"volume {vid} already has {state.capacity_bytes} bytes, more than limit {cmd.limit_bytes}")
                # Exactly this size: most likely a retry of the expansion that made it (the
                # CO crashed before it wrote the answer down), whose nodes may not have
                # followed yet — the same answer again, so they do. NodeExpandVolume of a
                # node that has followed changes nothing.
                return ExpandResult(capacity_bytes=state.capacity_bytes, node_expansion_required=size == state.capacity_bytes)
            with self._capacity.reserve(f"expand:{vid}", state.pool, size - state.capacity_bytes) as held:
                expanding = await self._volumes.append(vid, state, intent)
                held.confirm(expanding.version)
            done = await self._finish_expand(expanding)
            # Loop devices and filesystems on the node must follow the grown image.
            return ExpandResult(capacity_bytes=done.capacity_bytes, node_expansion_required=True)

    async def modify_volume(self, cmd: ModifyVolume) -> Done:
        """Record the new limits, have every node the volume is staged on apply them, record that."""
        if not is_volume_id(cmd.volume_id):
            volumes.io_limits(cmd.mutable_parameters)  # a bad parameter is InvalidArgument even so
            raise NotFound(f"volume {cmd.volume_id[:128]!r} does not exist")
        vid = cmd.volume_id

        async def modify(state: VolumeState | None) -> Done:
            intent = decide_modify(state, vid, cmd.mutable_parameters)
            if intent is None:
                return Done()
            assert state is not None
            await self._carry_limits(await self._volumes.append(vid, state, intent))
            return Done()

        async with self._volumes.locks.hold(vid):
            return await self._volumes.retry(vid, await self._volumes.load(vid), modify, what=f"volume {vid}")

    async def get_volume(self, cmd: GetVolume) -> VolumeInfo:
        state = await self._volumes.load(cmd.volume_id) if is_volume_id(cmd.volume_id) else None
        # A volume being deleted is gone for every new use (publishing it, validating it).
        if state is None or state.phase in ("deleted", "failed", "deleting"):
            raise NotFound(f"volume {cmd.volume_id[:128]!r} does not exist")
        return self._info(state, await self._condition(state))

    async def list_volumes(self, cmd: ListVolumes) -> VolumePage:
        if cmd.max_entries < 0:
            raise InvalidArgument("max_entries: must not be negative")
        if cmd.starting_token and not is_volume_id(cmd.starting_token):
            raise Aborted(f"starting_token {cmd.starting_token[:64]!r} was not issued by this driver")
        # The token is the last id returned.
        states, next_token = await self._read.page(after=cmd.starting_token, limit=cmd.max_entries)
        return VolumePage(volumes=tuple(self._info(s) for s in states), next_token=next_token)

    async def get_capacity(self, cmd: GetCapacity) -> CapacityInfo:
        await self._read.settled()
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
        """Finish every intent a crash left without its result (on start): those whose node
        does not answer yet wait for ``complete``; returns how many still wait."""
        return await self.complete()

    async def complete(self) -> int:
        """Try again every intent still waiting for a node that did not answer (a DeleteVolume
        on a host that was down, a CreateVolume the CO gave up on); returns how many still wait."""
        return await complete(self._volumes, await self._read.in_flight(), self._finishers(), lambda s: s.phase, lambda s: s.pool)

    def _finishers(self) -> dict[str, Callable[[VolumeState], Awaitable[object]]]:
        return {"creating": self._finish_create, "expanding": self._finish_expand, "deleting": self._finish_delete}

    # -- steps --------------------------------------------------------------

    async def _existing(self, state: VolumeState, cmd: CreateVolume, size: int) -> VolumeInfo:
        """CreateVolume for a name that has a live volume: that volume, if compatible."""
        intent = decide_create(state, cmd, pool=state.pool, size=size)
        assert intent is None  # A live volume is the answer, or decide_create refused.
        if state.phase == "creating":
            state = await self._finish_create(state)
        if state.name != cmd.name:
            raise Aborted(f"volume id collision between {cmd.name!r} and {state.name!r}")
        wanted = {k: v for k, v in volumes.io_limits(cmd.mutable_parameters).items() if v}
        if wanted != state.limits:
            if state.modified:
                raise AlreadyExists(f"volume {cmd.name!r} exists with other mutable parameters")
            state = await self._record_initial_limits(state, cmd)
        if state.modifying:
            state = await self._carry_limits(state)
        return self._info(state)

    async def _record_initial_limits(self, state: VolumeState, cmd: CreateVolume) -> VolumeState:
        """CreateVolume's mutable parameters as the volume's first limits (nothing when there are none)."""
        intent = decide_modify(state, state.volume_id, cmd.mutable_parameters) if cmd.mutable_parameters else None
        if intent is None:
            return state
        return await self._volumes.append(state.volume_id, state, intent)

    async def _reserve(self, vid: str, cmd: CreateVolume, size: int) -> Reservation:
        """Where a new volume goes, at what size (at least its content source's), with
        the bytes held in that pool: ResourceExhausted or NotFound when it cannot be."""
        source = await self._source_of(cmd)
        size = max(size, self._source_size(cmd, source))
        pool = choose_pool(self._capacity.views(), size, cmd.parameters, cmd.requisite, cmd.preferred)
        return self._capacity.reserve(vid, pool.name, size)

    async def _finish_create(self, state: VolumeState) -> VolumeState:
        vid = state.volume_id
        try:
            await self._pools.make(state.pool, vid, state.capacity_bytes, await self._source_image(state))
        except Unavailable:
            raise  # The node is away: the intent waits in the log for a retry (module docstring).
        except VolplaneError as exc:
            # Record the failure first: if another writer finished this intent meanwhile,
            # the append loses (ConcurrencyConflict) and its image is left alone.
            await self._volumes.append(vid, state, VolumeCreateFailed(volume_id=vid, reason=exc.message))
            await self._discard(state.pool, vid)
            raise
        return await self._volumes.append(vid, state, VolumeCreated(volume_id=vid))

    async def _discard(self, pool: str, vid: str) -> None:
        """After a failed create: its image, if the node made one (a retry removes it otherwise)."""
        try:
            await self._pools.remove(pool, "volume", vid)
        except VolplaneError as exc:
            log.warning("volume %s failed; its image in pool %s is removed when it is created again: %s", vid, pool, exc.message)

    async def _finish_expand(self, state: VolumeState) -> VolumeState:
        vid = state.volume_id
        try:
            await self._pools.grow(state.pool, vid, state.capacity_bytes)
        except Unavailable:
            raise  # The intent waits for the node (module docstring).
        except VolplaneError as exc:
            # Back to the size it had, so the volume stays usable and deletable.
            back = VolumeExpandFailed(volume_id=vid, capacity_bytes=state.expand_from or state.capacity_bytes, reason=exc.message)
            await self._volumes.append(vid, state, back)
            raise
        return await self._volumes.append(vid, state, VolumeExpanded(volume_id=vid, capacity_bytes=state.capacity_bytes))

    async def _carry_limits(self, state: VolumeState) -> VolumeState:
        """Apply the recorded limits on every node the volume may be staged on (those it is
        published to, and a local pool's own node), then record VolumeModified."""
        if self._io_limits is not None and state.phase != "creating":
            pool = self._pools.get(state.pool)
            nodes = set(await self._published_on(state.volume_id)) | ({pool.node} if pool.kind == "local" and pool.node else set())
            cmd = SetIoLimits(volume_id=state.volume_id, limits=state.limits)
            carry = self._io_limits
            results = await asyncio.gather(*(carry.apply(node, cmd) for node in sorted(nodes)), return_exceptions=True)
            failed = [(node, r) for node, r in zip(sorted(nodes), results, strict=True) if isinstance(r, BaseException)]
            if failed:
                node, exc = failed[0]
                if not isinstance(exc, Exception):
                    raise exc
                # The intent stays in the log without its result: the CO's retry carries it again.
                raise Unavailable(f"volume {state.volume_id}: node {node} did not apply the new I/O limits: {getattr(exc, 'message', exc)}") from exc
        return await self._volumes.append(state.volume_id, state, VolumeModified(volume_id=state.volume_id))

    async def _finish_delete(self, state: VolumeState) -> None:
        # Unavailable leaves the intent: the volume stays "deleting" (NotFound for every new
        # use) until its node removes the image, on the CO's retry or ``complete``.
        await self._pools.remove(state.pool, "volume", state.volume_id)
        await self._volumes.append(state.volume_id, state, VolumeDeleted(volume_id=state.volume_id))

    # -- content sources ----------------------------------------------------

    async def _source_of(self, cmd: CreateVolume) -> VolumeState | SnapshotState | None:
        src = cmd.content_source
        if src is None:
            return None
        if src.kind == "snapshot":
            snap = await self._snapshots.load(src.id) if is_volume_id(src.id) else None
            if snap is None or snap.phase != "ready":
                raise NotFound(f"snapshot {src.id[:128]!r} does not exist")
            return snap
        vol = await self._volumes.load(src.id) if is_volume_id(src.id) else None
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

    async def _source_image(self, state: VolumeState) -> ImageSource | None:
        """Where the content source's data is: its own pool (and node), which may differ from ours."""
        src = state.content_source
        if src is None:
            return None
        if src.kind == "snapshot":
            snap = await self._snapshots.load(src.id)
            if snap is None or snap.phase in ("deleted", "failed"):
                raise NotFound(f"snapshot {src.id} is gone")
            return self._pools.source("snapshot", src.id, snap.pool)
        vol = await self._volumes.load(src.id)
        if vol is None or vol.phase in ("deleted", "failed"):
            raise NotFound(f"source volume {src.id} is gone")
        return self._pools.source("volume", src.id, vol.pool)

    # -- answers -------------------------------------------------------------

    async def _condition(self, state: VolumeState) -> str:
        """ControllerGetVolume's volume condition: what is wrong with the image, as its node sees it."""
        if state.phase != "ready":
            return ""
        try:
            image = await self._pools.stat(state.pool, state.volume_id)
        except Unavailable as exc:
            return exc.message
        except VolplaneError as exc:
            log.warning("volume %s: cannot check its image: %s", state.volume_id, exc.message)
            return ""
        return "" if image.exists else f"the image of volume {state.volume_id} is missing from pool {state.pool}"

    def _info(self, state: VolumeState, condition: str = "") -> VolumeInfo:
        pool = next((p for p in self._capacity.views() if p.name == state.pool), None)
        return VolumeInfo(
            volume_id=state.volume_id,
            name=state.name,
            capacity_bytes=state.capacity_bytes,
            pool=state.pool,
            capabilities=tuple(Capability.of(c) for c in state.capabilities),
            parameters=state.parameters,
            volume_context={"pool": state.pool, "fsType": effective_fs_type(state.parameters, state.capabilities)},
            accessible_topology=pool.topology if pool else (),
            content_source=ContentSource.of(state.content_source),
            abnormal=bool(condition),
            condition=condition,
            mutable_parameters=volumes.format_io_limits(state.limits),
        )


def _requested_size(cmd: CreateVolume) -> int:
    """The size to create, once the request is known to be well formed (InvalidArgument, OutOfRange)."""
    name_bytes = len(cmd.name.encode())
    if not cmd.name or name_bytes > MAX_NAME:
        raise InvalidArgument(f"name: must be 1 to {MAX_NAME} bytes, got {name_bytes}")
    check_capabilities(cmd.capabilities)
    fs_type_of(cmd)
    return resolve_size(cmd.required_bytes, cmd.limit_bytes, minimum_size(cmd))


def minimum_size_for(parameters: dict[str, str]) -> int:
    return volumes.minimum_size(volumes.fs_type_of((), parameters))
