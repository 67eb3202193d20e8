"""The node's host operations as system calls: loop devices, mount(2), umount2(2), freeze, superblocks.

Each function blocks and raises ``OSError`` (with errno and the path): ``storage.py`` runs
them in a worker thread and turns the error into its ``StorageError``. They do what the
util-linux commands did for us (losetup, mount, umount, fsfreeze, blkid for ext4 and
xfs) without a child process each time: a filesystem cycle used to start seven.

    device = attach_loop("/pools/node-1/3f….img", readonly=False)   # "/dev/loop3"
    mount(device, "/staging/pv-1", "ext4", *mount_options(["noatime"]))
    umount("/staging/pv-1")
    detach_loop(device, {"/pools/node-1/3f….img"})

ioctls go through ``fcntl.ioctl``, which releases the GIL around the call; mount(2) and
umount2(2) have no wrapper in the standard library and are called through ctypes
(``CDLL`` releases the GIL too), so operations on different volumes run in parallel.
The constants and structure layouts are the kernel's uapi (linux/loop.h, linux/mount.h,
linux/fs.h).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

__all__ = [
    "Superblock",
    "attach_loop",
    "bind",
    "bound_loops",
    "detach_loop",
    "freeze",
    "has_helper",
    "is_mount_root",
    "loop_backing",
    "mount",
    "mount_options",
    "probe_superblock",
    "set_capacity",
    "thaw",
    "umount",
]

SYS_BLOCK = "/sys/block"
PROC_PARTITIONS = "/proc/partitions"
LOOP_CONTROL = "/dev/loop-control"

# linux/loop.h
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A  # Linux 5.8
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_NAME_SIZE = 64
# struct loop_info64: five __u64 (device, inode, rdevice, offset, sizelimit), four __u32
# (number, encrypt_type, encrypt_key_size, flags), file_name[64], crypt_name[64],
# encrypt_key[32], two __u64 (init): 232 bytes.
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: __u32 fd, __u32 block_size, struct loop_info64, __u64 reserved[8].
_LOOP_CONFIG = struct.Struct(f"=II{_LOOP_INFO64.size}s64x")
# A free device another process takes between LOOP_CTL_GET_FREE and LOOP_CONFIGURE answers EBUSY.
_FREE_DEVICE_ATTEMPTS = 32

# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

# linux/mount.h (the MS_* flags of mount(2)) and the ST_* flags statvfs reports for a mount.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
# statvfs f_flag bit → the per-mount flag a read-only remount of a bind must restate.
_KEPT_ON_REMOUNT = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME, 4096: MS_RELATIME, 8192: MS_NOSYMFOLLOW}
# Options mount(8) turns into flags: name → (flags set, flags cleared); later options win.
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0), "nolazytime": (0, MS_LAZYTIME),
}
# Options mount(8) hands to the filesystem as its data string, unchanged.
_DATA_OPTIONS = frozenset({"discard", "nodiscard", "barrier", "nobarrier"})
# Where mount(8) and umount(8) look for a helper such as mount.nfs (libmount's helper path).
_HELPER_DIRS = ("/sbin", "/sbin/fs.d", "/sbin/fs")

# ext2/3/4 (superblock at 1024, s_magic at 1024 + 0x38) and xfs (superblock at 0).
EXT_MAGIC = 0xEF53
_EXT_SB = 1024
_EXT_COMPAT_HAS_JOURNAL = 0x4
_EXT_INCOMPAT_JOURNAL_DEV = 0x8
_EXT_INCOMPAT_64BIT = 0x80
# What ext3 knows (filetype, needs_recovery, meta_bg; sparse_super, large_file,
# btree_dir): a feature beyond these makes an ext4 filesystem.
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4
_PROBE_BYTES = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int


def _fail(path: str, path2: str | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path, None, path2)


# -- mounts -----------------------------------------------------------------------


def mount_options(options: Sequence[str]) -> tuple[int, str]:
    """mount(8)'s reading of ``-o``: ``mount_options(["noatime", "discard"]) == (MS_NOATIME, "discard")``.

    Raises ValueError for an option it does not translate; the caller then runs mount(8).
    """
    flags, data = 0, []
    for option in options:
        if option in _FLAG_OPTIONS:
            on, off = _FLAG_OPTIONS[option]
            flags = (flags | on) & ~off
        elif option in _DATA_OPTIONS:
            data.append(option)
        else:
            raise ValueError(f"mount option {option!r} is not translated here")
    return flags, ",".join(data)


def has_helper(program: str, fs_type: str) -> bool:
    """Whether mount(8) or umount(8) would hand ``fs_type`` to a helper: ``has_helper("mount", "nfs")``."""
    names = {f"{program}.{fs_type}", f"{program}.{fs_type.partition('.')[0]}"}
    return any(os.path.exists(f"{d}/{n}") for d in _HELPER_DIRS for n in names)


def mount(source: str, target: str, fs_type: str, flags: int, data: str) -> None:
    """mount(2): ``mount("/dev/loop3", "/staging/pv-1", "ext4", MS_NOATIME, "")``."""
    if _mount(os.fsencode(source), os.fsencode(target), fs_type.encode(), flags, data.encode() or None) != 0:
        raise _fail(source, target)


def bind(source: str, target: str, readonly: bool) -> None:
    """``mount --bind``, then ``mount -o remount,bind,ro`` for a read-only bind (undone if that fails).

    A bind starts with its source mount's per-mount flags; the read-only remount restates
    them (nosuid, nodev, noexec, the atime mode) as util-linux does, because a remount
    replaces every per-mount flag with those it is given.
    """
    if _mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None) != 0:
        raise _fail(source, target)
    if not readonly:
        return
    try:
        current = os.statvfs(target).f_flag
        kept = 0
        for bit, flag in _KEPT_ON_REMOUNT.items():
            if current & bit:
                kept |= flag
        if _mount(None, os.fsencode(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept, None) != 0:
            raise _fail(target)
    except OSError:
        # A bind left writable would hand a read-only volume to the workload as writable.
        umount(target)
        raise


# linux/fcntl.h, linux/stat.h: statx(2), asked only for attributes (mask 0), from cached
# attributes (a hung NFS server does not block the check).
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_STATX_DONT_SYNC = 0x4000
STATX_ATTR_MOUNT_ROOT = 0x2000  # Linux 5.8
_STATX_SIZE = 256
_STATX_ATTRIBUTES = struct.Struct("=Q")  # stx_attributes at offset 8, stx_attributes_mask at 56
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int


def is_mount_root(path: str) -> bool | None:
    """Whether ``path`` is the root of a mount, from statx's STATX_ATTR_MOUNT_ROOT: one system
    call, where /proc/self/mountinfo costs a line per mount on the host. None when the kernel
    or libc cannot tell (the caller reads mountinfo); False when ``path`` does not exist."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_DONT_SYNC
    if _statx(AT_FDCWD, os.fsencode(path), flags, 0, buf) != 0:
        if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR):
            return False
        return None
    (attributes,) = _STATX_ATTRIBUTES.unpack_from(buf, 8)
    (supported,) = _STATX_ATTRIBUTES.unpack_from(buf, 56)
    if not supported & STATX_ATTR_MOUNT_ROOT:
        return None
    return bool(attributes & STATX_ATTR_MOUNT_ROOT)


