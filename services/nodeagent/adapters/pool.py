"""Image files in a pool directory: the only place that makes, copies, grows or removes them.

    pool = ImagePool(Path("run/pools/node-1"), "node-1", "local", 2**40, tag="node-1")
    pool.create(vid, 2**30)                          # a sparse file; idempotent, never shrinks
    await pool.copy_in(snapshot_image, vid, 2**30)   # restore or clone, sparsely; done once
    pool.delete(vid)                                 # gone; idempotent

Only the node that owns a pool opens it (docs/decisions.md, "Pools and topology"): the
nodeagent, asked by the provisioner (``csi/pool.py``). Paths are built only from validated
ids, so no id can name a file outside the pool directory.

Every operation may be asked again — after a crash, a timeout, or on another node of the
shared pool — and gives the same result. A copy is written to a temporary file and put in
place with ``link(2)``, which fails if the image exists: a copy that finishes second (two
nodes, or a retry racing a slow first attempt) is dropped instead of replacing an image
that may be in use by then. An image that exists is therefore complete.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from volplane.errors import Internal, NotFound, ResourceExhausted
from volplane.ids import image_path, is_volume_id

__all__ = ["COPY_CHUNK", "ImagePool", "Writer"]

COPY_CHUNK = 64 * 2**20

Writer = Callable[[Path], Awaitable[None]]
"""Fills a temporary file with an image's bytes: ``await writer(tmp)``."""


class ImagePool:
    def __init__(self, directory: Path, name: str, kind: Literal["local", "shared"], capacity: int, node: str = "", *, tag: str = "") -> None:
        """``tag`` names this process's temporary files (its node id), so that on start it
        removes only its own leftovers from a pool other nodes write into too."""
        self.directory = directory
        self.name = name
        self.kind = kind
        self.capacity = capacity
        self.node = node
        self._tag = tag or "tmp"
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, volume_id: str) -> Path:
        path = image_path(self.directory, volume_id)
        if path is None:
            raise NotFound(f"volume {volume_id[:128]!r} does not exist")
        return path

    def snapshot_path(self, snapshot_id: str) -> Path:
        if not is_volume_id(snapshot_id):
            raise NotFound(f"snapshot {snapshot_id[:128]!r} does not exist")
        return self.directory / "snapshots" / f"{snapshot_id}.img"

    def size_of(self, path: Path) -> int | None:
        """The image's size, None when there is none."""
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    def create(self, volume_id: str, size: int) -> Path:
        """Make (or find made) a sparse image of at least ``size`` bytes."""
        path = self.path_for(volume_id)
        self._truncate(path, size, create=True)
        return path

    def grow(self, volume_id: str, size: int) -> None:
        """Grow the image to ``size``; one that is that large already is left as it is."""
        self._truncate(self.path_for(volume_id), size, create=False)

    async def copy_in(self, source: Path, volume_id: str, size: int) -> Path:
        """A new image holding ``source``'s data, grown to ``size``; an image that exists is
        the copy already made (see the module's docstring)."""

        async def copy(tmp: Path) -> None:
            await asyncio.to_thread(os.sync)  # A clone's source may be mounted: see snapshot().
            await _sparse_copy(source, tmp, self.name)

        return await self.write_in(volume_id, size, copy)

    async def write_in(self, volume_id: str, size: int, writer: Writer) -> Path:
        """A new image whose bytes ``writer`` puts in a temporary file, grown to ``size``."""
        path = self.path_for(volume_id)
        if not path.exists():
            await self._put(path, writer)
        self._truncate(path, size, create=False)
        return path

    async def snapshot(self, source_volume_id: str, snapshot_id: str) -> Path:
        target = self.snapshot_path(snapshot_id)
        if target.exists():
            return target
        source = self.path_for(source_volume_id)

        async def copy(tmp: Path) -> None:
            # Dirty pages of a mounted volume sit above its loop device; flush them so the
            # copy is at least crash-consistent (a group snapshot freezes the volume first).
            await asyncio.to_thread(os.sync)
            await _sparse_copy(source, tmp, self.name)

        target.parent.mkdir(exist_ok=True)
        await self._put(target, copy)
        return target

    def sweep(self) -> int:
        """Remove the copies a crash of this process left half-written; returns how many."""
        pattern = f"*.{self._tag}.*.tmp"
        stale = [*self.directory.glob(pattern), *self.directory.glob(f"snapshots/{pattern}")]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def delete(self, volume_id: str) -> None:
        self._unlink(self.path_for(volume_id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._unlink(self.snapshot_path(snapshot_id))

    async def _put(self, target: Path, writer: Writer) -> None:
        """``writer``'s file at ``target`` unless an image got there first (then it is dropped)."""
        tmp = target.with_name(f"{target.name}.{self._tag}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            await writer(tmp)
            try:
                os.link(tmp, target)
            except FileExistsError:
                pass  # Another attempt finished first: its copy stands.
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # A filesystem without hard links: rename, which may replace a twin copy.
                os.replace(tmp, target)
        except OSError as exc:
            raise _translate(exc, self.name, 0) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise Internal(f"pool {self.name}: cannot delete {path.name}: {exc.strerror}") from exc

    def _truncate(self, path: Path, size: int, *, create: bool) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
            try:
                # Never shrink: a late repeat of an older request must not cut a grown image.
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except FileNotFoundError as exc:
            raise NotFound(f"pool {self.name}: image {path.name} does not exist") from exc
        except OSError as exc:
            raise _translate(exc, self.name, size) from exc


async def _sparse_copy(source: Path, target: Path, pool: str) -> None:
    """Copy only the data extents of ``source`` into the new file ``target`` (holes stay holes)."""

    def copy() -> None:
        with open(source, "rb") as src, open(target, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(src.fileno(), pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # Only a hole remains.
                    raise
                end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
                offset = start
                while offset < end:
                    n = os.copy_file_range(src.fileno(), dst.fileno(), min(COPY_CHUNK, end - offset), offset, offset)
                    if n == 0:
                        break
                    offset += n
                pos = end
            os.ftruncate(dst.fileno(), size)
            os.fsync(dst.fileno())

    try:
        await asyncio.to_thread(copy)
    except FileNotFoundError as exc:
        raise NotFound(f"pool {pool}: source image {source.name} is gone") from exc


def _translate(exc: OSError, pool: str, size: int) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ResourceExhausted(f"pool {pool}: no room for {size} bytes: {exc.strerror}")
    return Internal(f"pool {pool}: {exc.strerror}")
