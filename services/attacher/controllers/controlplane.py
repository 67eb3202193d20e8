"""The attacher's share of the standalone control plane: the AD controller and the
external-attacher role, over one informer.

    await start_control_loops(rt)       # in the service's setup; stopped with rt.controllers
"""

from __future__ import annotations

from volplane.resources.informer import Informer
from volplane.resources.store import ObjectStore
from volplane.service import Runtime

from . import adcontroller, external_attacher
from .index import Index

__all__ = ["start_control_loops"]


async def start_control_loops(rt: Runtime) -> None:
    informer = Informer(rt.store)
    # Every handler is registered before the informer replays the log, so the index and
    # the loops' queues see every object that already exists.
    index = Index(informer)
    ad = adcontroller.AttachDetachController(informer, index, ObjectStore(rt.store, manager=adcontroller.MANAGER))
    attacher = external_attacher.ExternalAttacher(
        informer, index, ObjectStore(rt.store, manager=external_attacher.MANAGER), own_endpoint=rt.cfg.csi_endpoint
    )
    await informer.start()
    rt.controllers.append(informer.stop)
    for loop in (ad.loop, attacher.loop):
        await loop.start()
        rt.controllers.append(loop.stop)
