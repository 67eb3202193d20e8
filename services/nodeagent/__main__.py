"""``python -m services.nodeagent``: the volume manager of one node (``VOLPLANE_NODE_ID``).

On start it creates its local pool directory, announces itself (id, topology, pools) in the
node registry, finishes what a crash left undone, and then serves its node commands; then
it registers the Node object and starts the volume manager (``volumemanager.py``).

``VOLPLANE_REQUIRE_ATTACHMENT=0`` stages volumes without asking the attacher whether they
are published to this node (default 1: ask).
"""

from __future__ import annotations

from volplane import subjects
from volplane.aggregate import Repository
from volplane.commands import (
    FreezeVolumes,
    GetNodeLimits,
    GetVolumeStats,
    NodeExpand,
    PublishVolume,
    StageVolume,
    ThawVolumes,
    UnpublishVolume,
    UnstageVolume,
)
from volplane.config import Config
from volplane.nodes import SHARED_POOL, TOPOLOGY_KEY, NodeRegistered, PoolSpec, register
from volplane.resources.informer import Informer
from volplane.resources.store import ObjectStore
from volplane.service import Runtime, run_service

from .adapters.attacher import attacher_check
from .adapters.projection import NodeProjection, node_volumes
from .adapters.storage import HostStorage
from .controllers.volumemanager import VolumeManager
from .csi.freeze import Freezer
from .csi.volumes import NodeApp


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
    app = NodeApp(cfg, volumes, projection, host, is_published=attacher_check(rt.bus, node) if cfg.require_attachment else None)
    # The registry holds what the node can really hold (csi/limits.py), as NodeGetInfo reports it.
    await register(rt.store, registration(cfg).model_copy(update={"max_volumes": app.limit.limit}))
    freezer = Freezer(volumes, host, [str(d) for d in (cfg.pool_dir, cfg.shared_pool_dir) if d is not None])
    await freezer.thaw_all()  # A group snapshot's freeze outlives a crash of this process: undo it first.
    await app.recover()
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
    await start_volume_manager(rt)


async def start_volume_manager(rt: Runtime) -> VolumeManager:
    """The kubelet's storage part over the standalone control plane's objects (docs/control-plane.md):
    it calls the CSI driver like a kubelet does, so our own NodeStage/NodePublish reach the
    handlers above through apigw."""
    cfg = rt.cfg
    informer = Informer(rt.store)
    objects = ObjectStore(rt.store, manager=f"kubelet/{cfg.node_id}")
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
