"""``python -m services.nodeagent``: the volume manager of one node (``VOLPLANE_NODE_ID``).

On start it creates its local pool directory, announces itself (id, topology, pools) in the
node registry, finishes what a crash left undone, and then serves its node commands and its
pools' image commands (``csi/pool.py``: the provisioner decides, this node acts on its own
pool's images, and with the other nodes that have it on the shared pool's); then it
registers the Node object and starts the volume manager (``volumemanager.py``).

``VOLPLANE_IO_CGROUP`` (default ``volplane``) is the cgroup it writes volumes' I/O limits into
(csi/iolimits.py). ``VOLPLANE_REQUIRE_ATTACHMENT=0`` stages volumes without asking the attacher whether they
are published to this node (default 1: ask).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from volplane import subjects
from volplane.aggregate import Repository
from volplane.bus import Bus
from volplane.commands import (
    FreezeVolumes,
    GetNodeLimits,
    GetVolumeStats,
    GrowImage,
    MakeImage,
    NodeExpand,
    PublishVolume,
    RemoveImage,
    SendImage,
    SetIoLimits,
    SnapshotImage,
    StageVolume,
    StatImage,
    ThawVolumes,
    UnpublishVolume,
    UnstageVolume,
)
from volplane.config import Config
from volplane.nodes import SHARED_POOL, TOPOLOGY_KEY, NodeRegistered, PoolSpec, register
from volplane.resources.authz import NodeWrites, kubelet
from volplane.resources.informer import Informer
from volplane.resources.store import ObjectStore
from volplane.service import Runtime, run_service

from .adapters.attacher import attacher_check
from .adapters.iolimits import IoCgroup, IoLimitError, provisioner_limits
from .adapters.pool import ImagePool
from .adapters.projection import NodeProjection, node_volumes
from .adapters.storage import HostStorage
from .controllers.volumemanager import VolumeManager
from .csi.freeze import Freezer
from .csi.iolimits import IoLimiter
from .csi.pool import BusCopy, NodePools
from .csi.volumes import NodeApp

log = logging.getLogger(__name__)
C = TypeVar("C", bound=BaseModel)


def registration(cfg: Config) -> NodeRegistered:
    """What this node announces: ``registration(cfg).pools[0].name == cfg.node_id``."""
    pools = [PoolSpec(name=cfg.pool_name, kind="local", directory=str(cfg.pool_dir), capacity=cfg.pool_capacity)]
    if cfg.shared_pool_dir is not None:
        pools.append(PoolSpec(name=SHARED_POOL, kind="shared", directory=str(cfg.shared_pool_dir), capacity=cfg.shared_pool_capacity))
    return NodeRegistered(node_id=cfg.node_id, topology={TOPOLOGY_KEY: cfg.node_id}, max_volumes=cfg.max_volumes_per_node, pools=tuple(pools))


async def setup(rt: Runtime) -> None:
    cfg = rt.cfg
    node = cfg.node_id
    cfg.pool_dir.mkdir(parents=True, exist_ok=True)
    projection = NodeProjection(node)
    volumes = Repository(rt.store, await rt.follow(projection), node_volumes(projection))
    host = HostStorage()
    io = IoLimiter(volumes, io_cgroup(cfg), provisioner_limits(rt.bus))
    app = NodeApp(cfg, volumes, projection, host, is_published=attacher_check(rt.bus, node) if cfg.require_attachment else None, io=io)
    # The registry holds what the node can really hold (csi/limits.py), as NodeGetInfo reports it.
    await register(rt.store, registration(cfg).model_copy(update={"max_volumes": app.limit.limit}))
    # Before its own recovery: a stage it finishes may ask the provisioner, which may ask this pool.
    await serve_pools(rt, node_pools(cfg, rt.bus))
    freezer = Freezer(volumes, host, [str(d) for d in (cfg.pool_dir, cfg.shared_pool_dir) if d is not None])
    await freezer.thaw_all()  # A group snapshot's freeze outlives a crash of this process: undo it first.
    await app.recover()
    # A reboot or a cleared cgroup loses the kernel's rules; the log keeps them (csi/iolimits.py).
    await io.reapply(host.loop_backing_files())
    q = subjects.queue("nodeagent", node)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_STAGE), q, StageVolume, app.stage)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_UNSTAGE), q, UnstageVolume, app.unstage)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_PUBLISH), q, PublishVolume, app.publish)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_UNPUBLISH), q, UnpublishVolume, app.unpublish)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_EXPAND), q, NodeExpand, app.expand)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_STATS), q, GetVolumeStats, app.volume_stats)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_FREEZE), q, FreezeVolumes, freezer.freeze)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_THAW), q, ThawVolumes, freezer.thaw)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_LIMITS), q, GetNodeLimits, app.limits)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_IO_LIMITS), q, SetIoLimits, io.set_limits)
    await start_volume_manager(rt)


def node_pools(cfg: Config, bus: Bus | None = None) -> NodePools:
    """The pools whose images this node works on: its own, and the shared one if it has it;
    with ``bus``, restores and clones from other nodes' pools come over it (csi/pool.py)."""
    node = cfg.node_id
    pools = [ImagePool(cfg.pool_dir, cfg.pool_name, "local", cfg.pool_capacity, node, tag=node)]
    if cfg.shared_pool_dir is not None:
        pools.append(ImagePool(cfg.shared_pool_dir, SHARED_POOL, "shared", cfg.shared_pool_capacity, tag=node))
    return NodePools(node, pools, BusCopy(bus) if bus is not None else None)


