"""Volume ids and where their images live, shared by the provisioner and every node.

    image_path(pool_dir, "3f2a…")   # pool_dir / "3f2a….img", or None for a foreign id

An id is 32 lowercase hex digits; anything else was never issued by this driver, so
it cannot name a file, let alone one outside the pool.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["image_path", "is_volume_id", "volume_id_for"]

_VOLUME_ID = re.compile(r"^[0-9a-f]{32}$")


def volume_id_for(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def is_volume_id(text: str) -> bool:
    return bool(_VOLUME_ID.match(text))


def image_path(pool_dir: Path, volume_id: str) -> Path | None:
    return pool_dir / f"{volume_id}.img" if is_volume_id(volume_id) else None
