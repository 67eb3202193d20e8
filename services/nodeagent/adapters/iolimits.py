"""Per-device I/O limits in the block I/O controller of cgroups: the kernel's throttle of one
device for the processes of one cgroup.

    cgroup = IoCgroup.detect("volplane")          # /sys/fs/cgroup/blkio/volplane (v1) or /sys/fs/cgroup/volplane (v2)
    cgroup.apply("/dev/loop3", {"writeIOPS": 50})  # a 50 IOPS write ceiling on 7:3, every other limit off
    cgroup.clear("/dev/loop3")                     # no ceiling on 7:3 any more
    limits_of = provisioner_limits(bus)
    await limits_of(volume_id)                     # {"writeIOPS": 50}; None for a volume the provisioner does not know

Which hierarchy. Where the unified hierarchy (cgroup v2) is mounted at the root with the
``io`` controller, the rules go in ``io.max`` ("7:3 riops=max wiops=50 rbps=max wbps=max");
else in the ``blkio`` hierarchy of cgroup v1, one file per kind
(``blkio.throttle.write_iops_device``: "7:3 50", and "7:3 0" removes the rule). A hybrid host
(v1 controllers with an empty v2 mount beside them, as this one) is a v1 host for I/O.

Which processes. A rule holds for the processes of its cgroup and of the cgroups below it
(the throttle is hierarchical in both versions), so the node writes its rules into one cgroup
under which the processes using volumes run: ``VOLPLANE_IO_CGROUP`` (default ``volplane``,
made if missing) — in Kubernetes the pods' parent, e.g. ``kubepods``. A process outside it is
not limited (docs/decisions.md, "I/O limits"). Only I/O the kernel charges to the writer's
cgroup is throttled: direct I/O always; buffered writes of cgroup v1 are written back by the
kernel's flusher, charged to the root, and pass unthrottled.

Writes are idempotent: every rule of a device is written whole each time, so applying the same
limits again changes nothing and a device number reused by another volume starts clean.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import GetVolume, VolumeInfo
from volplane.errors import NotFound
from volplane.volumes import IO_LIMIT_KEYS, READ_BPS, READ_IOPS, WRITE_BPS, WRITE_IOPS, io_limits

__all__ = ["CGROUP_ROOT", "IoCgroup", "IoLimitError", "LimitsOf", "provisioner_limits"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1: the file of each limit in a blkio cgroup.
_V1_FILES = {
    READ_IOPS: "blkio.throttle.read_iops_device",
    WRITE_IOPS: "blkio.throttle.write_iops_device",
    READ_BPS: "blkio.throttle.read_bps_device",
    WRITE_BPS: "blkio.throttle.write_bps_device",
}
# cgroup v2: the key of each limit in a line of io.max.
_V2_KEYS = {READ_IOPS: "riops", WRITE_IOPS: "wiops", READ_BPS: "rbps", WRITE_BPS: "wbps"}


class IoLimitError(Exception):
    """A rule could not be written (no blkio/io controller, a cgroup we may not write)."""


@dataclass(frozen=True)
class IoCgroup:
    """The cgroup the node writes its rules into; ``version`` 1 (blkio) or 2 (io.max)."""

    path: Path
    version: int

    @classmethod
    def detect(cls, name: str, root: Path = CGROUP_ROOT) -> IoCgroup:
        """The cgroup ``name`` (relative to the hierarchy's root) in this host's I/O hierarchy, made if missing."""
        relative = Path(name.strip("/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise IoLimitError(f"VOLPLANE_IO_CGROUP: {name!r} must name a cgroup below the root, without '..'")
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "io" in controllers.read_text().split():
            cgroup = cls(root / relative, 2)
            # io.max exists in a child only once its parent hands the io controller down.
            for parent in [root, *(root / Path(*relative.parts[:i]) for i in range(1, len(relative.parts)))]:
                _enable_io(parent)
        elif (root / "blkio" / _V1_FILES[WRITE_IOPS]).exists():
            cgroup = cls(root / "blkio" / relative, 1)
        else:
            raise IoLimitError(f"no block I/O controller under {root} (neither cgroup v2 io nor v1 blkio)")
        cgroup.path.mkdir(parents=True, exist_ok=True)
        return cgroup

    def procs(self) -> Path:
        """The file a process's pid is written to, to run it in this cgroup."""
        return self.path / "cgroup.procs"

    def apply(self, device: str, limits: Mapping[str, int]) -> None:
        """Set every limit of ``device`` to ``limits`` (a missing key or 0: no limit)."""
        number = _device_number(device)
        if self.version == 2:
            fields = " ".join(f"{_V2_KEYS[k]}={limits.get(k) or 'max'}" for k in IO_LIMIT_KEYS)
            self._write(self.path / "io.max", f"{number} {fields}")
            return
        for key in IO_LIMIT_KEYS:
            self._write(self.path / _V1_FILES[key], f"{number} {limits.get(key, 0)}")

    def clear(self, device: str) -> None:
        """Take every limit off ``device``; nothing to do for a device that is gone."""
        try:
            self.apply(device, {})
        except FileNotFoundError:
            return

    def current(self, device: str) -> dict[str, int]:
        """The limits the kernel holds for ``device`` now (what the tests and the bench check)."""
        number = _device_number(device)
        found: dict[str, int] = {}
        if self.version == 2:
            for line in (self.path / "io.max").read_text().splitlines():
                dev, *fields = line.split()
                if dev == number:
                    values = dict(f.split("=", 1) for f in fields)
                    found = {k: int(values[v]) for k, v in _V2_KEYS.items() if values.get(v, "max") != "max"}
            return found
        for key, name in _V1_FILES.items():
            for line in (self.path / name).read_text().splitlines():
                dev, value = line.split()
                if dev == number and int(value):
                    found[key] = int(value)
        return found

    @staticmethod
    def _write(path: Path, line: str) -> None:
        try:
            path.write_text(line + "\n")
        except OSError as exc:
            raise IoLimitError(f"cannot write {line!r} to {path}: {exc.strerror}") from exc


def _device_number(device: str) -> str:
    """"7:3" for /dev/loop3; FileNotFoundError when the device node is gone."""
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _enable_io(cgroup: Path) -> None:
    control = cgroup / "cgroup.subtree_control"
    if "io" in control.read_text().split():
        return
    try:
        control.write_text("+io\n")
    except OSError as exc:
        raise IoLimitError(f"cannot enable the io controller below {cgroup}: {exc.strerror}") from exc


LimitsOf = Callable[[str], Awaitable[dict[str, int] | None]]
"""A volume's I/O limits as the provisioner has them now: ``await limits_of(volume_id)``."""

TIMEOUT_S = 10.0


def provisioner_limits(bus: Bus, timeout: float = TIMEOUT_S) -> LimitsOf:
    """Asks the provisioner (GetVolume); None for a volume it does not know (an image made by
    hand), Unavailable when no provisioner answers."""

    async def limits_of(volume_id: str) -> dict[str, int] | None:
        try:
            reply = await bus.request(subjects.GET_VOLUME, GetVolume(volume_id=volume_id), timeout=timeout)
        except NotFound:
            return None
        return io_limits(VolumeInfo.model_validate(reply).mutable_parameters)

    return limits_of
