"""Which CSI endpoint serves a driver, for the loops that call drivers.

    endpoint = controller_endpoint(informer, "csi.volplane.io", cfg.csi_endpoint)

volplane's own driver is served by this process's configured endpoint unless a CSIDriver
object says otherwise; any other driver needs a CSIDriver object whose annotation names
its endpoint (``volplane.io/controller-endpoint``, ``volplane.io/node-endpoint`` with an
optional ``{node}``). None: nobody here serves that driver.
"""

from __future__ import annotations

from typing import Any

from volplane.resources.informer import Informer
from volplane.resources.kinds import BY_NAME
from volplane.resources.names import ANN_CONTROLLER_ENDPOINT, ANN_NODE_ENDPOINT, OWN_DRIVER

__all__ = ["controller_endpoint", "node_endpoint", "attach_required", "provisioner_driver", "ANN_PROVISIONER_NAMES"]

# A CSIDriver may answer to provisioner names besides its own (comma-separated), the way
# a standalone external provisioner is named by a flag: the seed's StorageClass names
# ``example.com/nfs``, which cannot be a CSI driver's name ('/' is not allowed in one).
ANN_PROVISIONER_NAMES = "volplane.io/provisioner-names"

_CSIDRIVER = BY_NAME["CSIDriver"]


def _annotations(informer: Informer, driver: str) -> dict[str, str] | None:
    obj = informer.get(_CSIDRIVER, driver)
    return None if obj is None else (obj["metadata"].get("annotations") or {})


def controller_endpoint(informer: Informer, driver: str, own: str) -> str | None:
    ann = _annotations(informer, driver)
    if ann and ann.get(ANN_CONTROLLER_ENDPOINT):
        return ann[ANN_CONTROLLER_ENDPOINT]
    return own if driver == OWN_DRIVER else None


def node_endpoint(informer: Informer, driver: str, node: str, own: str) -> str | None:
    ann = _annotations(informer, driver)
    if ann and ann.get(ANN_NODE_ENDPOINT):
        return ann[ANN_NODE_ENDPOINT].replace("{node}", node)
    return own if driver == OWN_DRIVER else None


def attach_required(informer: Informer, driver: str) -> bool:
    """A driver without a CSIDriver object needs attaching, as in Kubernetes."""
    obj: dict[str, Any] | None = informer.get(_CSIDRIVER, driver)
    return obj is None or (obj.get("spec") or {}).get("attachRequired", True) is not False


def provisioner_driver(informer: Informer, provisioner: str, own: str) -> tuple[str, str] | None:
    """(CSI driver name, controller endpoint) serving a StorageClass's provisioner name."""
    endpoint = controller_endpoint(informer, provisioner, own)
    if endpoint is not None:
        return provisioner, endpoint
    for obj in informer.list(_CSIDRIVER):
        names = (obj["metadata"].get("annotations") or {}).get(ANN_PROVISIONER_NAMES, "")
        if provisioner in {n.strip() for n in names.split(",")}:
            driver = obj["metadata"]["name"]
            endpoint = controller_endpoint(informer, driver, own)
            if endpoint is not None:
                return driver, endpoint
    return None
