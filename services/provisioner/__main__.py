"""``python -m services.provisioner``: volumes, snapshots and pools behind the CSI
Controller service, and the standalone control plane's PV controller, external
provisioner and scheduler."""

from __future__ import annotations

from volplane import subjects
from services.attacher.adapters.projection import AttachmentsProjection, attachment_key
from volplane.commands import (
    CreateSnapshot,
    CreateVolume,
    DeleteSnapshot,
    DeleteVolume,
    ExpandVolume,
    GetCapacity,
    GetVolume,
    ListSnapshots,
    ListVolumes,
)
from volplane.nodes import SHARED_POOL, NodesProjection
from volplane.telemetry import gauge
from volplane.resources.informer import Informer
from volplane.resources.store import ObjectStore
from volplane.service import Runtime, run_service

from .adapters.pool import ImagePool, Pools
from .adapters.projection import SnapshotsProjection, VolumesProjection
from .csi.volumes import ProvisionerApp
from .csi.capacity import Capacity
from .controllers.external_provisioner import ExternalProvisioner
from .controllers.intree import HostPathPlugin
from .controllers.pv_controller import MANAGER, PVController
from services.scheduler.scheduler import Scheduler
from .csi.snapshots import SnapshotsApp


async def setup(rt: Runtime) -> None:
    nodes = await rt.follow(NodesProjection())
    volumes = await rt.follow(VolumesProjection())
    snapshots = await rt.follow(SnapshotsProjection())
    cfg = rt.cfg
    shared = ImagePool(cfg.shared_pool_dir, SHARED_POOL, "shared", cfg.shared_pool_capacity) if cfg.shared_pool_dir else None
    pools = Pools(shared, nodes.projection)  # type: ignore[arg-type]
    # The attacher's read model, followed here as the node registry is, so that
    # DeleteVolume can refuse a published volume without a round trip to the attacher.
    attachments = await rt.follow(AttachmentsProjection())

    async def published_on(volume_id: str) -> tuple[str, ...]:
        # The attachment's newest event says how far the read model must have come: one
        # direct read of the log, so a publish or unpublish acknowledged a moment ago counts.
        last = await rt.store.last(subjects.attachment(volume_id))
        if last is None:
            return ()
        await attachments.wait_for(last.seq)
        state = await attachments.get(attachment_key(volume_id))
        return state.nodes if state is not None else ()

    capacity = Capacity(pools, volumes, snapshots)
    app = ProvisionerApp(rt.store, volumes, capacity, snapshots, published_on)
    rt.samplers.append(lambda: sample_pools(capacity, volumes.projection))
    snaps = SnapshotsApp(rt.store, snapshots, volumes, pools)
    await app.recover()
    await snaps.recover()
    q = subjects.queue("provisioner")
    for subject, model, handler in (
        (subjects.CREATE_VOLUME, CreateVolume, app.create_volume),
        (subjects.DELETE_VOLUME, DeleteVolume, app.delete_volume),
        (subjects.EXPAND_VOLUME, ExpandVolume, app.expand_volume),
        (subjects.GET_VOLUME, GetVolume, app.get_volume),
        (subjects.LIST_VOLUMES, ListVolumes, app.list_volumes),
        (subjects.GET_CAPACITY, GetCapacity, app.get_capacity),
        (subjects.CREATE_SNAPSHOT, CreateSnapshot, snaps.create_snapshot),
        (subjects.DELETE_SNAPSHOT, DeleteSnapshot, snaps.delete_snapshot),
        (subjects.LIST_SNAPSHOTS, ListSnapshots, snaps.list_snapshots),
    ):
        await rt.bus.serve(subject, q, model, handler)  # type: ignore[arg-type]
    # After the handlers: the external provisioner's CreateVolume comes back here.
    await start_control_loops(rt)


async def start_control_loops(rt: Runtime) -> None:
    """The standalone control plane's loops that live here: the PV controller, the
    external-provisioner role and the minimal scheduler, over one informer."""
    informer = Informer(rt.store)
    pv_controller = PVController(informer, ObjectStore(rt.store, MANAGER), HostPathPlugin(rt.cfg.hostpath_dir))
    external = ExternalProvisioner(informer, ObjectStore(rt.store, "external-provisioner"), own_endpoint=rt.cfg.csi_endpoint)
    scheduler = Scheduler(informer, ObjectStore(rt.store, "scheduler"))
    await informer.start()
    rt.controllers.append(informer.stop)  # stopped last: controllers stop in reverse order
    for loop in (pv_controller, external, scheduler):
        await loop.start()
        rt.controllers.append(loop.stop)


POOL_BYTES = gauge("volplane_pool_bytes", "Bytes of each pool: its capacity, and what volumes and snapshots hold.", ("pool", "kind"))
POOL_VOLUMES = gauge("volplane_pool_volumes", "Live volumes in each pool.", ("pool",))


def sample_pools(capacity: Capacity, volumes: VolumesProjection) -> None:
    for pool in capacity.pools.all():
        POOL_BYTES.labels(pool.name, "capacity").set(pool.capacity)
        POOL_BYTES.labels(pool.name, "free").set(capacity.free(pool))
        POOL_BYTES.labels(pool.name, "volumes").set(volumes.used.get(pool.name, 0))
        POOL_VOLUMES.labels(pool.name).set(volumes.count.get(pool.name, 0))


def main() -> None:
    run_service("provisioner", setup)


if __name__ == "__main__":
    main()
