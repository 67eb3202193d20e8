"""``python -m services.nodeagent``: the volume manager of one node (``VOLPLANE_NODE_ID``)."""

from __future__ import annotations

from volplane import subjects
from volplane.commands import PublishVolume, StageVolume, UnpublishVolume, UnstageVolume
from volplane.projection import ProjectionRunner
from volplane.service import Runtime, run_service

from .adapters.projection import NodeProjection
from .adapters.storage import HostStorage
from .app import NodeApp


async def setup(rt: Runtime) -> None:
    node = rt.cfg.node_id
    runner = ProjectionRunner(rt.redis, rt.store, NodeProjection(node))
    await runner.start()
    rt.closers.append(runner.stop)
    app = NodeApp(rt.cfg, rt.store, runner, HostStorage())
    await app.recover()
    q = subjects.queue("nodeagent", node)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_STAGE), q, StageVolume, app.stage)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_UNSTAGE), q, UnstageVolume, app.unstage)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_PUBLISH), q, PublishVolume, app.publish)
    await rt.bus.serve(subjects.node_command(node, subjects.NODE_UNPUBLISH), q, UnpublishVolume, app.unpublish)


def main() -> None:
    run_service("nodeagent", setup, per_node=True)


if __name__ == "__main__":
    main()
