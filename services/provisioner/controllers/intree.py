"""In-tree volume plugins the PV controller calls directly (``kubernetes.io/`` provisioners).

- ``kubernetes.io/host-path``: provisions a directory under the configured root
  (VOLPLANE_HOSTPATH_DIR), deletes and recycles only below that root — Kubernetes' own
  host-path plugin likewise only works under /tmp, because it is for one-machine setups.
- ``kubernetes.io/no-provisioner``: never provisions; claims wait for a PV.
- Recycling (scrub, then the PV is Available again) works for host-path volumes under
  the root; NFS would need the share mounted somewhere, so it fails (the PV goes Failed).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from volplane.resources.objects import Obj, PersistentVolume

__all__ = ["HOST_PATH", "NO_PROVISIONER", "HostPathPlugin", "PluginError"]

HOST_PATH = "kubernetes.io/host-path"
NO_PROVISIONER = "kubernetes.io/no-provisioner"


class PluginError(Exception):
    """An in-tree plugin could not do what was asked; the message is for the event."""


class HostPathPlugin:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def provision(self, name: str) -> str:
        """Make the volume's directory; returns its path (idempotent)."""
        path = self.root / name
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        return str(path)

    def _own(self, pv: Obj, verb: str) -> Path:
        host = (PersistentVolume(pv).spec.get("hostPath") or {}).get("path")
        if not host:
            raise PluginError(f"no {verb}er volume plugin matched: the volume is not a hostPath volume")
        path = Path(host).resolve()
        if path == self.root.resolve() or self.root.resolve() not in path.parents:
            raise PluginError(f"host_path {verb}er only supports paths under {self.root}, not {host}")
        return path

    async def delete(self, pv: Obj) -> None:
        path = self._own(pv, "delet")
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def recycle(self, pv: Obj) -> None:
        """Scrub: remove everything inside the directory, keep the directory."""
        path = self._own(pv, "recycl")

        def scrub() -> None:
            if not path.is_dir():
                raise PluginError(f"cannot recycle {path}: not a directory")
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

        await asyncio.to_thread(scrub)
