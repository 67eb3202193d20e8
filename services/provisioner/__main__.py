"""``python -m services.provisioner``: volumes, snapshots and pools behind the CSI
Controller service, and the standalone control plane's PV controller, external
provisioner and scheduler.

It opens no pool directory (``VOLPLANE_POOL_DIR`` and ``VOLPLANE_SHARED_POOL_DIR`` mean
nothing to it): the pools are learnt from the node registry, and their nodes act on their
images when asked (``adapters/pool.py``)."""

from __future__ import annotations

from services.attacher.adapters.projection import ATTACHMENTS, AttachmentsProjection
from services.scheduler.scheduler import Scheduler
from volplane import subjects
from volplane.aggregate import Repository
from volplane.commands import (
    CreateGroupSnapshot,
    CreateSnapshot,
    CreateVolume,
    DeleteGroupSnapshot,
    DeleteSnapshot,
    DeleteVolume,
    ExpandVolume,
    GetCapacity,
    GetGroupSnapshot,
    GetSnapshot,
    GetVolume,
    ListSnapshots,
    ListVolumes,
    ModifyVolume,
)
from volplane.nodes import NodesProjection
from volplane.resources.informer import Informer
from volplane.resources.store import ObjectStore
from volplane.service import Runtime, run_service
from volplane.telemetry import gauge

from .adapters.groups import GROUP_SNAPSHOTS, GroupSnapshotsProjection
from .adapters.pool import Pools
from .adapters.projection import SNAPSHOTS, VOLUMES, SnapshotsProjection, VolumesProjection
from .controllers.csi_snapshotter import MANAGER as SNAPSHOTTER
from .controllers.csi_snapshotter import CsiSnapshotter
from .controllers.external_provisioner import ExternalProvisioner
from .controllers.external_resizer import MANAGER as RESIZER
from .controllers.external_resizer import ExternalResizer
from .controllers.group_snapshot_controller import GroupSnapshotController
from .controllers.intree import HostPathPlugin
from .controllers.modify_controller import ModifyController
from .controllers.pv_controller import MANAGER, PVController
from .controllers.snapshot_controller import MANAGER as SNAPSHOT_CONTROLLER
from .controllers.snapshot_controller import SnapshotController
from .csi.capacity import Capacity
from .csi.completer import Completer
from .csi.group_snapshots import GroupSnapshotsApp, NodeCut
from .csi.snapshots import SnapshotsApp
from .csi.volumes import NodeIoLimits, ProvisionerApp


