"""How many volumes this node can hold at once (NodeGetInfo's max_volumes_per_node), and
NodeStage's check of it.

    limit = VolumeLimit(max_volumes(cfg.max_volumes_per_node), host, own_dirs)
    async with limit.admit(image):        # ResourceExhausted when the node is full
        ...stage...                         # attaches the image's loop device

Every volume staged on a node holds one loop device (filesystem or block alike), so what
the node can really offer is loop devices (docs/decisions.md, "max_volumes_per_node"):

- where the kernel makes loop devices on demand (``/dev/loop-control`` and a devtmpfs
  ``/dev``, so new ``/dev/loopN`` nodes appear), the bound is the loop driver's minor
  numbers: 2^20 minors, ``max_part + 1`` of them per device
  (``/sys/module/loop/parameters/max_part``);
- where it cannot (a container's static ``/dev``), it is the ``/dev/loopN`` nodes there are;
- in both cases less the devices bound to files that are not volplane images (other users
  of loop devices on the host hold them), and never more than ``VOLPLANE_MAX_VOLUMES_PER_NODE``
  when that is set (> 0).

The count is taken once, at start: the CO reads max_volumes_per_node once, at registration.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from volplane.errors import ResourceExhausted

from ..adapters.storage import HostStorage

MINOR_BITS = 20
LOOP_PARAMETERS = Path("/sys/module/loop/parameters")
DEV = Path("/dev")


def loop_capacity(dev: Path = DEV, parameters: Path = LOOP_PARAMETERS) -> int:
    """Loop devices this host can have at once: ``loop_capacity() == 1 << 20`` with max_part=0 and a devtmpfs /dev."""
    if (dev / "loop-control").exists() and _is_devtmpfs(dev):
        try:
            max_part = int((parameters / "max_part").read_text().strip() or "0")
        except (OSError, ValueError):
            max_part = 0
        # The driver rounds max_part up to a power of two less one: part_shift = fls(max_part).
        part_shift = max_part.bit_length() if max_part > 0 else 0
        return 1 << (MINOR_BITS - part_shift)
    return sum(1 for name in os.listdir(dev) if name.startswith("loop") and name[4:].isdigit())


def max_volumes(configured: int, own_dirs: Sequence[str], dev: Path = DEV) -> int:
    """What NodeGetInfo reports: the loop devices free for volplane, capped by ``configured`` (> 0)."""
    foreign = sum(1 for image in HostStorage.loop_backing_files().values() if not _is_own(image, own_dirs))
    offered = max(loop_capacity(dev) - foreign, 0)
    return min(configured, offered) if configured > 0 else offered


class VolumeLimit:
    """NodeStage's admission: a new volume is staged only while the node holds fewer than ``limit``."""

    def __init__(self, limit: int, own_dirs: Sequence[str]) -> None:
        self.limit = limit
        self._own_dirs = list(own_dirs)
        self._lock = asyncio.Lock()
        # Images admitted whose loop device is not attached yet: concurrent stages count them.
        self._admitting: set[str] = set()

    def held(self) -> set[str]:
        """The images of this node's volumes that hold a loop device now (the kernel's view)."""
        return {_live(image) for image in HostStorage.loop_backing_files().values() if _is_own(image, self._own_dirs)}

    @asynccontextmanager
    async def admit(self, image: Path) -> AsyncIterator[None]:
        key = str(image)
        async with self._lock:
            # The devices bound now (one read) bound what this node holds from above: only a
            # node that may be full reads whose each one is.
            if self.limit > 0 and HostStorage.bound_loop_count() + len(self._admitting) >= self.limit:
                held = self.held() | self._admitting
                if key not in held and len(held) >= self.limit:
                    raise ResourceExhausted(f"node holds {len(held)} volumes, its maximum (max_volumes_per_node {self.limit})")
            self._admitting.add(key)
        try:
            yield
        finally:
            self._admitting.discard(key)


def _live(image: str) -> str:
    return image.removesuffix(" (deleted)")


def _is_own(image: str, own_dirs: Sequence[str]) -> bool:
    return any(_live(image).startswith(os.path.abspath(d) + "/") for d in own_dirs)


def _is_devtmpfs(dev: Path) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(dev) and line.split()[2] == "devtmpfs" for line in f)
    except OSError:
        return False
