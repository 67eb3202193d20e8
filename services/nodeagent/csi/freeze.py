"""A group snapshot's cut on this node: freeze the staged filesystems of some volumes, thaw them.

    freezer = Freezer(volumes, HostStorage(), own_dirs=["/var/lib/volplane/pools/node-1"])
    await freezer.freeze(FreezeVolumes(volume_ids=(a, b), lease_s=120))   # fsfreeze -f each staging mount
    await freezer.thaw(ThawVolumes(volume_ids=(a, b)))                    # fsfreeze -u

Why ``fsfreeze`` (docs/decisions.md, "Volume group snapshots"): it flushes the filesystem
to its loop device and holds every writer in the kernel — writers wait, they do not fail —
so the images the provisioner then copies are one point in time for the whole group, at
the cost of a pause as long as the sparse copies. A volume staged as a raw block device has
no filesystem to freeze and its writers cannot be held, so it is refused (FAILED_PRECONDITION).

Nothing may stay frozen: each freeze carries a lease after which this node thaws by itself
(the provisioner died mid-cut), and on start every mount of this node's images is thawed
(this process died mid-cut; the kernel keeps a freeze across its holder's death).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from volplane.aggregate import Repository
from volplane.commands import Done, FreezeVolumes, FrozenVolumes, ThawVolumes
from volplane.errors import FailedPrecondition, Internal, OperationPending
from volplane.ids import is_volume_id

from ..adapters.storage import HostStorage, StorageError
from ..domain.events import NodeVolumeEvent
from ..domain.volume import NodeVolumeState

log = logging.getLogger(__name__)

MAX_LEASE_S = 600.0


class Freezer:
    def __init__(self, volumes: Repository[NodeVolumeState, NodeVolumeEvent], host: HostStorage, own_dirs: Sequence[str]) -> None:
        self._volumes = volumes
        self._host = host
        self._own_dirs = list(own_dirs)
        # Staging path → the timer that thaws it when its lease runs out.
        self._leases: dict[str, asyncio.TimerHandle] = {}
        self._expiring: set[asyncio.Task[None]] = set()  # held so a running thaw is not collected

    async def freeze(self, cmd: FreezeVolumes) -> FrozenVolumes:
        targets: list[tuple[str, Path]] = []
        # Every volume is checked before any is frozen: a refusal leaves nothing to undo.
        for vid in cmd.volume_ids:
            state = await self._volumes.load(vid) if is_volume_id(vid) else None
            if state is None or state.stage_phase == "none":
                continue  # Not staged here: nothing on this node writes to it.
            if state.stage_phase != "staged":
                raise OperationPending(f"volume {vid} is {state.stage_phase} on this node; try the cut again")
            if state.access_type == "block":
                raise FailedPrecondition(f"volume {vid} is staged as a block device: its writers cannot be frozen for a group snapshot")
            targets.append((vid, Path(state.staging_path)))
        done: list[tuple[str, Path]] = []
        try:
            for vid, path in targets:
                await self._host.freeze(path)
                done.append((vid, path))
                self._lease(path, min(max(cmd.lease_s, 1.0), MAX_LEASE_S))
        except StorageError as exc:
            for _, path in done:
                await self._thaw_path(path)
            raise Internal(f"cannot freeze {path}: {exc.stderr or exc}") from exc
        if done:
            log.info("froze %s for a group snapshot's cut", ", ".join(vid for vid, _ in done))
        return FrozenVolumes(volume_ids=tuple(vid for vid, _ in done))

    async def thaw(self, cmd: ThawVolumes) -> Done:
        for vid in cmd.volume_ids:
            state = await self._volumes.load(vid) if is_volume_id(vid) else None
            if state is not None and state.staging_path and state.access_type == "mount":
                await self._thaw_path(Path(state.staging_path))
                log.info("thawed %s after a group snapshot's cut", vid)
        return Done()

    async def thaw_all(self) -> int:
        """Thaw every mount of this node's images (on start: a freeze outlives its holder)."""
        entries = self._host.mounts_of_images(self._own_dirs)
        for entry in entries:
            await self._thaw_path(entry.mount_point)
        return len(entries)

    def _lease(self, path: Path, seconds: float) -> None:
        old = self._leases.pop(str(path), None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._leases[str(path)] = loop.call_later(seconds, self._start_expiry, path)

    def _start_expiry(self, path: Path) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(path))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _expire(self, path: Path) -> None:
        self._leases.pop(str(path), None)
        log.warning("freeze of %s outlived its lease: thawing it", path)
        await self._thaw_path(path)

    async def _thaw_path(self, path: Path) -> None:
        timer = self._leases.pop(str(path), None)
        if timer is not None:
            timer.cancel()
        try:
            await self._host.thaw(path)
        except StorageError as exc:
            log.error("cannot thaw %s: %s", path, exc)
