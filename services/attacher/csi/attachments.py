"""The attacher's application layer: load → decide → append (ControllerPublish/Unpublish).

    app = AttacherApp(attachments, attachments_projection, nodes_projection, ProvisionerVolumes(bus))
    ctx = await app.publish(ControllerPublish(volume_id=vid, node_id="node-1", capability=Capability()))
    await app.unpublish(ControllerUnpublish(volume_id=vid))          # from every node

``attachments`` is the aggregate's repository (``volplane.aggregate``). Publishing
records a decision and nothing else (see ``domain.events``), so there is no intent to
finish on restart and no ``recover``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from volplane.aggregate import Repository
from volplane.commands import Attachments, ControllerPublish, ControllerUnpublish, Done, GetAttachments, PublishContext
from volplane.errors import InvalidArgument, NotFound
from volplane.ids import is_volume_id
from volplane.nodes import NodeInfo, NodesProjection

from ..adapters.projection import AttachmentsProjection
from ..adapters.volumes import Volumes
from ..domain.attachment import AttachmentState, decide_publish, decide_unpublish
from ..domain.events import AttachmentEvent

__all__ = ["AttacherApp"]


class AttacherApp:
    def __init__(
        self,
        attachments: Repository[AttachmentState, AttachmentEvent],
        read: AttachmentsProjection,
        nodes: NodesProjection,
        volumes: Volumes,
    ) -> None:
        self._attachments = attachments
        self._read = read
        self._nodes = nodes
        self._volumes = volumes
        # Per node, only for nodes with a max_volumes: publishes of different volumes to
        # one node queue here so that counting and appending cannot interleave. Kept for
        # the life of the process; there are as few as there are nodes.
        self._gates: dict[str, asyncio.Lock] = {}

    # -- commands -----------------------------------------------------------

    async def publish(self, cmd: ControllerPublish) -> PublishContext:
        _require(volume_id=cmd.volume_id, node_id=cmd.node_id)
        if not is_volume_id(cmd.volume_id):
            raise NotFound(f"volume {cmd.volume_id!r} does not exist")
        vid = cmd.volume_id
        async with self._attachments.locks.hold(vid):
            volume = await self._volumes.get(vid)  # NotFound travels back from the provisioner.
            node = await self._node(cmd.node_id)

            async def publish(state: AttachmentState | None) -> PublishContext:
                load = await self._node_load(node.node_id) if node.max_volumes > 0 else 0
                event = decide_publish(state, cmd, volume=volume, node=node, node_load=load)
                if event is None:
                    held = state.on(cmd.node_id) if state else None
                    assert held is not None
                    return PublishContext(context=held.context)
                await self._attachments.append(vid, state, event)
                return PublishContext(context=event.context)

            async with self._gate(node):
                return await self._attachments.retry(vid, await self._attachments.load(vid), publish, what=f"volume {vid}")

    async def unpublish(self, cmd: ControllerUnpublish) -> Done:
        _require(volume_id=cmd.volume_id)
        if not is_volume_id(cmd.volume_id):
            return Done()  # Never ours, so on no node: the CSI spec asks for OK.
        vid = cmd.volume_id

        async def unpublish(state: AttachmentState | None) -> Done:
            for event in decide_unpublish(state, cmd):
                state = await self._attachments.append(vid, state, event)
            return Done()

        async with self._attachments.locks.hold(vid):
            state = await self._attachments.load(vid)
            if not decide_unpublish(state, cmd):
                # The projection may not have seen another replica's publish yet; an OK
                # here would leave that attachment behind for good, so "nothing to do"
                # is confirmed from the log itself.
                state = await self._attachments.reload(vid)
            return await self._attachments.retry(vid, state, unpublish, what=f"volume {vid}")

    # -- queries ------------------------------------------------------------

    async def get_attachments(self, cmd: GetAttachments) -> Attachments:
        """The nodes each volume is published to; volumes on no node are left out."""
        ids = [v for v in dict.fromkeys(cmd.volume_ids) if is_volume_id(v)]
        return Attachments(nodes=await self._read.nodes_of(ids))

    # -- steps --------------------------------------------------------------

    async def _node(self, node_id: str) -> NodeInfo:
        node = await self._nodes.find(node_id)
        if node is None:
            raise NotFound(f"node {node_id!r} is not registered")
        return node

    @asynccontextmanager
    async def _gate(self, node: NodeInfo) -> AsyncIterator[None]:
        if node.max_volumes <= 0:
            yield
            return
        async with self._gates.setdefault(node.node_id, asyncio.Lock()):
            yield

    async def _node_load(self, node_id: str) -> int:
        """How many volumes the node holds, counting every publish this process made.

        Publishes to the node by other replicas that their runner has not applied yet are
        not seen, so two replicas may together exceed a node's max_volumes by what they
        have in flight (a known shortcut; the limit is not part of any aggregate).
        """
        return await self._read.count_on(node_id)


def _require(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise InvalidArgument(f"{name}: required")