async def serve_pools(rt: Runtime, pools: NodePools) -> None:
    """Its own pool's commands on its own subjects; the shared pool's in one queue group of
    every node that has it, so that one node performs each (docs/decisions.md)."""
    pools.sweep()
    node = rt.cfg.node_id
    shared = any(p.kind == "shared" for p in pools.pools)

    async def serve(verb: str, model: type[C], handler: Callable[[C], Awaitable[Any]]) -> None:
        await rt.bus.serve(subjects.node_pool_command(node, verb), subjects.queue("nodeagent", node), model, handler)
        if shared:
            await rt.bus.serve(subjects.shared_pool_command(verb), subjects.SHARED_POOL_QUEUE, model, handler)

    await serve(subjects.POOL_MAKE, MakeImage, pools.make)
    await serve(subjects.POOL_GROW, GrowImage, pools.grow)
    await serve(subjects.POOL_SNAPSHOT, SnapshotImage, pools.snapshot)
    await serve(subjects.POOL_REMOVE, RemoveImage, pools.remove)
    await serve(subjects.POOL_STAT, StatImage, pools.stat)
    # Other nodes' requests for this node's images (a restore or clone onto their pools).
    await rt.bus.serve(subjects.node_pool_command(node, subjects.POOL_SEND), subjects.queue("nodeagent", node), SendImage, pools.send)


def io_cgroup(cfg: Config) -> IoCgroup | None:
    """Where this node writes volumes' I/O limits (``VOLPLANE_IO_CGROUP``); None on a host
    without a block I/O controller, where a volume with limits is refused."""
    try:
        return IoCgroup.detect(cfg.io_cgroup)
    except (IoLimitError, OSError) as exc:
        log.warning("volumes' I/O limits cannot be enforced on this node: %s", exc)
        return None


async def start_volume_manager(rt: Runtime) -> VolumeManager:
    """The kubelet's storage part over the standalone control plane's objects (docs/control-plane.md):
    it calls the CSI driver like a kubelet does, so our own NodeStage/NodePublish reach the
    handlers above through apigw."""
    cfg = rt.cfg
    informer = Informer(rt.store)
    # Its Node and its pods' status are written through apigw, which checks each write
    # against NodeRestriction (volplane.resources.authz): a node's NATS user may not
    # append to object subjects itself.
    objects = ObjectStore(rt.store, manager=kubelet(cfg.node_id), append=NodeWrites(rt.bus, cfg.node_id).append)
    manager = VolumeManager(informer, objects, cfg.kubelet_dir, node=cfg.node_id, csi_endpoint=cfg.csi_endpoint)
    informer.on_change(manager.on_change)
    await informer.start()
    rt.controllers.append(informer.stop)
    await manager.start()
    rt.controllers.append(manager.stop)
    return manager


def main() -> None:
    run_service("nodeagent", setup, per_node=True)


if __name__ == "__main__":
    main()