async def setup(rt: Runtime) -> None:
    nodes = NodesProjection()
    volumes_read, snapshots_read = VolumesProjection(), SnapshotsProjection()
    await rt.follow(nodes)
    volumes = Repository(rt.store, await rt.follow(volumes_read), VOLUMES)
    snapshots = Repository(rt.store, await rt.follow(snapshots_read), SNAPSHOTS)
    groups_read = GroupSnapshotsProjection()
    groups = Repository(rt.store, await rt.follow(groups_read), GROUP_SNAPSHOTS)
    pools = Pools(nodes, rt.bus)
    # The attacher's read model, followed here as the node registry is, so that
    # DeleteVolume can refuse a published volume without a round trip to the attacher.
    attachments = Repository(rt.store, await rt.follow(AttachmentsProjection()), ATTACHMENTS)

    async def published_on(volume_id: str) -> tuple[str, ...]:
        # As the log has it: one direct read of its newest event, so a publish or
        # unpublish acknowledged a moment ago counts.
        state = await attachments.reload(volume_id)
        return state.nodes if state is not None else ()

    capacity = Capacity(pools, volumes_read, snapshots_read)
    app = ProvisionerApp(volumes, volumes_read, capacity, snapshots, published_on, NodeIoLimits(rt.bus))
    rt.samplers.append(lambda: sample_pools(capacity, volumes_read))
    snaps = SnapshotsApp(snapshots, snapshots_read, volumes, pools)
    group_snaps = GroupSnapshotsApp(groups, groups_read, snaps, snapshots, volumes, pools, published_on, NodeCut(rt.bus))
    await app.recover()
    await snaps.recover()
    await group_snaps.recover()  # after the snapshots': a group finishes its own members
    # What waits for a node that did not answer (on start, or since) is tried again until it does.
    completer = Completer((app.complete, snaps.complete))
    await completer.start()
    rt.controllers.append(completer.stop)
    q = subjects.queue("provisioner")
    await rt.bus.serve(subjects.CREATE_VOLUME, q, CreateVolume, app.create_volume)
    await rt.bus.serve(subjects.DELETE_VOLUME, q, DeleteVolume, app.delete_volume)
    await rt.bus.serve(subjects.EXPAND_VOLUME, q, ExpandVolume, app.expand_volume)
    await rt.bus.serve(subjects.MODIFY_VOLUME, q, ModifyVolume, app.modify_volume)
    await rt.bus.serve(subjects.GET_VOLUME, q, GetVolume, app.get_volume)
    await rt.bus.serve(subjects.LIST_VOLUMES, q, ListVolumes, app.list_volumes)
    await rt.bus.serve(subjects.GET_CAPACITY, q, GetCapacity, app.get_capacity)
    await rt.bus.serve(subjects.CREATE_SNAPSHOT, q, CreateSnapshot, snaps.create_snapshot)
    await rt.bus.serve(subjects.DELETE_SNAPSHOT, q, DeleteSnapshot, snaps.delete_snapshot)
    await rt.bus.serve(subjects.LIST_SNAPSHOTS, q, ListSnapshots, snaps.list_snapshots)
    await rt.bus.serve(subjects.GET_SNAPSHOT, q, GetSnapshot, snaps.get_snapshot)
    await rt.bus.serve(subjects.CREATE_GROUP_SNAPSHOT, q, CreateGroupSnapshot, group_snaps.create_group)
    await rt.bus.serve(subjects.DELETE_GROUP_SNAPSHOT, q, DeleteGroupSnapshot, group_snaps.delete_group)
    await rt.bus.serve(subjects.GET_GROUP_SNAPSHOT, q, GetGroupSnapshot, group_snaps.get_group)
    # After the handlers: the external provisioner's CreateVolume comes back here.
    await start_control_loops(rt)


async def start_control_loops(rt: Runtime) -> None:
    """The standalone control plane's loops that live here: the PV controller, the
    external-provisioner and external-resizer roles, the minimal scheduler, and the
    snapshot controller and CSI snapshotter roles, over one informer."""
    informer = Informer(rt.store)
    pv_controller = PVController(informer, ObjectStore(rt.store, MANAGER), HostPathPlugin(rt.cfg.hostpath_dir))
    external = ExternalProvisioner(informer, ObjectStore(rt.store, "external-provisioner"), own_endpoint=rt.cfg.csi_endpoint)
    scheduler = Scheduler(informer, ObjectStore(rt.store, "scheduler"))
    resizer = ExternalResizer(informer, ObjectStore(rt.store, RESIZER), own_endpoint=rt.cfg.csi_endpoint)
    modifier = ModifyController(informer, ObjectStore(rt.store, RESIZER), own_endpoint=rt.cfg.csi_endpoint)
    snapshots = SnapshotController(informer, ObjectStore(rt.store, SNAPSHOT_CONTROLLER))
    group_snapshots = GroupSnapshotController(informer, ObjectStore(rt.store, SNAPSHOT_CONTROLLER))
    snapshotter = CsiSnapshotter(informer, ObjectStore(rt.store, SNAPSHOTTER), own_endpoint=rt.cfg.csi_endpoint)
    await informer.start()
    rt.controllers.append(informer.stop)  # stopped last: controllers stop in reverse order
    for loop in (pv_controller, external, scheduler, resizer, modifier, snapshots, group_snapshots, snapshotter):
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