def umount(target: str) -> None:
    """umount2(2) with no flags, as umount(8): ``umount("/staging/pv-1")``."""
    if _umount2(os.fsencode(target), 0) != 0:
        raise _fail(target)


def freeze(mount_point: str) -> None:
    """FIFREEZE, as ``fsfreeze --freeze``: writers block until ``thaw``."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw(mount_point: str) -> None:
    """FITHAW, as ``fsfreeze --unfreeze``; EINVAL when the filesystem is not frozen."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


# -- loop devices ---------------------------------------------------------------------


def bound_loops() -> list[str]:
    """Names of the loop devices bound to a file now, by number: ``["loop0", "loop7"]``.

    /proc/partitions lists every block device with a non-zero size, so it names the bound
    loop devices in one read, however many unbound ones the node has (the kernel keeps the
    devices it made: a node that once held 400 volumes at once has 400, and reading each
    one's sysfs cost 1.6 ms a scan). A device bound to a file smaller than one sector is
    missing from it; an image is never that small (``volplane.volumes.MIN_SIZE``).
    """
    with open(PROC_PARTITIONS, "rb") as f:
        lines = f.read().splitlines()[2:]
    names = []
    for line in lines:
        fields = line.split()
        if fields and fields[-1].startswith(b"loop") and fields[-1][4:].isdigit():
            names.append(fields[-1].decode())
    return sorted(names, key=lambda n: int(n[4:]))


