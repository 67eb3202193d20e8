"""The nodeagent's application layer: NodeStage/Unstage/Publish/Unpublish on this host.

Every step is load → decide → append intent → act on the host → append result, under a
per-volume lock. The host actions are idempotent when redone, which is how ``recover``
finishes an intent a crash left behind.

    app = NodeApp(cfg, store, runner, HostStorage())
    await app.stage(StageVolume(volume_id=vid, staging_path="/var/lib/…/globalmount", capability=Capability()))
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from volplane import codec, subjects
from volplane.commands import Done, PublishVolume, StageVolume, UnpublishVolume, UnstageVolume
from volplane.config import Config
from volplane.errors import ConcurrencyConflict, FailedPrecondition, Internal, InvalidArgument, NotFound, VolplaneError
from volplane.events import Event
from volplane.eventstore import EventStore
from volplane.ids import image_path
from volplane.locks import KeyedLocks
from volplane.projection import ProjectionRunner

from .adapters.projection import NodeProjection
from .adapters.storage import HostStorage, StorageError
from .domain.events import (
    NODE_VOLUME_EVENTS,
    VolumePublished,
    VolumePublishFailed,
    VolumePublishing,
    VolumeStaged,
    VolumeStageFailed,
    VolumeStaging,
    VolumeUnpublished,
    VolumeUnstaged,
)
from .domain.volume import (
    NodeVolumeState,
    check_capability,
    check_path,
    decide_publish,
    decide_stage,
    decide_unpublish,
    decide_unstage,
    evolve,
    is_idle,
)

log = logging.getLogger(__name__)


class NodeApp:
    def __init__(self, cfg: Config, store: EventStore, runner: ProjectionRunner[NodeVolumeState], host: HostStorage) -> None:
        self._cfg = cfg
        self._node = cfg.node_id
        self._store = store
        self._runner = runner
        self._projection: NodeProjection = runner.projection  # type: ignore[assignment]
        self._host = host
        self._locks = KeyedLocks("volume")

    # -- commands -----------------------------------------------------------

    async def stage(self, cmd: StageVolume) -> Done:
        staging = self._checked("staging_target_path", cmd.staging_path, must_exist=False)
        check_capability(cmd.capability)
        fs_type = cmd.capability.fs_type or cmd.volume_context.get("fsType") or "ext4"
        image = self._existing_image(cmd.volume_id)
        cmd = cmd.model_copy(update={"staging_path": staging})
        async with self._locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
            if state is not None and state.stage_phase == "staging":
                await self._finish_stage(state)
                return Done()
            intent = decide_stage(state, cmd, fs_type)
            if intent is None:
                assert state is not None
                if await self._stage_intact(state, image):
                    return Done()
                # The host lost what the log says was done (a reboot, a manual umount): redo it.
                intent = VolumeStaging(volume_id=state.volume_id, staging_path=state.staging_path, fs_type=state.fs_type, mount_flags=state.mount_flags)
            else:
                self._refuse_foreign_mount("staging_target_path", Path(staging), await self._host.loop_devices_for(image))
            state = await self._append(state, intent)
            await self._finish_stage(state, image)
            return Done()

    async def unstage(self, cmd: UnstageVolume) -> Done:
        staging = check_path("staging_target_path", cmd.staging_path)
        if image_path(self._cfg.pool_dir, cmd.volume_id) is None:
            return Done()  # Not an id of ours: nothing of it can be staged here.
        async with self._locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
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
        self._image(cmd.volume_id)
        cmd = cmd.model_copy(update={"staging_path": staging, "target_path": target})
        async with self._locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
            pending = state.publication(target) if state else None
            if state is not None and pending is not None and pending.phase == "publishing":
                await self._finish_publish(state, target)
                return Done()
            intent = decide_publish(state, cmd)
            if intent is None:
                assert state is not None and pending is not None
                if self._publish_intact(state, target):
                    return Done()
                # The bind is gone although the log says published: bind again.
                intent = VolumePublishing(volume_id=state.volume_id, target_path=target, readonly=pending.readonly, mount_flags=cmd.capability.mount_flags)
            else:
                path = Path(target)
                if path.exists() and not path.is_dir():
                    raise FailedPrecondition(f"target_path: {target[:256]} exists and is not a directory")
                self._refuse_foreign_mount("target_path", path, [])
            state = await self._append(state, intent)
            await self._finish_publish(state, target)
            return Done()

    async def unpublish(self, cmd: UnpublishVolume) -> Done:
        target = check_path("target_path", cmd.target_path)
        if image_path(self._cfg.pool_dir, cmd.volume_id) is None:
            return Done()
        async with self._locks.hold(cmd.volume_id):
            state = await self._load(cmd.volume_id)
            intent = decide_unpublish(state, target)
            if intent is not None:
                state = await self._append(state, intent)
            if state is not None and state.publication(target) is not None:
                await self._finish_unpublish(state, target)
            return Done()

    async def recover(self) -> int:
        """Finish every intent a crash left without its result; returns how many volumes."""
        ids = sorted(i.decode() for i in await self._runner._redis.smembers(self._projection.inflight))
        for vid in ids:
            async with self._locks.hold(vid):
                state = await self._load(vid)
                if state is None:
                    continue
                log.info("recovering volume %s on node %s", vid, self._node)
                try:
                    if state.stage_phase == "staging":
                        state = await self._finish_stage(state)
                    elif state.stage_phase == "unstaging":
                        await self._finish_unstage(state)
                        continue
                    for pub in state.publications:
                        if pub.phase == "publishing":
                            state = await self._finish_publish(state, pub.target_path)
                        elif pub.phase == "unpublishing":
                            state = await self._finish_unpublish(state, pub.target_path)
                except VolplaneError as exc:
                    log.error("could not recover volume %s: %s", vid, exc.message)
        return len(ids)

    # -- host steps ---------------------------------------------------------

    async def _finish_stage(self, state: NodeVolumeState, image: Path | None = None) -> NodeVolumeState:
        image = image or self._image(state.volume_id)
        staging = Path(state.staging_path)
        try:
            if not image.exists():
                raise NotFound(f"volume {state.volume_id} has no image in pool {self._cfg.pool_name}")
            device = await self._host.attach(image)
            formatted = False
            current = await self._host.filesystem_of(device)
            if current is None:
                await self._host.format(device, state.fs_type)
                formatted = True
            elif current != state.fs_type:
                raise FailedPrecondition(f"volume {state.volume_id} holds {current}, not {state.fs_type}")
            staging.mkdir(exist_ok=True)
            mounted = self._host.mount_point(staging)
            if mounted is None or mounted.source != device:
                await self._host.mount(device, staging, state.fs_type, list(state.mount_flags))
        except (VolplaneError, StorageError, OSError) as exc:
            await self._undo_stage(image, staging)
            reason = exc.message if isinstance(exc, VolplaneError) else str(exc)
            await self._append(state, VolumeStageFailed(volume_id=state.volume_id, reason=reason))
            if isinstance(exc, VolplaneError):
                raise
            raise Internal(f"staging volume {state.volume_id} failed: {reason}") from exc
        return await self._append(state, VolumeStaged(volume_id=state.volume_id, device=device, formatted=formatted))

    async def _finish_unstage(self, state: NodeVolumeState) -> None:
        try:
            await self._undo_stage(self._image(state.volume_id), Path(state.staging_path))
        except (StorageError, OSError) as exc:
            raise Internal(f"unstaging volume {state.volume_id} failed: {exc}") from exc
        await self._append(state, VolumeUnstaged(volume_id=state.volume_id))

    async def _undo_stage(self, image: Path, staging: Path) -> None:
        # Only our own device's mounts are taken off the staging path; then the device is
        # detached (a loop device still mounted would only detach at its last unmount).
        for device in await self._host.loop_devices_for(image, deleted_too=True):
            await self._host.unmount(staging, source=device)
        await self._host.detach(image)

    async def _stage_intact(self, state: NodeVolumeState, image: Path) -> bool:
        top = self._host.mount_point(Path(state.staging_path))
        return top is not None and top.source == state.device and state.device in await self._host.loop_devices_for(image)

    def _publish_intact(self, state: NodeVolumeState, target: str) -> bool:
        bind = self._host.mount_point(Path(target))
        staged = self._host.mount_point(Path(state.staging_path))
        return bind is not None and staged is not None and bind.major_minor == staged.major_minor

    def _refuse_foreign_mount(self, field: str, path: Path, ours: list[str]) -> None:
        top = self._host.mount_point(path)
        if top is not None and top.source not in ours:
            raise FailedPrecondition(f"{field}: {str(path)[:256]} is already a mount point (of {top.source[:128]})")

    async def _finish_publish(self, state: NodeVolumeState, target: str) -> NodeVolumeState:
        pub = state.publication(target)
        assert pub is not None
        path = Path(target)
        try:
            if not self._publish_intact(state, target):
                if self._host.mount_point(path) is not None:
                    raise FailedPrecondition(f"target_path: {target[:256]} is already a mount point")
                path.mkdir(exist_ok=True)
                await self._host.bind(Path(state.staging_path), path, pub.readonly)
        except (VolplaneError, StorageError, OSError) as exc:
            await self._host.unmount(path, source=state.device)
            _remove_dir(path)
            reason = exc.message if isinstance(exc, VolplaneError) else str(exc)
            await self._append(state, VolumePublishFailed(volume_id=state.volume_id, target_path=target, reason=reason))
            if isinstance(exc, VolplaneError):
                raise
            raise Internal(f"publishing volume {state.volume_id} at {target} failed: {exc}") from exc
        return await self._append(state, VolumePublished(volume_id=state.volume_id, target_path=target))

    async def _finish_unpublish(self, state: NodeVolumeState, target: str) -> NodeVolumeState:
        path = Path(target)
        try:
            await self._host.unmount(path, source=state.device)
        except StorageError as exc:
            raise Internal(f"unpublishing volume {state.volume_id} from {target} failed: {exc}") from exc
        _remove_dir(path)
        return await self._append(state, VolumeUnpublished(volume_id=state.volume_id, target_path=target))

    # -- plumbing -----------------------------------------------------------

    async def _append(self, state: NodeVolumeState | None, event: Event) -> NodeVolumeState:
        subject = subjects.node_volume(self._node, event.volume_id)  # type: ignore[attr-defined]
        expected = state.version if state else 0
        try:
            seq = await self._store.append(subject, event, expected=expected)
        except ConcurrencyConflict:
            if state is not None:
                raise
            # No state in Redis, but the aggregate has history (it was idle): append after it.
            expected = await self._last_version(subject)
            seq = await self._store.append(subject, event, expected=expected)
        new = evolve(state, event, seq)  # type: ignore[arg-type]
        assert new is not None
        self._runner.note(self._projection.key(new.volume_id), new, seq)
        return new

    async def _last_version(self, subject: str) -> int:
        state: NodeVolumeState | None = None
        for record in await self._store.read(subject):
            state = evolve(state, codec.decode(NODE_VOLUME_EVENTS, record.data), record.seq)
        if state is None:
            return 0
        if not is_idle(state):
            raise ConcurrencyConflict(f"{subject} changed under us")
        return state.version

    async def _load(self, volume_id: str) -> NodeVolumeState | None:
        return await self._runner.get(self._projection.key(volume_id))

    def _image(self, volume_id: str) -> Path:
        path = image_path(self._cfg.pool_dir, volume_id)
        if path is None:
            raise NotFound(f"volume {volume_id[:128]!r} does not exist")
        return path

    def _existing_image(self, volume_id: str) -> Path:
        image = self._image(volume_id)
        if not image.exists():
            raise NotFound(f"volume {volume_id} does not exist (no image in pool {self._cfg.pool_name})")
        return image

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
        return path


def _remove_dir(path: Path) -> None:
    """Remove the target directory we created, if it is an empty directory; else leave it."""
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("left %s in place: %s", path, exc.strerror)
