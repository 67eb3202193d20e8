"""In-tree volume plugins: hostPath, local and nfs, SetUp and TearDown on this host.

    plugins = InTreePlugins(HostStorage())
    await plugins.set_up(volume, Path(".../pods/<uid>/volumes/kubernetes.io~host-path/data"))   # True: mounted now
    await plugins.tear_down(Path(".../pods/<uid>/volumes/kubernetes.io~host-path/data"))

hostPath and local bind-mount a directory of the host into the pod's volume directory;
nfs mounts the export there with the kernel's NFS client. A node whose kernel has no NFS
client fails the volume with the reason, never with a fake success.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path

from volplane.errors import FailedPrecondition, Internal, InvalidArgument

from ..adapters.storage import HostStorage, StorageError
from .desired_state import DesiredVolume

__all__ = ["HOST_PATH_TYPES", "InTreePlugins", "nfs_unsupported"]

PROC_FILESYSTEMS = Path("/proc/filesystems")
_NFS_SERVER = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9.:\[\]-]*$")
NFS_MOUNT_TIMEOUT_S = 10.0
# hostPath types this volume manager mounts. File, Socket and the device types would bind a
# single file, which nothing here needs yet; they fail with a clear message instead.
HOST_PATH_TYPES = ("", "Directory", "DirectoryOrCreate")


def nfs_unsupported(proc_filesystems: Path = PROC_FILESYSTEMS) -> str | None:
    """Why this node cannot mount NFS, or None when it can (or may: the module loads on demand)."""
    try:
        known = {line.split()[-1] for line in proc_filesystems.read_text().splitlines() if line.split()}
    except OSError:
        known = set()
    if not known & {"nfs", "nfs4"} and not glob.glob(f"/lib/modules/{os.uname().release}/kernel/fs/nfs/nfs.ko*"):
        return "NFS is not supported on this node (no nfs in /proc/filesystems)"
    if shutil.which("mount.nfs") is None:
        return "NFS is not supported on this node (no mount.nfs helper; install nfs-common or nfs-utils)"
    return None


class InTreePlugins:
    def __init__(self, storage: HostStorage, nfs_storage: HostStorage | None = None) -> None:
        self._storage = storage
        # NFS mounts get their own, short timeout: an unreachable server must not hold a pod's sync for a minute.
        self._nfs = nfs_storage or HostStorage(timeout=NFS_MOUNT_TIMEOUT_S)

    def mounted(self, target: Path) -> bool:
        return self._storage.mount_point(target) is not None

    async def set_up(self, volume: DesiredVolume, target: Path) -> bool:
        """Mount the volume at ``target``; False when it already is. Raises a VolplaneError saying why not."""
        if self.mounted(target):
            return False
        if volume.plugin == "kubernetes.io/nfs":
            await self._set_up_nfs(volume, target)
            return True
        source = self._host_directory(volume)
        target.mkdir(parents=True, exist_ok=True)
        try:
            await self._storage.bind(source, target, volume.readonly)
        except StorageError as exc:
            raise Internal(f"bind-mounting {source} failed: {exc.stderr or exc}") from exc
        return True

    async def tear_down(self, target: Path) -> None:
        """Take every mount off ``target`` (the binds and NFS mounts are ours; the data stays where it is)."""
        storage = self._nfs if (top := self._storage.mount_point(target)) is not None and top.fs_type.startswith("nfs") else self._storage
        try:
            await storage.unmount(target)
        except StorageError as exc:
            raise Internal(f"unmounting {target} failed: {exc.stderr or exc}") from exc

    def _host_directory(self, volume: DesiredVolume) -> Path:
        path = Path(str(volume.source.get("path", "")))
        if not path.is_absolute():
            raise InvalidArgument(f"path {str(path)!r} is not absolute")
        if volume.plugin == "kubernetes.io/local-volume":
            if not path.is_dir():
                raise FailedPrecondition(f"local volume path {path} does not exist or is not a directory")
            return path
        kind = str(volume.source.get("type") or "")
        if kind not in HOST_PATH_TYPES:
            raise InvalidArgument(f'hostPath type "{kind}" is not supported on this node (supported: "", Directory, DirectoryOrCreate)')
        if kind == "DirectoryOrCreate" and not path.exists():
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise FailedPrecondition(f"hostPath {path} {what}")
        return path

    async def _set_up_nfs(self, volume: DesiredVolume, target: Path) -> None:
        server, export = str(volume.source.get("server", "")), str(volume.source.get("path", ""))
        # The source is one argument of mount(8): a server that looked like an option would be read as one.
        if not _NFS_SERVER.match(server):
            raise InvalidArgument(f"nfs server {server[:256]!r} is not a host name or IP address")
        if not export.startswith("/"):
            raise InvalidArgument(f"nfs path {export[:256]!r} is not absolute")
        reason = nfs_unsupported()
        if reason is not None:
            raise FailedPrecondition(reason)
        options = list(volume.mount_options) + (["ro"] if volume.readonly else [])
        target.mkdir(parents=True, exist_ok=True)
        try:
            await self._nfs.mount(f"{server}:{export}", target, "nfs", options)
        except StorageError as exc:
            raise Internal(f"mount -t nfs {server}:{export} failed: {exc.stderr or exc}") from exc