# Open descriptors of bound devices' ``loop/backing_file``, by device name. Attach reads the
# attribute of every bound device (the kernel has no lookup from a file to its loop devices),
# and a pread of an open descriptor costs a fifth of open/read/close here (13 against 70 µs a
# device): at 1,000 bound devices, 13 ms an attach instead of 70. The kernel removes a
# device's loop/ attributes when it is unbound, so a descriptor kept from an earlier binding
# fails with ENODEV and is opened again: it never answers for a binding that is gone. One
# lock: worker threads scan at the same time, and none may read a descriptor another closes.
_BACKING_FDS: dict[str, int] = {}
_BACKING_FDS_MAX = 2048
_backing_lock = threading.Lock()


def loop_backing(name: str) -> str | None:
    """The file behind ``loop3``, as the kernel names it (" (deleted)" once unlinked); None when unbound."""
    with _backing_lock:
        for _ in range(2):
            fd = _BACKING_FDS.get(name)
            fresh = fd is None
            if fd is None:
                try:
                    fd = os.open(f"{SYS_BLOCK}/{name}/loop/backing_file", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
            try:
                data = os.pread(fd, 8192, 0)
            except OSError:
                _BACKING_FDS.pop(name, None)
                os.close(fd)
                if fresh:
                    return None
                continue  # kept from a binding that is gone: once more, opened anew
            if fresh:
                if len(_BACKING_FDS) < _BACKING_FDS_MAX:
                    _BACKING_FDS[name] = fd
                else:
                    os.close(fd)
            return os.fsdecode(data.rstrip(b"\n"))
    return None


def _whole_image(name: str) -> bool:
    """Whether a device maps its whole file (no offset, no size limit), as losetup --nooverlap reuses."""
    try:
        with open(f"{SYS_BLOCK}/{name}/loop/offset", "rb") as f:
            offset = int(f.read())
        with open(f"{SYS_BLOCK}/{name}/loop/sizelimit", "rb") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        return False
    return offset == 0 and limit == 0


def _is_readonly(name: str) -> bool | None:
    try:
        with open(f"{SYS_BLOCK}/{name}/ro", "rb") as f:
            return f.read().strip() == b"1"
    except OSError:
        return None


def attach_loop(image: str, readonly: bool) -> str:
    """Bind ``image`` to a loop device, reusing one that maps the whole image with the same
    read-only-ness: ``attach_loop("/pool/a.img", False) == "/dev/loop3"``.

    The image is locked (flock) from the scan until the device is bound, so two processes
    attaching it at once end with one device — what ``losetup --nooverlap`` is for. A
    writable attach next to a device that maps part of the image is refused, as
    --nooverlap refuses it. A writable attach of an image this process may not write is
    bound read-only, as losetup does.
    """
    try:
        fd = os.open(image, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        if readonly or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        fd, readonly = os.open(image, os.O_RDONLY | os.O_CLOEXEC), True
    # The lock is taken on a descriptor of its own: a flock belongs to the open file, and the
    # one handed to the loop driver stays open as long as the device is bound.
    lock = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mine = [n for n in bound_loops() if loop_backing(n) == image]
        for name in mine:
            if _whole_image(name) and _is_readonly(name) is readonly:
                return f"/dev/{name}"
        if not readonly and any(not _whole_image(n) for n in mine):
            raise OSError(errno.EBUSY, "a loop device maps part of the image (overlapping loop device exists)", image)
        return _bind_free_device(fd, image, readonly)
    finally:
        os.close(lock)
        os.close(fd)


def _bind_free_device(fd: int, image: str, readonly: bool) -> str:
    name = os.fsencode(image)[: LO_NAME_SIZE - 1]
    info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_READ_ONLY if readonly else 0, name, b"", b"", 0, 0)
    control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_FREE_DEVICE_ATTEMPTS):
            device = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
            loop = os.open(device, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
            try:
                try:
                    fcntl.ioctl(loop, LOOP_CONFIGURE, _LOOP_CONFIG.pack(fd, 0, info))
                    return device
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue  # Taken since GET_FREE: ask again.
                    if exc.errno not in (errno.EINVAL, errno.ENOTTY):
                        raise
                # A kernel before 5.8 has no LOOP_CONFIGURE: bind, then describe.
                try:
                    fcntl.ioctl(loop, LOOP_SET_FD, fd)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                try:
                    fcntl.ioctl(loop, LOOP_SET_STATUS64, info)
                except OSError:
                    fcntl.ioctl(loop, LOOP_CLR_FD, 0)
                    raise
                return device
            finally:
                os.close(loop)
    finally:
        os.close(control)
    raise OSError(errno.EBUSY, f"no free loop device after {_FREE_DEVICE_ATTEMPTS} attempts", image)


def detach_loop(device: str, backing: Collection[str]) -> bool:
    """LOOP_CLR_FD, as ``losetup --detach``, if ``device`` is still bound to one of ``backing``
    (checked while the device is held open, so it cannot be rebound to another file in
    between); False when it was not. A device still open elsewhere (mounted) is only marked
    to detach on its last close, and that counts as done."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if loop_backing(Path(device).name) not in backing:
            return False
        try:
            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False  # Unbound since the check.
            raise
        return True
    finally:
        os.close(fd)


def set_capacity(device: str) -> None:
    """LOOP_SET_CAPACITY, as ``losetup --set-capacity``: the device takes its file's new size."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
    finally:
        os.close(fd)


# -- superblocks ----------------------------------------------------------------------


class Superblock:
    """What the first 4 KiB of a device say: ``Superblock.read("/dev/loop3").fs_type == "ext4"``.

    ``fs_type`` is "ext2", "ext3", "ext4", "jbd" or "xfs" when exactly one of those
    signatures is there, else None — blank, or something only blkid can name.
    """

    __slots__ = ("fs_bytes", "fs_type", "signatures")

    def __init__(self, head: bytes) -> None:
        self.signatures = 0
        self.fs_type: str | None = None
        self.fs_bytes = 0
        if len(head) >= 16 and head[:4] == b"XFSB":
            self.signatures += 1
            self.fs_type = "xfs"
            self.fs_bytes = int.from_bytes(head[4:8], "big") * int.from_bytes(head[8:16], "big")
        sb = head[_EXT_SB : _EXT_SB + 1024]
        if len(sb) == 1024 and int.from_bytes(sb[0x38:0x3A], "little") == EXT_MAGIC:
            self.signatures += 1
            compat, incompat, ro_compat = (int.from_bytes(sb[o : o + 4], "little") for o in (0x5C, 0x60, 0x64))
            if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
                self.fs_type = "jbd"
            elif incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
                self.fs_type = "ext4"
            else:
                self.fs_type = "ext3" if compat & _EXT_COMPAT_HAS_JOURNAL else "ext2"
            blocks = int.from_bytes(sb[0x04:0x08], "little")
            if incompat & _EXT_INCOMPAT_64BIT:
                blocks |= int.from_bytes(sb[0x150:0x154], "little") << 32
            self.fs_bytes = blocks * (1024 << int.from_bytes(sb[0x18:0x1C], "little"))
        if self.signatures > 1:  # Two filesystems claim the device: for blkid to judge.
            self.fs_type, self.fs_bytes = None, 0

    @classmethod
    def read(cls, device: str) -> Superblock:
        with open(device, "rb") as dev:
            return cls(dev.read(_PROBE_BYTES))


def probe_superblock(device: str) -> Superblock:
    """``Superblock.read`` as a function, for a worker thread."""
    return Superblock.read(device)
