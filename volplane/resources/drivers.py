"""Which CSI endpoint serves a driver, for the loops that call drivers.

    endpoint = controller_endpoint(informer, "csi.volplane.io", cfg.csi_endpoint)

volplane's own driver is served by this process's configured endpoint unless a CSIDriver
object says otherwise; any other driver needs a CSIDriver object whose annotation names
its endpoint (``volplane.io/controller-endpoint``, ``volplane.io/node-endpoint`` with an
optional ``{node}``). None: nobody here serves that driver.
"""

from __future__ import annotations

from volplane.resources.informer import Informer
from volplane.resources.names import ANN_CONTROLLER_ENDPOINT, ANN_NODE_ENDPOINT, OWN_DRIVER
from volplane.resources.objects import CSIDriver

__all__ = ["ANN_PROVISIONER_NAMES", "attach_required", "controller_endpoint", "node_endpoint", "provisioner_driver"]

# A CSIDriver may answer to provisioner names besides its own (comma-separated), the way
# a standalone external provisioner is named by a flag: the seed's StorageClass names
# ``example.com/nfs``, which cannot be a CSI driver's name ('/' is not allowed in one).
ANN_PROVISIONER_NAMES = "volplane.io/provisioner-names"


def _annotations(informer: Informer, driver: str) -> dict[str, str] | None:
    obj = CSIDriver.get(informer.get, driver)
    return None if obj is None else obj.annotations


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
    obj = CSIDriver.get(informer.get, driver)
    return obj is None or obj.attach_required


def provisioner_driver(informer: Informer, provisioner: str, own: str) -> tuple[str, str] | None:
    """(CSI driver name, controller endpoint) serving a StorageClass's provisioner name."""
    endpoint = controller_endpoint(informer, provisioner, own)
    if endpoint is not None:
        return provisioner, endpoint
    for obj in map(CSIDriver, informer.list(CSIDriver.KIND)):
        names = obj.annotations.get(ANN_PROVISIONER_NAMES, "")
        if provisioner in {n.strip() for n in names.split(",")}:
            driver = obj.name
            endpoint = controller_endpoint(informer, driver, own)
            if endpoint is not None:
                return driver, endpoint
    return None
