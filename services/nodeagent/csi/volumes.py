"""The nodeagent's application layer: NodeStage/Unstage/Publish/Unpublish/Expand and volume stats on this host.

Every change is load → decide → append intent → act on the host (``steps.py``) → append
result, under a per-volume lock. The host steps are idempotent when redone, which is how
``recover`` finishes an intent a crash left behind. ``volumes`` is the repository of
this node's volume aggregates (``volplane.aggregate``), ``projection`` their read model.

    app = NodeApp(cfg, volumes, projection, HostStorage(), is_published=attacher_check(bus, cfg.node_id))
    await app.stage(StageVolume(volume_id=vid, staging_path="/var/lib/…/globalmount", capability=Capability()))

A volume's image is looked up when the volume is first staged — in this node's pool, then
in the shared pool — and recorded in VolumeStaging; every later step uses the recorded path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from volplane.aggregate import Repository
from volplane.commands import (
    Done,
    GetNodeLimits,
    GetVolumeStats,
    NodeExpand,
    NodeExpanded,
    NodeLimits,
    PublishVolume,
    StageVolume,
    UnpublishVolume,
    UnstageVolume,
    VolumeStats,
)
from volplane.config import Config
from volplane.errors import ConcurrencyConflict, FailedPrecondition, Internal, InvalidArgument, NotFound, VolplaneError
from volplane.ids import image_path, is_volume_id
from volplane.nodes import SHARED_POOL

from ..adapters.projection import NodeProjection
from ..adapters.storage import HostStorage, StorageError
from ..domain.events import (
    NodeVolumeEvent,
    VolumeExpandedOnNode,
    VolumeExpandOnNodeFailed,
    VolumePublished,
    VolumePublishFailed,
    VolumePublishing,
    VolumeStaged,
    VolumeStageFailed,
    VolumeStaging,
    VolumeUnpublished,
    VolumeUnstaged,
)
from ..domain.volume import (
    NodeVolumeState,
    check_capability,
    check_path,
    decide_expand,
    decide_publish,
    decide_stage,
    decide_unpublish,
    decide_unstage,
    is_idle,
    locate,
    stage_fs_type,
)
from .iolimits import IoLimiter
from .limits import VolumeLimit, max_volumes
from .steps import HostSteps

log = logging.getLogger(__name__)

PublishedCheck = Callable[[str], Awaitable[bool]]
"""Whether a volume is published (ControllerPublishVolume) to this node: ``await check(volume_id)``."""


class NodeApp:
    def __init__(
        self,
        cfg: Config,
        volumes: Repository[NodeVolumeState, NodeVolumeEvent],
        projection: NodeProjection,
        host: HostStorage,
        *,
        is_published: PublishedCheck | None = None,
        io: IoLimiter | None = None,
    ) -> None:
        """``is_published`` None: stage without asking the attacher (a node without a controller in front).
        ``io`` None: no I/O limits on this node (csi/iolimits.py)."""
        self._io = io
        self._cfg = cfg
        self._node = cfg.node_id
        self._volumes = volumes
        self._read = projection
        self._host = host
        self._steps = HostSteps(host)
        self._is_published = is_published
        self._locks = volumes.locks
        self._own_dirs = [str(d) for d in (cfg.pool_dir, cfg.shared_pool_dir) if d is not None]
        self._pools = [(cfg.pool_name, cfg.pool_dir)]
        self.limit = VolumeLimit(max_volumes(cfg.max_volumes_per_node, self._own_dirs), self._own_dirs)
        if cfg.shared_pool_dir is not None:
            self._pools.append((SHARED_POOL, cfg.shared_pool_dir))

    # -- commands -----------------------------------------------------------

    async def stage(self, cmd: StageVolume) -> Done:
        staging = self._checked("staging_target_path", cmd.staging_path, must_exist=False)
        check_capability(cmd.capability)
        block = cmd.capability.access_type == "block"
        fs_type = stage_fs_type(cmd)
        self._valid_id(cmd.volume_id)
        cmd = cmd.model_copy(update={"staging_path": staging})
        async with self._locks.hold(cmd.volume_id):
            state = await self._load_settled(cmd.volume_id)
            if state is not None and state.stage_phase == "staging":
                await self._limit(await self._finish_stage(state))
                return Done()
            # Only a volume staged anew is looked up in the pools; a staged one keeps its image.
            image = self._resolve_image(cmd.volume_id) if state is None or state.stage_phase == "none" else self._image_of(state)
            intent = decide_stage(state, cmd, fs_type, str(image))
            if intent is None:
                assert state is not None
                if await self._steps.stage_intact(state, image):
                    await self._limit(state)  # A retried stage also brings the limits up to date.
                    return Done()
                if not image.exists():
                    raise NotFound(f"volume {state.volume_id} has no image at {image}")
                # The host lost what the log says was done (a reboot, a manual umount): redo it.
                intent = VolumeStaging(
                    volume_id=state.volume_id, staging_path=state.staging_path, fs_type=state.fs_type,
                    mount_flags=state.mount_flags, image=str(image), access_type=state.access_type,
                )
            else:
                await self._require_published(cmd.volume_id)
                if not block:
                    self._steps.refuse_foreign_mount("staging_target_path", Path(staging), image)
            # A volume new to this node needs a loop device: RESOURCE_EXHAUSTED at max_volumes_per_node (limits.py).
            async with self.limit.admit(image):
                state = await self._append(state, intent)
                state = await self._finish_stage(state)
            await self._limit(state)
            return Done()

    async def limits(self, cmd: GetNodeLimits) -> NodeLimits:
        """NodeGetInfo's max_volumes_per_node, as this node decided it at start (limits.py)."""
        return NodeLimits(max_volumes=self.limit.limit)

    async def unstage(self, cmd: UnstageVolume) -> Done:
        staging = check_path("staging_target_path", cmd.staging_path)
        if not is_volume_id(cmd.volume_id):
            return Done()  # Not an id of ours: nothing of it can be staged here.
        async with self._locks.hold(cmd.volume_id):
            state = await self._load_settled(cmd.volume_id)
            if state is not None and state.stage_phase == "staging":
                # Finish the pending stage (or let it roll back), then undo it.
                try:
                    state = await self._finish_stage(state)
                except VolplaneError:
                    state = await self._load(cmd.volume_id)
            intent = decide_unstage(state, staging)
            if intent is not None:
                state = await self._append(state, intent)
            if state is not None and state.stage_phase == "unstaging":
                await self._finish_unstage(state)
            return Done()

    async def publish(self, cmd: PublishVolume) -> Done:
        staging = check_path("staging_target_path", cmd.staging_path)
        target = self._checked("target_path", cmd.target_path, must_exist=False)
        check_capability(cmd.capability)
        self._valid_id(cmd.volume_id)
        cmd = cmd.model_copy(update={"staging_path": staging, "target_path": target})
        async with self._locks.hold(cmd.volume_id):
            state = await self._load_settled(cmd.volume_id)
            pending = state.publication(target) if state else None
            if state is not None and pending is not None and pending.phase == "publishing":
                await self._finish_publish(state, target)
                return Done()
            intent = decide_publish(state, cmd, target_exists=os.path.lexists(target))
            if intent is None:
                assert state is not None and pending is not None
                if await self._steps.publish_intact(state, pending, self._image_of(state)):
                    return Done()
                # The bind is gone although the log says published: bind again.
                intent = VolumePublishing(
                    volume_id=state.volume_id, target_path=target, readonly=pending.readonly, mount_flags=cmd.capability.mount_flags, keep_target=pending.keep_target
                )
            else:
                assert state is not None
                self._steps.check_new_target(state, Path(target))
            state = await self._append(state, intent)
            await self._finish_publish(state, target)
            return Done()

    async def unpublish(self, cmd: UnpublishVolume) -> Done:
        target = check_path("target_path", cmd.target_path)
        if not is_volume_id(cmd.volume_id):
            return Done()
        async with self._locks.hold(cmd.volume_id):
            state = await self._load_settled(cmd.volume_id)
            intent = decide_unpublish(state, target)
            if intent is not None:
                state = await self._append(state, intent)
            if state is not None and state.publication(target) is not None:
                await self._finish_unpublish(state, target)
            return Done()

    async def expand(self, cmd: NodeExpand) -> NodeExpanded:
        """Grow the loop device and filesystem to the image's size (ControllerExpandVolume grew the image)."""
        if not cmd.volume_path:
            raise InvalidArgument("volume_path: required")
        self._valid_id(cmd.volume_id)
        async with self._locks.hold(cmd.volume_id):
            state = await self._load_settled(cmd.volume_id)
            locate(state, cmd.volume_id, cmd.volume_path, cmd.staging_path)
            assert state is not None
            image = self._image_of(state)
            try:
                image_bytes = image.stat().st_size
            except FileNotFoundError as exc:
                raise NotFound(f"volume {state.volume_id} has no image at {image}") from exc
            grows_online = state.access_type == "block" or self._host.grows_online(state.fs_type)
            intent = decide_expand(state, image_bytes, cmd.required_bytes, cmd.limit_bytes, grows_online)
            if intent is not None:
                state = await self._append(state, intent)
                state = await self._finish_expand(state)
            return NodeExpanded(capacity_bytes=state.capacity_bytes)

    async def volume_stats(self, cmd: GetVolumeStats) -> VolumeStats:
        """Usage of the volume where it is staged or published; abnormal (never an error) when the host lost it."""
        if not cmd.volume_path:
            raise InvalidArgument("volume_path: required")
        self._valid_id(cmd.volume_id)
        # No lock: this only reads, and a CO polls it while other operations on the volume run.
        state = await self._load(cmd.volume_id)
        path = locate(state, cmd.volume_id, cmd.volume_path, cmd.staging_path)
        assert state is not None
        try:
            return await self._steps.stats(state, path, self._image_of(state))
        except (StorageError, OSError) as exc:
            block = state.access_type == "block"
            return VolumeStats(block=block, total_bytes=0, used_bytes=0, available_bytes=0, abnormal=True, condition=f"cannot read usage: {exc}")

    async def recover(self) -> int:
        """Finish every intent a crash left without its result; returns how many volumes."""
        finishers = {
            "staging": self._recover_staging,
            "unstaging": self._finish_unstage,
            "staged": self._finish_pending,
            "none": self._finish_pending,
        }
        return await self._volumes.recover(await self._read.in_flight(), finishers, phase=lambda s: s.stage_phase)

    async def _recover_staging(self, state: NodeVolumeState) -> NodeVolumeState:
        return await self._finish_pending(await self._finish_stage(state))

    async def _finish_pending(self, state: NodeVolumeState) -> NodeVolumeState:
        """Finish the expansion and the publications a crash left pending."""
        if state.expanding:
            state = await self._finish_expand(state)
        for pub in state.publications:
            if pub.phase == "publishing":
                state = await self._finish_publish(state, pub.target_path)
            elif pub.phase == "unpublishing":
                state = await self._finish_unpublish(state, pub.target_path)
        return state

    # -- act, then record the result ------------------------------------------

    async def _finish_stage(self, state: NodeVolumeState) -> NodeVolumeState:
        image = self._image_of(state)
        try:
            device, formatted, capacity = await self._steps.stage(state, image)
        except Exception as exc:  # Any failure of a host step is recorded and undone.
            await self._steps.undo_stage(state, image)
            await self._append(state, VolumeStageFailed(volume_id=state.volume_id, reason=_reason(exc)))
            if isinstance(exc, VolplaneError):
                raise
            raise Internal(f"staging volume {state.volume_id} failed: {_reason(exc)}") from exc
        return await self._append(state, VolumeStaged(volume_id=state.volume_id, device=device, formatted=formatted, capacity_bytes=capacity))

    async def _limit(self, state: NodeVolumeState) -> NodeVolumeState:
        """The volume's current I/O limits on the device it is staged on now."""
        return state if self._io is None else await self._io.ensure(state)

    async def _finish_unstage(self, state: NodeVolumeState) -> None:
        if self._io is not None:
            self._io.clear(state)
        try:
            await self._steps.undo_stage(state, self._image_of(state))
        except (StorageError, OSError) as exc:
            raise Internal(f"unstaging volume {state.volume_id} failed: {exc}") from exc
        await self._append(state, VolumeUnstaged(volume_id=state.volume_id))

    async def _finish_publish(self, state: NodeVolumeState, target: str) -> NodeVolumeState:
        pub = state.publication(target)
        assert pub is not None
        image = self._image_of(state)
        try:
            await self._steps.publish(state, pub, image)
        except Exception as exc:  # Any failure of a host step is recorded and undone.
            await self._steps.unpublish(state, Path(target), image)
            await self._append(state, VolumePublishFailed(volume_id=state.volume_id, target_path=target, reason=_reason(exc)))
            if isinstance(exc, VolplaneError):
                raise
            raise Internal(f"publishing volume {state.volume_id} at {target} failed: {exc}") from exc
        return await self._append(state, VolumePublished(volume_id=state.volume_id, target_path=target))

    async def _finish_unpublish(self, state: NodeVolumeState, target: str) -> NodeVolumeState:
        try:
            await self._steps.unpublish(state, Path(target), self._image_of(state))
        except (StorageError, OSError) as exc:
            raise Internal(f"unpublishing volume {state.volume_id} from {target} failed: {exc}") from exc
        return await self._append(state, VolumeUnpublished(volume_id=state.volume_id, target_path=target))

    async def _finish_expand(self, state: NodeVolumeState) -> NodeVolumeState:
        try:
            size = await self._steps.expand(state, self._image_of(state))
        except Exception as exc:  # Any failure of a host step is recorded and undone.
            await self._append(state, VolumeExpandOnNodeFailed(volume_id=state.volume_id, reason=_reason(exc)))
            if isinstance(exc, VolplaneError):
                raise
            raise Internal(f"expanding volume {state.volume_id} failed: {_reason(exc)}") from exc
        return await self._append(state, VolumeExpandedOnNode(volume_id=state.volume_id, capacity_bytes=size))

    # -- plumbing -----------------------------------------------------------

    async def _require_published(self, volume_id: str) -> None:
        if self._is_published is not None and not await self._is_published(volume_id):
            raise FailedPrecondition(f"volume {volume_id} is not published to node {self._node}; call ControllerPublishVolume first")

    async def _append(self, state: NodeVolumeState | None, event: NodeVolumeEvent) -> NodeVolumeState:
        vid = event.volume_id
        try:
            return await self._volumes.append(vid, state, event)
        except ConcurrencyConflict:
            if state is not None:
                raise
        # No state in Redis, but the aggregate has history (it went idle): append after it.
        # Only its newest event is read (not its whole history, one request per event ever
        # recorded); once the runner has applied it, the volume must still be idle.
        latest = await self._volumes.reload(vid)
        if latest is not None and not is_idle(latest):
            raise ConcurrencyConflict(f"volume {vid} on node {self._node} changed under us")
        return await self._volumes.append(vid, latest, event)

    async def _load(self, volume_id: str) -> NodeVolumeState | None:
        return await self._volumes.load(volume_id)

    async def _load_settled(self, volume_id: str) -> NodeVolumeState | None:
        """The state, after finishing an expansion a crash left pending (it would race the next step)."""
        state = await self._load(volume_id)
        if state is not None and state.expanding:
            try:
                state = await self._finish_expand(state)
            except VolplaneError:
                state = await self._load(volume_id)
        return state

    @staticmethod
    def _valid_id(volume_id: str) -> None:
        if not is_volume_id(volume_id):
            raise NotFound(f"volume {volume_id[:128]!r} does not exist")

    def _resolve_image(self, volume_id: str) -> Path:
        """The image in this node's pool, else in the shared pool; NotFound when in neither."""
        for _, directory in self._pools:
            path = image_path(directory, volume_id)
            if path is not None and path.exists():
                return path
        pools = " or ".join(name for name, _ in self._pools)
        raise NotFound(f"volume {volume_id[:128]} does not exist (no image in pool {pools})")

    def _image_of(self, state: NodeVolumeState) -> Path:
        if state.image:
            return Path(state.image)
        # Staged before images were recorded, when a node had a single pool: look for it again.
        try:
            return self._resolve_image(state.volume_id)
        except NotFound:
            path = image_path(self._cfg.pool_dir, state.volume_id)
            assert path is not None
            return path

    def _checked(self, field: str, text: str, *, must_exist: bool) -> str:
        """A path the CO gave us, refused if it escapes the roots or runs through a symlink."""
        path = check_path(field, text)
        if not any(path == str(r) or path.startswith(str(r).rstrip("/") + "/") for r in self._cfg.path_roots):
            raise InvalidArgument(f"{field}: {path[:256]} is outside the allowed roots")
        parent = os.path.dirname(path)
        if os.path.realpath(parent) != parent:
            raise InvalidArgument(f"{field}: the parent of {path[:256]} is, or runs through, a symlink")
        if not os.path.isdir(parent):
            raise NotFound(f"{field}: parent directory {parent[:256]} does not exist")
        if os.path.islink(path):
            raise InvalidArgument(f"{field}: {path[:256]} is a symlink")
        if must_exist and not os.path.isdir(path):
            raise NotFound(f"{field}: {path[:256]} does not exist")
        for own in self._own_dirs:
            # Mounting on, over or under a pool directory would hide or expose
            # every volume's image.
            if path == own or path.startswith(own + "/") or own.startswith(path + "/"):
                raise InvalidArgument(f"{field}: {path[:256]} overlaps volplane's own directory {own}")
        return path


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, VolplaneError) else str(exc)
