"""``python -m services.attacher``: the attach/detach side — ControllerPublish/Unpublish.

It follows two projections: the node registry (does a node exist, its topology and
max_volumes) and its own attachments (which nodes hold each volume). In the standalone
control plane it also runs the AD controller and the external-attacher role
(``controlplane.py``), which reach ControllerPublish through a real CSI client.
"""

from __future__ import annotations

from volplane import subjects
from volplane.aggregate import Repository
from volplane.commands import ControllerPublish, ControllerUnpublish, GetAttachments
from volplane.nodes import NodesProjection
from volplane.service import Runtime, run_service

from .adapters.projection import ATTACHMENTS, AttachmentsProjection
from .adapters.volumes import ProvisionerVolumes
from .controllers.controlplane import start_control_loops
from .csi.attachments import AttacherApp


async def setup(rt: Runtime) -> None:
    nodes, attachments = NodesProjection(), AttachmentsProjection()
    await rt.follow(nodes)
    repository = Repository(rt.store, await rt.follow(attachments), ATTACHMENTS)
    app = AttacherApp(repository, attachments, nodes, ProvisionerVolumes(rt.bus))
    q = subjects.queue("attacher")
    await rt.bus.serve(subjects.CONTROLLER_PUBLISH, q, ControllerPublish, app.publish)
    await rt.bus.serve(subjects.CONTROLLER_UNPUBLISH, q, ControllerUnpublish, app.unpublish)
    await rt.bus.serve(subjects.GET_ATTACHMENTS, q, GetAttachments, app.get_attachments)
    # After the command handlers: the loops' CSI calls come back to them through apigw.
    await start_control_loops(rt)


def main() -> None:
    run_service("attacher", setup)


if __name__ == "__main__":
    main()
