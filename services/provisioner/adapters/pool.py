"""Image files in pool directories: the provisioner's only side effects on storage.

    pools = Pools(shared=ImagePool(Path("run/pools/shared"), "shared", "shared", 100 * 2**30), registry=nodes)
    pool = pools.get("node-1")
    pool.create(vid, 2**30)                         # a sparse file; idempotent
    await pool.copy_in(snapshot_image, vid, 2**30)  # restore or clone, sparsely
    pool.delete(vid)                                # gone; idempotent

Paths are built only from validated ids, so no id can name a file outside a pool
directory. Local pools are learnt from the node registry (each nodeagent announces its
own); the provisioner must be able to reach their directories — true on one machine,
and in a cluster only for shared storage (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from pathlib import Path
from typing import Literal

from volplane.errors import Internal, NotFound, ResourceExhausted
from volplane.ids import image_path, is_volume_id
from volplane.nodes import NodesProjection

COPY_CHUNK = 64 * 2**20


class ImagePool:
    def __init__(self, directory: Path, name: str, kind: Literal["local", "shared"], capacity: int, node: str = "") -> None:
        self.directory = directory
        self.name = name
        self.kind = kind
        self.capacity = capacity
        self.node = node
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

    def create(self, volume_id: str, size: int) -> Path:
        """Make (or finish making) a sparse image of exactly ``size`` bytes."""
        path = self.path_for(volume_id)
        self._truncate(path, size, create=True)
        return path

    def grow(self, volume_id: str, size: int) -> None:
        self._truncate(self.path_for(volume_id), size, create=False)

    async def copy_in(self, source: Path, volume_id: str, size: int) -> Path:
        """A new image holding ``source``'s data, grown to ``size``; redone from scratch if interrupted."""
        path = self.path_for(volume_id)
        await asyncio.to_thread(os.sync)  # A clone's source may be mounted: see snapshot().
        await _sparse_copy(source, path, self.name)
        self._truncate(path, size, create=False)
        return path

    async def snapshot(self, source_volume_id: str, snapshot_id: str) -> Path:
        # Dirty pages of a mounted volume sit above its loop device; flush them so the
        # copy is at least crash-consistent (on this machine; a remote node would freeze).
        await asyncio.to_thread(os.sync)
        target = self.snapshot_path(snapshot_id)
        target.parent.mkdir(exist_ok=True)
        await _sparse_copy(self.path_for(source_volume_id), target, self.name)
        return target

    def sweep(self) -> int:
        """Remove copies a crash left half-written (``*.tmp``); returns how many."""
        stale = [*self.directory.glob("*.tmp"), *self.directory.glob("snapshots/*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def delete(self, volume_id: str) -> None:
        self._unlink(self.path_for(volume_id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._unlink(self.snapshot_path(snapshot_id))

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
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _translate(exc, self.name, size) from exc


async def _sparse_copy(source: Path, target: Path, pool: str) -> None:
    """Copy only the data extents of ``source`` (holes stay holes), atomically by rename.

    Each attempt writes its own temporary file, so two writers finishing the same intent
    (replicas, or a retry racing recovery) never rename each other's work away."""
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.tmp")

    def copy() -> None:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
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
        os.replace(tmp, target)

    try:
        await asyncio.to_thread(copy)
    except FileNotFoundError as exc:
        tmp.unlink(missing_ok=True)
        raise NotFound(f"pool {pool}: source image {source.name} is gone") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _translate(exc, pool, 0) from exc


def _translate(exc: OSError, pool: str, size: int) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ResourceExhausted(f"pool {pool}: no room for {size} bytes: {exc.strerror}")
    return Internal(f"pool {pool}: {exc.strerror}")


class Pools:
    """Every pool the provisioner can place volumes in: the shared one and each node's local one."""

    def __init__(self, shared: ImagePool | None, registry: NodesProjection) -> None:
        self._shared = shared
        self._registry = registry
        self._local: dict[str, ImagePool] = {}

    def all(self) -> list[ImagePool]:
        pools = [self._shared] if self._shared else []
        for info in self._registry.nodes.values():
            for spec in info.pools:
                if spec.kind == "local":
                    pools.append(self._local_pool(info.node_id, spec.name, spec.directory, spec.capacity))
        return pools

    def get(self, name: str) -> ImagePool:
        for pool in self.all():
            if pool.name == name:
                return pool
        raise Internal(f"pool {name!r} is unknown: its node has not registered")

    def _local_pool(self, node: str, name: str, directory: str, capacity: int) -> ImagePool:
        pool = self._local.get(name)
        if pool is None or str(pool.directory) != directory or pool.capacity != capacity:
            pool = self._local[name] = ImagePool(Path(directory), name, "local", capacity, node)
        return pool
