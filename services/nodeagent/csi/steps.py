"""What each node step does to this host, for filesystem and raw block volumes.

The application layer (``app.py``) brackets every step with an intent and a result event;
everything here is idempotent when redone (attach reuses the loop device, a mounted path is
not mounted again, a filesystem as large as its device does not grow, a missing file is no
error), so a step a crash interrupted is simply run again.

    steps = HostSteps(HostStorage())
    device, formatted = await steps.stage(state, image)
    await steps.publish(state, state.publication(target), image)

A filesystem volume is a loop device, formatted and mounted at the staging path, and
bind-mounted (a directory) at each target. A block volume is the loop device alone: nothing
at the staging path, the device node bound onto a file at each target; a read-only target
gets a read-only loop device of the same image, because a read-only bind of a device node
does not stop writes through it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from volplane.commands import VolumeStats
from volplane.errors import FailedPrecondition, NotFound

from ..adapters.storage import MAX_UNMOUNT_ATTEMPTS, HostStorage
from ..domain.volume import NodeVolumeState, Publication

log = logging.getLogger(__name__)


class HostSteps:
    def __init__(self, storage: HostStorage) -> None:
        self.storage = storage

    # -- stage ------------------------------------------------------------------

    async def stage(self, state: NodeVolumeState, image: Path) -> tuple[str, bool, int]:
        """Attach (and for a filesystem volume format if blank, then mount); returns
        (device, formatted, bytes the volume now offers).

        A filesystem smaller than its device (the image grew while the volume was not
        staged) is grown on the way, while it is still unmounted — which needs no
        privilege that online growth might lack — so the volume always offers its size.
        """
        if not image.exists():
            raise NotFound(f"volume {state.volume_id} has no image at {image}")
        device = await self.storage.attach(image)
        size = self.storage.device_size(device)
        if size < image.stat().st_size:  # A device kept from before the image grew.
            await self.storage.refresh(device)
            size = self.storage.device_size(device)
        if state.access_type == "block":
            return device, False, size
        formatted = False
        current = await self.storage.filesystem_of(device)
        if current is None:
            await self.storage.format(device, state.fs_type)
            formatted = True
        elif current != state.fs_type:
            raise FailedPrecondition(f"volume {state.volume_id} holds {current}, not {state.fs_type}")
        behind = not formatted and self.storage.filesystem_bytes(device, state.fs_type) < size
        if behind and state.fs_type == "ext4" and self.storage.mount_point(Path(state.staging_path)) is None:
            await self.storage.grow_unmounted(device, "ext4")
        Path(state.staging_path).mkdir(exist_ok=True)
        await self._mount_staging(state, device)
        if behind and state.fs_type == "xfs":
            await self.storage.grow_filesystem(device, Path(state.staging_path), "xfs")
        return device, formatted, size

    async def undo_stage(self, state: NodeVolumeState, image: Path) -> None:
        # Only mounts of the image's own devices are taken off the staging path (whatever else
        # is mounted there, over or under ours, stays); then every device of the image is
        # detached (a loop device still mounted would only detach at its last unmount).
        if state.access_type == "mount":
            staging = Path(state.staging_path)
            for _ in range(MAX_UNMOUNT_ATTEMPTS):
                top = self.storage.mount_point(staging)
                if top is None or not self.storage.backs(top.source, image, deleted_too=True):
                    break
                await self.storage.unmount(staging, source=top.source)
        await self.storage.detach(image)

    async def stage_intact(self, state: NodeVolumeState, image: Path) -> bool:
        if not self.storage.backs(state.device, image) or self.storage.is_readonly(state.device):
            return False
        if state.access_type == "block":
            return True
        top = self.storage.mount_point(Path(state.staging_path))
        return top is not None and top.source == state.device

    def refuse_foreign_mount(self, field: str, path: Path, image: Path | None = None) -> None:
        """FailedPrecondition if something is mounted at ``path``, unless a device of ``image`` is."""
        top = self.storage.mount_point(path)
        if top is not None and (image is None or not self.storage.backs(top.source, image)):
            raise FailedPrecondition(f"{field}: {str(path)[:256]} is already a mount point (of {top.source[:128]})")

    async def _mount_staging(self, state: NodeVolumeState, device: str) -> None:
        staging = Path(state.staging_path)
        mounted = self.storage.mount_point(staging)
        if mounted is None or mounted.source != device:
            await self.storage.mount(device, staging, state.fs_type, list(state.mount_flags))

    # -- publish ----------------------------------------------------------------

    def check_new_target(self, state: NodeVolumeState, target: Path) -> None:
        """Refuse a target that holds something of someone else, before any intent is recorded."""
        if state.access_type == "block":
            self.refuse_foreign_mount("target_path", target)
            if target.exists() and not target.is_file():
                raise FailedPrecondition(f"target_path: {str(target)[:256]} exists and is not a regular file")
            return
        if target.exists() and not target.is_dir():
            raise FailedPrecondition(f"target_path: {str(target)[:256]} exists and is not a directory")
        self.refuse_foreign_mount("target_path", target)

    async def publish(self, state: NodeVolumeState, pub: Publication, image: Path) -> None:
        target = Path(pub.target_path)
        if await self.publish_intact(state, pub, image):
            return
        if self.storage.mount_point(target) is not None:
            raise FailedPrecondition(f"target_path: {str(target)[:256]} is already a mount point")
        if state.access_type == "block":
            device = await self.storage.attach(image, readonly=True) if pub.readonly else state.device
            _create_file(target)
            await self.storage.bind(Path(device), target, pub.readonly)
        else:
            target.mkdir(exist_ok=True)
            await self.storage.bind(Path(state.staging_path), target, pub.readonly)

    async def publish_intact(self, state: NodeVolumeState, pub: Publication, image: Path) -> bool:
        target = Path(pub.target_path)
        bind = self.storage.mount_point(target)
        if bind is None:
            return False
        if state.access_type == "block":
            wanted = await self._readonly_device(image) if pub.readonly else state.device
            return wanted is not None and self.storage.device_number(target) == self.storage.device_number(wanted)
        staged = self.storage.mount_point(Path(state.staging_path))
        return staged is not None and bind.major_minor == staged.major_minor

    async def unpublish(self, state: NodeVolumeState, target: Path, image: Path) -> None:
        """Take our bind off ``target`` and remove what we created there; leave anything else alone."""
        pub = state.publication(str(target))
        keep = pub is not None and pub.keep_target
        if state.access_type == "block":
            ours = [state.device, *await self.storage.loop_devices_for(image, deleted_too=True)]
            await self.storage.unmount_device(target, ours)
            if not keep:
                _remove_file(target)
            # The read-only device serves every read-only target; it goes with the last of them.
            if not any(p.readonly for p in state.publications if p.target_path != str(target)):
                await self.storage.detach(image, readonly_only=True)
        else:
            await self.storage.unmount(target, source=state.device)
            if not keep:
                _remove_dir(target)

    async def _readonly_device(self, image: Path) -> str | None:
        return next((d for d in await self.storage.loop_devices_for(image) if self.storage.is_readonly(d)), None)

    # -- expand -----------------------------------------------------------------

    async def expand(self, state: NodeVolumeState, image: Path) -> int:
        """Refresh the image's loop devices and grow the filesystem to fill them; returns the device's size."""
        devices = await self.storage.loop_devices_for(image)
        if state.device not in devices:
            raise FailedPrecondition(f"volume {state.volume_id}: {state.device} no longer backs {image}; stage it again")
        for device in devices:
            await self.storage.refresh(device)
        size = self.storage.device_size(state.device)
        if state.access_type == "block":
            return size
        if self.storage.grows_online(state.fs_type):
            await self._mount_staging(state, state.device)
            await self.storage.grow_filesystem(state.device, Path(state.staging_path), state.fs_type)
            return size
        # Grown unmounted: decide_expand allows this only while the volume is published nowhere,
        # so the staging mount is the only one; it is mounted again whatever happens.
        await self.storage.unmount(Path(state.staging_path), source=state.device)
        try:
            await self.storage.grow_unmounted(state.device, state.fs_type)
        finally:
            await self._mount_staging(state, state.device)
        return size

    # -- stats ------------------------------------------------------------------

    async def stats(self, state: NodeVolumeState, path: str, image: Path) -> VolumeStats:
        """Usage of the volume at ``path``; abnormal, with the reason, instead of raising."""
        problems: list[str] = []
        if not image.exists():
            problems.append(f"image {image} is gone")
        elif not self.storage.backs(state.device, image):
            problems.append(f"{state.device} no longer backs image {image}")
        if state.access_type == "block":
            if path != state.staging_path and not await self._bound_here(state, Path(path), image):
                problems.append(f"the volume is not bound at {path}")
            try:
                size = self.storage.device_size(state.device)
            except OSError:
                size = 0
            return VolumeStats(block=True, total_bytes=size, used_bytes=0, available_bytes=0, abnormal=bool(problems), condition="; ".join(problems))
        top = self.storage.mount_point(Path(path))
        if top is None or top.source != state.device:
            problems.append(f"the volume is not mounted at {path}")
            return VolumeStats(block=False, total_bytes=0, used_bytes=0, available_bytes=0, abnormal=True, condition="; ".join(problems))
        fs = os.statvfs(path)
        return VolumeStats(
            block=False,
            total_bytes=fs.f_blocks * fs.f_frsize,
            used_bytes=(fs.f_blocks - fs.f_bfree) * fs.f_frsize,
            available_bytes=fs.f_bavail * fs.f_frsize,
            total_inodes=fs.f_files,
            used_inodes=fs.f_files - fs.f_ffree,
            available_inodes=fs.f_favail,
            abnormal=bool(problems),
            condition="; ".join(problems),
        )

    async def _bound_here(self, state: NodeVolumeState, target: Path, image: Path) -> bool:
        if self.storage.mount_point(target) is None:
            return False
        ours = {self.storage.device_number(d) for d in (state.device, *await self.storage.loop_devices_for(image, deleted_too=True))}
        return self.storage.device_number(target) in ours - {None}


def _create_file(path: Path) -> None:
    """The file a block device is bound onto; an existing regular file is used as it is."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))


def _remove_file(path: Path) -> None:
    """Remove the target file of a block volume if it is an empty regular file; else leave it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_size:
        log.warning("left %s in place: not an empty regular file", path)
        return
    path.unlink(missing_ok=True)


def _remove_dir(path: Path) -> None:
    """Remove the target directory we created, if it is an empty directory; else leave it."""
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("left %s in place: %s", path, exc.strerror)
