"""Image files in a pool directory: the provisioner's only side effect on storage.

    pool = ImagePool(Path("run/pools/default"), "default", capacity=100 * 2**30)
    pool.create("3f…", 2**30)     # a sparse file; idempotent
    pool.delete("3f…")            # gone; idempotent

Paths are built only from validated volume ids, so no id can name a file outside the
pool directory.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from volplane.errors import Internal, NotFound, ResourceExhausted

from volplane.ids import image_path, is_volume_id


class ImagePool:
    def __init__(self, directory: Path, name: str, capacity: int) -> None:
        self.directory = directory
        self.name = name
        self.capacity = capacity
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, volume_id: str) -> Path:
        path = image_path(self.directory, volume_id)
        if path is None:
            raise NotFound(f"volume {volume_id[:128]!r} does not exist")
        return path

    def create(self, volume_id: str, size: int) -> Path:
        """Make (or finish making) a sparse image of exactly ``size`` bytes."""
        path = self.path_for(volume_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise ResourceExhausted(f"pool {self.name}: no room for {size} bytes: {exc.strerror}") from exc
            raise Internal(f"pool {self.name}: cannot create image: {exc.strerror}") from exc
        return path

    def delete(self, volume_id: str) -> None:
        try:
            self.path_for(volume_id).unlink(missing_ok=True)
        except OSError as exc:
            raise Internal(f"pool {self.name}: cannot delete image: {exc.strerror}") from exc

    def exists(self, volume_id: str) -> bool:
        return is_volume_id(volume_id) and self.path_for(volume_id).exists()
