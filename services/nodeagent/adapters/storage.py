"""Host storage adapter: loop devices, filesystems and mounts on a node.

Loop devices, mounts of block-device filesystems, bind mounts, unmounts, freezes and the
recognition of ext4 and xfs are system calls (``syscalls.py``), each in a worker thread;
what needs a program — mkfs, resize2fs, e2fsck, xfs_growfs, blkid for a device that
holds neither ext nor xfs (a blank one included), and any filesystem mount(8) or umount(8)
hands to a helper such as mount.nfs — runs as a command, without a shell, so a path is always one
argument and can inject nothing. State is read from /proc/self/mountinfo,
/proc/partitions and /sys/block/loop*/{loop/backing_file,ro,size}, the kernel's own view,
which cannot go stale.

    storage = HostStorage()
    device = await storage.attach(Path("/var/lib/volplane/images/pv-1.img"))
    await storage.mount(device, Path("/staging/pv-1"), "ext4", ["noatime"])
"""

from __future__ import annotations

import asyncio
import errno as errnos
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from volplane.locks import KeyedLocks
from volplane.telemetry import span

from . import syscalls

MOUNTINFO = Path("/proc/self/mountinfo")
PROC_STATUS = Path("/proc/self/status")
SYS_BLOCK = Path("/sys/block")
SECTOR = 512
# ext4 grows a mounted filesystem only for a caller holding this capability (ext4_resize_begin).
CAP_SYS_RESOURCE = 24
COMMAND_TIMEOUT_S = 60.0
# Each umount peels one stacked mount; the bound stops a mount that keeps reappearing from looping forever.
MAX_UNMOUNT_ATTEMPTS = 8
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")
_FORMAT_COMMANDS: dict[str, tuple[str, ...]] = {
    # Lazy init leaves inode-table and journal zeroing to the kernel, so formatting a big sparse image is instant.
    "ext4": ("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
}


T = TypeVar("T")


class StorageError(Exception):
    """A failed host operation: a command, ``StorageError(["umount", "/m"], 32, "not mounted")``
    (exit_code None: it never ran or was killed), or a system call, ``StorageError.of("umount",
    ["/m"], OSError(errno.EINVAL, "Invalid argument"))`` (``errno`` set, exit_code None,
    ``stderr`` the error's text)."""

    def __init__(self, command: Sequence[str], exit_code: int | None, stderr: str, *, errno: int | None = None) -> None:
        self.command = tuple(command)
        self.exit_code = exit_code
        self.stderr = stderr.strip()
        self.errno = errno
        if errno is None:
            super().__init__(f"`{shlex.join(self.command)}` failed (exit code {exit_code}): {self.stderr}")
        else:
            super().__init__(f"{self.command[0]}({', '.join(self.command[1:])}) failed: {self.stderr}")

    @classmethod
    def of(cls, call: str, args: Sequence[str], exc: OSError) -> StorageError:
        """The error of a system call, its errno named: ``... failed: Device or resource busy (EBUSY)``."""
        code = exc.errno or 0
        text = exc.strerror or os.strerror(code)
        return cls((call, *args), None, f"{text} ({errnos.errorcode.get(code, code)})", errno=code)


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo`` with escapes decoded: ``"ro" in storage.mount_point(p).options``."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: Path
    options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]


def _unescape(field: bytes) -> str:
    """Decode the kernel's octal escapes: ``_unescape(b"/mnt/a\\\\040b") == "/mnt/a b"``."""
    # The kernel escapes space, tab, newline and backslash so that fields stay space-separated.
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def _escape(path: str) -> bytes:
    """A path as /proc/self/mountinfo writes it (space, tab, newline and backslash in octal)."""
    raw = os.fsencode(path)
    for char, code in ((b"\\", b"\\134"), (b" ", b"\\040"), (b"\t", b"\\011"), (b"\n", b"\\012")):
        raw = raw.replace(char, code)
    return raw


