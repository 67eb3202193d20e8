"""The volume manager's directory on this node, and what is on it: its actual state of world.

    paths = KubeletDir(Path("/var/lib/volplane/kubelet/node-1"))
    paths.pod_volume("9f2c…", "kubernetes.io/csi", "pvc-1", block=False)
        # …/pods/9f2c…/volumes/kubernetes.io~csi/pvc-1
    paths.global_mount("csi.volplane.io", "vol-1")
        # …/plugins/kubernetes.io/csi/csi.volplane.io/<sha256(vol-1)>/globalmount
    paths.pod_volumes(); paths.devices()      # what the disk says is (or may be) mounted

Every pod volume and every device has a small JSON record, ``vol_data.json`` as the
kubelet calls it, written *before* the mount it describes (an intent) and removed only
after the unmount. A pod volume's record sits next to its directory
(``…/kubernetes.io~csi/pvc-1.vol_data.json``): inside it, the mount would hide it. A
device's record sits in the global mount's parent directory. So whatever a crash
interrupts, the disk names every volume that may be mounted, with the driver and volume
handle needed to unmount it, even when its pod and PV objects are gone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DATA_SUFFIX", "DEVICE_DATA", "DeviceOnDisk", "KubeletDir", "PodVolumeOnDisk"]

log = logging.getLogger(__name__)

CSI_PLUGIN = "kubernetes.io/csi"
DATA_SUFFIX = ".vol_data.json"  # '_' never occurs in a PV or pod volume name, so no name collides
DEVICE_DATA = "vol_data.json"
VOLUMES = "volumes"
_TMP = ".tmp"
VOLUME_DEVICES = "volumeDevices"


def plugin_dir(plugin: str) -> str:
    """``plugin_dir("kubernetes.io/csi") == "kubernetes.io~csi"``, the kubelet's escaping."""
    return plugin.replace("/", "~")


@dataclass(frozen=True)
class PodVolumeOnDisk:
    """A pod volume the disk knows of: its directory (or block file), or only its record."""

    pod_uid: str
    plugin: str
    spec_name: str
    path: Path
    block: bool
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def pod_key(self) -> str:
        """``namespace/name`` of the pod it was mounted for ("" when the record is missing)."""
        ns, name = self.data.get("podNamespace"), self.data.get("podName")
        return f"{ns}/{name}" if ns and name else ""

    @property
    def unique_name(self) -> str:
        return str(self.data.get("uniqueName") or "")


@dataclass(frozen=True)
class DeviceOnDisk:
    """A CSI volume's global directory: ``path`` is its globalmount."""

    driver: str
    path: Path
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def unique_name(self) -> str:
        return str(self.data.get("uniqueName") or "")


class KubeletDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods = root / "pods"
        self.csi_plugins = root / "plugins" / "kubernetes.io" / "csi"
        # A pod uid's directory belongs to one pod for ever: which one, once a record said so.
        self._owners: dict[str, str] = {}

    # -- layout (docs/control-plane.md, "Node paths") ------------------------------

    def global_mount(self, driver: str, handle: str) -> Path:
        return self.csi_plugins / driver / hashlib.sha256(handle.encode()).hexdigest() / "globalmount"

    def pod_volume(self, pod_uid: str, plugin: str, spec_name: str, *, block: bool) -> Path:
        """Validation keeps names to DNS labels; this checks it again, since a name that
        climbed out of the pods directory would be mounted where no scan finds it."""
        path = self.pods / pod_uid / (VOLUME_DEVICES if block else VOLUMES) / plugin_dir(plugin) / spec_name
        for part in (pod_uid, plugin_dir(plugin), spec_name):
            if not part or part in (".", "..") or "/" in part or "\x00" in part:
                raise ValueError(f"not a pod volume path component: {part!r}")
        return path

    @staticmethod
    def data_of(target: Path) -> Path:
        """The record of a pod volume: beside it, since a mount over the directory would hide it."""
        return target.with_name(target.name + DATA_SUFFIX)

    @staticmethod
    def device_data_of(global_mount: Path) -> Path:
        return global_mount.parent / DEVICE_DATA

    # -- records ------------------------------------------------------------------

    def read_pod_volume_data(self, target: Path) -> dict[str, Any]:
        return _read_json(self.data_of(target))

    def read_device_data(self, global_mount: Path) -> dict[str, Any]:
        return _read_json(self.device_data_of(global_mount))

    def write_pod_volume_data(self, target: Path, data: dict[str, Any]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.data_of(target), data)

    def write_device_data(self, global_mount: Path, data: dict[str, Any]) -> None:
        global_mount.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.device_data_of(global_mount), data)

    # -- the actual state of world, read from the disk ----------------------------

    def pod_volumes(self, pod_key: str | None = None) -> list[PodVolumeOnDisk]:
        """Every pod volume directory, block file or record under ``pods/*/{volumes,volumeDevices}/*/``;
        with ``pod_key``, only those recorded for that pod (``namespace/name``) — the
        directories of uids known to be another pod's are not read, so a pod's sync does not
        cost every other pod's volumes on the node."""
        out: list[PodVolumeOnDisk] = []
        owners: dict[str, str] = {}
        try:
            uids = sorted(os.listdir(self.pods))
        except (FileNotFoundError, NotADirectoryError):
            uids = []
        if pod_key is not None:
            # Names first, Paths only for the uids read: the directory holds every pod of the node.
            uids = [uid for uid in uids if self._owners.get(uid, pod_key) == pod_key]
        for pod in (self.pods / uid for uid in uids):
            for kind in (VOLUMES, VOLUME_DEVICES):
                for plugin in _children(pod / kind):
                    names: set[str] = set()
                    for entry in _children(plugin):
                        # A record, one a crash left half-written, or the volume's own directory.
                        name = entry.name.removesuffix(DATA_SUFFIX + _TMP) if entry.name.endswith(DATA_SUFFIX + _TMP) else entry.name
                        names.add(name.removesuffix(DATA_SUFFIX))
                    for name in sorted(names):
                        path = plugin / name
                        volume = PodVolumeOnDisk(
                            pod_uid=pod.name, plugin=plugin.name.replace("~", "/"), spec_name=name, path=path,
                            block=kind == VOLUME_DEVICES, data=_read_json(self.data_of(path)),
                        )
                        if volume.pod_key:
                            owners[pod.name] = volume.pod_key
                        out.append(volume)
        if pod_key is None:
            self._owners = owners  # a whole scan: uids gone from the disk are forgotten
            return out
        self._owners.update(owners)
        return [v for v in out if v.pod_key == pod_key]

    def devices(self) -> list[DeviceOnDisk]:
        """Every CSI volume's global directory under ``plugins/kubernetes.io/csi/<driver>/<sha256>/``."""
        out = []
        for driver in _children(self.csi_plugins):
            for volume in _children(driver):
                if volume.is_dir():
                    out.append(DeviceOnDisk(driver=driver.name, path=volume / "globalmount", data=_read_json(volume / DEVICE_DATA)))
        return out

    def on_disk(self, volume: PodVolumeOnDisk) -> bool:
        return os.path.lexists(volume.path) or self.data_of(volume.path).exists()

    # -- cleaning up after an unmount ---------------------------------------------

    def remove_pod_volume(self, volume: PodVolumeOnDisk) -> None:
        """Remove an unmounted pod volume's directory (or block file) and record, then every
        directory of the pod left empty. Only empty directories and our own files are removed:
        never anything recursively, so data behind a mount that is somehow still there is safe."""
        _remove_entry(volume.path)
        data = self.data_of(volume.path)
        data.with_name(data.name + _TMP).unlink(missing_ok=True)
        _remove_record(data)
        plugin = volume.path.parent
        for directory in (plugin, plugin.parent, plugin.parent.parent):
            if not _rmdir(directory):
                break

    def remove_device(self, device: DeviceOnDisk) -> None:
        _rmdir(device.path)
        data = self.device_data_of(device.path)
        data.with_name(data.name + _TMP).unlink(missing_ok=True)
        _remove_record(data)
        if _rmdir(device.path.parent):
            _rmdir(device.path.parent.parent)


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


# Records are written once (to a temporary name, then renamed) and removed after the
# unmount, so a record's (inode, mtime) names its content: scans read each one once.
_RECORDS: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


def _remove_record(path: Path) -> None:
    """Remove a record and forget it: a removed record is read no more, so nothing else
    would drop its cache entry (one per pod volume ever mounted)."""
    path.unlink(missing_ok=True)
    _RECORDS.pop(path, None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        _RECORDS.pop(path, None)
        return {}
    except OSError:
        return {}
    stamp = (st.st_ino, st.st_mtime_ns)
    cached = _RECORDS.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    data = _load_json(path)
    if data:
        if len(_RECORDS) > 100_000:
            _RECORDS.clear()
        _RECORDS[path] = (stamp, data)
    return data


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("unreadable volume record %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a record atomically (temporary file, fsync, rename) so a crash leaves the old or the new one."""
    tmp = path.with_name(path.name + _TMP)
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rmdir(directory: Path) -> bool:
    """Remove an empty directory; True if it is gone (or was never there)."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.ENOTDIR):
            log.warning("left %s in place: %s", directory, exc.strerror)
        return False
    return True


def _remove_entry(path: Path) -> None:
    """A pod volume's directory (rmdir), or a block volume's empty target file."""
    try:
        if path.is_symlink() or not path.is_dir():
            if path.is_symlink() or path.stat().st_size == 0:
                path.unlink()
            else:
                log.warning("left %s in place: not an empty file", path)
            return
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("left %s in place: %s", path, exc.strerror)
        return
    _rmdir(path)