def _parse_mountinfo_line(line: bytes) -> MountEntry:
    """Parse one line: ``_parse_mountinfo_line(b"42 27 7:0 / /mnt rw - ext4 /dev/loop0 rw")``."""
    # Splitting on single spaces keeps an empty source field in place instead of shifting the rest.
    fields = line.rstrip(b"\n").split(b" ")
    # Optional fields such as "shared:1" vary in number, so the fixed tail is found by its "-" separator.
    tail = fields.index(b"-", 6) + 1
    return MountEntry(
        mount_id=int(fields[0]), parent_id=int(fields[1]), major_minor=fields[2].decode(),
        root=_unescape(fields[3]), mount_point=Path(_unescape(fields[4])),
        options=tuple(fields[5].decode().split(",")), fs_type=_unescape(fields[tail]),
        source=_unescape(fields[tail + 1]), super_options=tuple(_unescape(fields[tail + 2]).split(",")),
    )


def _arg(path: Path) -> str:
    """Render a path as a command argument: ``_arg(Path("-o")) == "/cwd/-o"``."""
    # An absolute path always starts with "/", so it can never be mistaken for an option.
    return os.path.abspath(path)


class HostStorage:
    """Loop devices, filesystems and mounts on this host, for root: ``HostStorage(timeout=60.0)``."""

    def __init__(self, timeout: float = COMMAND_TIMEOUT_S) -> None:
        self._timeout = timeout
        # Attach and detach check then act, so two requests for one image must not interleave;
        # different images go in parallel (across processes, attach also locks the image itself).
        self._images = KeyedLocks("image")

    async def _call(self, call: str, args: Sequence[str], fn: Callable[..., T], *fn_args: object) -> T:
        """Run a blocking system call in a worker thread: ``await self._call("umount", [p], syscalls.umount, p)``.

        A worker thread because mount(2) of a filesystem and umount(2) of a dirty one do I/O;
        the event loop serves every other volume meanwhile. OSError becomes StorageError.
        """
        with span(f"syscall {call}", attributes={"syscall.args": list(args)}):
            try:
                return await asyncio.to_thread(fn, *fn_args)
            except OSError as exc:
                raise StorageError.of(call, args, exc) from exc

    async def _run(self, *command: str) -> str:
        """Run a command without a shell and return its stdout: ``await self._run("losetup", "-a")``."""
        # A fixed locale keeps stderr in English, so error messages and logs read the same on every node.
        env = {**os.environ, "LC_ALL": "C"}
        # subprocess in a worker thread, not the event loop's spawn: CPython starts the child
        # with vfork, which costs ~1.5 ms from a large service process, where uvloop's fork
        # costs ~20 ms (measured; docs/performance.md). A hung command is killed at the timeout.
        with span(f"exec {command[0]}", attributes={"process.command_args": list(command)}) as s:
            try:
                done = await asyncio.to_thread(
                    subprocess.run, command, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=self._timeout
                )
            except subprocess.TimeoutExpired:
                raise StorageError(command, None, f"killed after {self._timeout:g} s") from None
            except OSError as err:
                raise StorageError(command, None, str(err)) from err
            s.set_attribute("process.exit.code", done.returncode)
            if done.returncode != 0:
                raise StorageError(command, done.returncode, done.stderr.decode(errors="replace"))
            return done.stdout.decode(errors="replace")

    async def loop_devices_for(self, image: Path, *, deleted_too: bool = False) -> list[str]:
        """Every loop device backed by ``image``: ``await storage.loop_devices_for(img) == ["/dev/loop0"]``.

        The kernel appends " (deleted)" to the backing path once the file is unlinked. Such a
        device backs an old incarnation of the image, never the live file, so it is listed
        only with ``deleted_too`` — which ``detach`` uses, so that nothing leaks when an
        image was deleted while still attached.
        """
        accepted = _accepted(image, deleted_too)
        # Only bound devices are read (/proc/partitions names them): a node collects unbound
        # ones, and reading each of 400 cost 1.6 ms a scan. sysfs and procfs reads never block.
        return [f"/dev/{name}" for name in syscalls.bound_loops() if syscalls.loop_backing(name) in accepted]

    @staticmethod
    def backs(device: str, image: Path, *, deleted_too: bool = False) -> bool:
        """Whether ``device`` is bound to ``image`` now: ``storage.backs("/dev/loop0", img)``; one sysfs read."""
        return syscalls.loop_backing(Path(device).name) in _accepted(image, deleted_too)

    async def attach(self, image: Path, *, readonly: bool = False) -> str:
        """Attach ``image``, reusing a device that backs it: ``await storage.attach(img) == "/dev/loop0"``.

        With ``readonly`` the device is a read-only one (as ``losetup --read-only``), a second device
        beside the writable one: a read-only bind of a device node still lets writes through, so a
        read-only block publication needs a device the kernel itself refuses to write. A device
        is reused only if it maps the whole image (no offset), as ``losetup --nooverlap`` does.
        """
        path = str(image.resolve())
        async with self._images.acquire(path):
            # One worker-thread trip: scan, and bind a free device only if none fits (syscalls.attach_loop).
            return await self._call("loop-attach", [path, "ro" if readonly else "rw"], syscalls.attach_loop, path, readonly)

    async def detach(self, image: Path, *, readonly_only: bool = False) -> None:
        """Detach every loop device backing ``image`` (only read-only ones with ``readonly_only``).

        A device still open (mounted) is only marked to auto-detach on its last close; that counts as success.
        """
        accepted = _accepted(image, True)
        async with self._images.acquire(str(image.resolve())):
            for device in await self.loop_devices_for(image, deleted_too=True):
                if readonly_only and not self.is_readonly(device):
                    continue
                try:
                    await self._call("loop-detach", [device], syscalls.detach_loop, device, accepted)
                except StorageError:
                    # Someone else may have detached it after the scan; only a device still backing the image
                    # is a failure.
                    if self.backs(device, image, deleted_too=True):
                        raise

    async def refresh(self, device: str) -> None:
        """Make the device see a grown image: ``os.truncate(img, 2 << 30); await storage.refresh("/dev/loop0")``."""
        await self._call("loop-set-capacity", [device], syscalls.set_capacity, device)

    def is_readonly(self, device: str) -> bool | None:
        """Whether a block device refuses writes; None once it is gone: ``storage.is_readonly("/dev/loop1")``."""
        try:
            return (SYS_BLOCK / Path(device).name / "ro").read_text().strip() == "1"
        except OSError:
            return None

    def device_size(self, device: str) -> int:
        """The size of a block device in bytes: ``storage.device_size("/dev/loop0") == 64 << 20``.

        sysfs counts in 512-byte sectors whatever the device's block size. Raises OSError when the device is gone.
        """
        return int((SYS_BLOCK / Path(device).name / "size").read_text()) * SECTOR

    @staticmethod
    def device_number(path: Path | str) -> int | None:
        """The device a path is (st_rdev), following a bind; None if it is no block device or missing."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_rdev if stat.S_ISBLK(st.st_mode) else None

    @staticmethod
    def grows_online(fs_type: str) -> bool:
        """Whether a mounted filesystem of this type can grow from this process: always for xfs; for ext4
        only with CAP_SYS_RESOURCE, which some sandboxes drop even for root."""
        if fs_type != "ext4":
            return True
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
        return False

    async def grow_filesystem(self, device: str, mount_point: Path, fs_type: str) -> None:
        """Grow a mounted filesystem to fill its (refreshed) device; a no-op if it already does.

        ``await storage.grow_filesystem("/dev/loop0", Path("/staging/pv-1"), "xfs")``
        """
        if fs_type == "ext4":
            await self._run("resize2fs", device)
        elif fs_type == "xfs":
            # xfs grows only while mounted, and is addressed by its mount point.
            await self._run("xfs_growfs", _arg(mount_point))
        else:
            raise ValueError(f"cannot grow filesystem {fs_type!r}")

    async def grow_unmounted(self, device: str, fs_type: str) -> None:
        """Check, then grow an unmounted ext4 filesystem: ``await storage.grow_unmounted("/dev/loop0", "ext4")``."""
        if fs_type != "ext4":
            raise ValueError(f"cannot grow an unmounted {fs_type!r} filesystem")
        try:
            # resize2fs refuses a filesystem not checked since it was last mounted.
            await self._run("e2fsck", "-f", "-p", device)
        except StorageError as err:
            # Exit code 1 means "errors corrected": the filesystem is clean now.
            if err.exit_code != 1:
                raise
        await self._run("resize2fs", device)

    @staticmethod
    def filesystem_bytes(device: str, fs_type: str) -> int:
        """The size the filesystem on ``device`` believes it has, read from its superblock.

        ``storage.filesystem_bytes("/dev/loop0", "ext4") == 64 << 20``; 0 for another type.
        """
        sb = syscalls.Superblock.read(device)
        return sb.fs_bytes if sb.fs_type == fs_type else 0

    async def filesystem_of(self, device: str) -> str | None:
        """The filesystem on ``device``, None if blank: ``await storage.filesystem_of("/dev/loop0") == "ext4"``.

        An ext2/3/4 or xfs superblock is recognised by reading it; anything else — a blank
        device included — is left to ``blkid -p``, which knows every other signature, so
        that nothing it would name is ever taken for blank and formatted over.
        """
        try:
            found = await self._call("read-superblock", [device], syscalls.probe_superblock, device)
        except StorageError:
            found = None  # blkid says what it makes of a device that cannot be read.
        if found is not None and found.fs_type is not None:
            return found.fs_type
        try:
            out = await self._run("blkid", "-p", "-o", "value", "-s", "TYPE", device)
        except StorageError as err:
            # Exit code 2 means "no signature", the normal state of a new image; anything else, such as 8 for
            # ambiguous signatures, is raised so that a caller never formats over data it cannot identify.
            if err.exit_code == 2:
                return None
            raise
        return out.strip() or None

    async def format(self, device: str, fs_type: str) -> None:
        """Create a filesystem, destroying any data: ``await storage.format("/dev/loop0", "ext4")``."""
        command = _FORMAT_COMMANDS.get(fs_type)
        if command is None:
            raise ValueError(f"unsupported filesystem {fs_type!r}; expected one of {sorted(_FORMAT_COMMANDS)}")
        await self._run(*command, device)

    def is_mounted(self, path: Path) -> bool:
        """Whether something is mounted at ``path``: ``storage.is_mounted(Path("/mnt/pv-1"))``. One
        statx where the kernel tells mount roots; mountinfo only where it does not."""
        root = syscalls.is_mount_root(_arg(path))
        if root is not None:
            return root
        return self.mount_point(path) is not None

    def mount_point(self, path: Path) -> MountEntry | None:
        """The topmost mount at ``path`` or None: ``storage.mount_point(Path("/mnt/pv-1")).fs_type == "ext4"``."""
        wanted = Path(_arg(path))
        # Most paths asked about are not mounted: statx says so in one call, where
        # mountinfo costs a line per mount on the host (a node with a thousand volumes).
        if syscalls.is_mount_root(str(wanted)) is False:
            return None
        # Only lines that contain the path, escaped as the kernel writes it, are parsed: a
        # node with a thousand mounts answers in a byte search, not a thousand parses.
        needle = b" " + _escape(str(wanted)) + b" "
        # Mounts stacked on one path are listed oldest first, so the last match is the visible one.
        top: MountEntry | None = None
        for line in MOUNTINFO.read_bytes().splitlines():
            if needle not in line:
                continue
            entry = _parse_mountinfo_line(line)
            if entry.mount_point == wanted:
                top = entry
        return top

    async def mount(self, device: str, path: Path, fs_type: str, options: list[str]) -> None:
        """Mount a device: ``await storage.mount("/dev/loop0", Path("/mnt/pv-1"), "ext4", ["noatime"])``.

        mount(2) itself, with the options translated as mount(8) does, unless mount(8)
        would hand the type to a helper (mount.nfs) or an option is not one it translates.
        """
        target = _arg(path)
        translated = _translate(options)
        if translated is not None and device.startswith("/") and not syscalls.has_helper("mount", fs_type):
            flags, data = translated
            await self._call("mount", [device, target, fs_type, *options], syscalls.mount, device, target, fs_type, flags, data)
            return
        command = ["mount", "-t", fs_type]
        if options:
            command += ["-o", ",".join(options)]
        await self._run(*command, device, target)

    async def bind(self, source: Path, target: Path, readonly: bool) -> None:
        """Bind-mount a directory, or a device node onto a file: ``await storage.bind(Path("/staging/v"), Path("/pods/x/v"), True)``.

        Read-only is a per-mount flag: for a device node it does not stop writes through it (the
        kernel skips the check for special files), so a read-only block volume binds a read-only device.
        """
        # A bind inherits the source's flags; read-only needs a second, per-mount remount, and a
        # bind left writable when that fails is undone (syscalls.bind).
        args = [_arg(source), _arg(target), "ro" if readonly else "rw"]
        await self._call("bind", args, syscalls.bind, _arg(source), _arg(target), readonly)

    async def unmount(self, path: Path, source: str | None = None) -> None:
        """Remove the mounts stacked at ``path``; a no-op if none: ``await storage.unmount(Path("/mnt/pv-1"))``.

        With ``source``, only mounts of that device are peeled: whatever someone else
        mounted there, over or under ours, is left alone.
        """
        for _ in range(MAX_UNMOUNT_ATTEMPTS):
            top = self.mount_point(path)
            if top is None or (source is not None and top.source != source):
                return
            try:
                await self._umount(path, top)
            except StorageError:
                # A concurrent unmount may have won the race; only a mount that is still there is a failure.
                if self.mount_point(path) != top:
                    continue
                raise
        top = self.mount_point(path)
        if top is not None and (source is None or top.source == source):
            raise StorageError(("umount", _arg(path)), None, f"still mounted after {MAX_UNMOUNT_ATTEMPTS} attempts")

    async def unmount_device(self, path: Path, devices: Sequence[str]) -> None:
        """Remove the binds of any of ``devices`` stacked at ``path`` (a block volume's target file).

        A device bound onto a file shows the devtmpfs, not the device, in mountinfo, so the
        device is recognised by what the path is (its st_rdev) while something is mounted there.
        """
        wanted = {n for n in (self.device_number(d) for d in devices) if n is not None}
        for _ in range(MAX_UNMOUNT_ATTEMPTS):
            top = self.mount_point(path)
            if top is None or self.device_number(path) not in wanted:
                return
            try:
                await self._umount(path, top)
            except StorageError:
                if self.mount_point(path) != top:
                    continue
                raise
        if self.mount_point(path) is not None and self.device_number(path) in wanted:
            raise StorageError(("umount", _arg(path)), None, f"still mounted after {MAX_UNMOUNT_ATTEMPTS} attempts")

    async def _umount(self, path: Path, top: MountEntry) -> None:
        """Take the top mount off ``path``: umount2(2), or umount(8) where it would run a helper (umount.nfs)."""
        if syscalls.has_helper("umount", top.fs_type):
            await self._run("umount", _arg(path))
        else:
            await self._call("umount", [_arg(path)], syscalls.umount, _arg(path))

    async def freeze(self, path: Path) -> None:
        """Flush a mounted filesystem and hold every write to it: ``await storage.freeze(Path("/staging/pv-1"))``.

        Writers block in the kernel (they do not fail) until ``thaw``; a group snapshot's cut.
        FIFREEZE, as ``fsfreeze --freeze``."""
        await self._call("FIFREEZE", [_arg(path)], syscalls.freeze, _arg(path))

    async def thaw(self, path: Path) -> None:
        """Let writes to a frozen filesystem go on; a filesystem that is not frozen is left as it is."""
        try:
            await self._call("FITHAW", [_arg(path)], syscalls.thaw, _arg(path))
        except StorageError as exc:
            # The kernel answers EINVAL for a filesystem that is not frozen: already thawed.
            if exc.errno != errnos.EINVAL:
                raise

    def mounts_of_images(self, directories: Sequence[str]) -> list[MountEntry]:
        """Mounts whose source is a loop device backed by an image under one of ``directories``."""
        backing = self.loop_backing_files()
        mine = {dev for dev, image in backing.items() if any(image.startswith(d.rstrip("/") + "/") for d in directories)}
        return [e for e in map(_parse_mountinfo_line, MOUNTINFO.read_bytes().splitlines()) if e.source in mine]

    @staticmethod
    def loop_backing_files() -> dict[str, str]:
        """Every bound loop device and its backing file: ``{"/dev/loop0": "/pool/<id>.img"}``."""
        found: dict[str, str] = {}
        for name in syscalls.bound_loops():
            backing = syscalls.loop_backing(name)
            if backing is not None:  # None: detached since the listing.
                found[f"/dev/{name}"] = backing
        return found

    @staticmethod
    def bound_loop_count() -> int:
        """How many loop devices are bound now, any file's (one read of /proc/partitions)."""
        return len(syscalls.bound_loops())


def _translate(options: Sequence[str]) -> tuple[int, str] | None:
    """mount(2)'s flags and data for mount(8)'s options; None when one is not translated."""
    try:
        return syscalls.mount_options(options)
    except ValueError:
        return None


def _accepted(image: Path, deleted_too: bool) -> set[str]:
    """The backing_file texts that mean ``image``: the kernel appends " (deleted)" once it is unlinked."""
    wanted = str(image.resolve())
    return {wanted, f"{wanted} (deleted)"} if deleted_too else {wanted}
