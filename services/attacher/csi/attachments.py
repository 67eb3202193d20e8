"""The attacher's application layer: load → decide → append (ControllerPublish/Unpublish).

    app = AttacherApp(store, redis, runner, nodes, ProvisionerVolumes(bus))
    ctx = await app.publish(ControllerPublish(volume_id=vid, node_id="node-1", capability=Capability()))
    await app.unpublish(ControllerUnpublish(volume_id=vid))          # from every node

Publishing records a decision and nothing else (see ``domain.events``), so there is no
intent to finish on restart and no ``recover``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from volplane import subjects
from volplane.commands import Attachments, ControllerPublish, ControllerUnpublish, Done, GetAttachments, PublishContext
from volplane.errors import Aborted, ConcurrencyConflict, InvalidArgument, NotFound
from volplane.eventstore import EventStore
from volplane.ids import is_volume_id
from volplane.locks import KeyedLocks
from volplane.nodes import NodeInfo, NodesProjection
from volplane.projection import ProjectionRunner

from ..adapters.projection import attachment_key, node_key
from ..adapters.volumes import Volumes
from ..domain.attachment import AttachmentState, decide_publish, decide_unpublish, evolve

__all__ = ["AttacherApp"]

# Appends that lose the race to another replica reload the aggregate and decide again,
# at most this many times before the caller is told to retry (ABORTED).
_TRIES = 3


class AttacherApp:
    def __init__(
        self,
        store: EventStore,
        redis: aioredis.Redis,
        runner: ProjectionRunner[AttachmentState],
        nodes: ProjectionRunner[NodeInfo],
        volumes: Volumes,
    ) -> None:
        self._store = store
        self._redis = redis
        self._runner = runner
        self._nodes = nodes
        self._registry: NodesProjection = nodes.projection  # type: ignore[assignment]
        self._volumes = volumes
        self._locks = KeyedLocks("volume")
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
        async with self._locks.hold(vid):
            volume = await self._volumes.get(vid)  # NotFound travels back from the provisioner.
            node = await self._node(cmd.node_id)
            async with self._gate(node):
                state = await self._load(vid)
                for _ in range(_TRIES):
                    load = await self._node_load(node.node_id) if node.max_volumes > 0 else 0
                    event = decide_publish(state, cmd, volume=volume, node=node, node_load=load)
                    if event is None:
                        held = state.on(cmd.node_id) if state else None
                        assert held is not None
                        return PublishContext(context=held.context)
                    try:
                        seq = await self._store.append(subjects.attachment(vid), event, expected=state.version if state else 0)
                    except ConcurrencyConflict:
                        state = await self._reload(vid)
                        continue
                    self._note(evolve(state, event, seq))
                    return PublishContext(context=event.context)
        raise Aborted(f"volume {vid} is contended, retry")

    async def unpublish(self, cmd: ControllerUnpublish) -> Done:
        _require(volume_id=cmd.volume_id)
        if not is_volume_id(cmd.volume_id):
            return Done()  # Never ours, so on no node: the CSI spec asks for OK.
        vid = cmd.volume_id
        async with self._locks.hold(vid):
            state = await self._load(vid)
            if not decide_unpublish(state, cmd):
                # The projection may not have seen another replica's publish yet; an OK
                # here would leave that attachment behind for good, so "nothing to do"
                # is confirmed from the log itself.
                state = await self._reload(vid)
            for _ in range(_TRIES):
                events = decide_unpublish(state, cmd)
                if not events:
                    return Done()
                try:
                    for event in events:
                        seq = await self._store.append(subjects.attachment(vid), event, expected=state.version if state else 0)
                        state = evolve(state, event, seq)
                        self._note(state)
                except ConcurrencyConflict:
                    state = await self._reload(vid)
                    continue
                return Done()
        raise Aborted(f"volume {vid} is contended, retry")

    # -- queries ------------------------------------------------------------

    async def get_attachments(self, cmd: GetAttachments) -> Attachments:
        """The nodes each volume is published to; volumes on no node are left out."""
        ids = [v for v in dict.fromkeys(cmd.volume_ids) if is_volume_id(v)]
        if not ids:
            return Attachments(nodes={})
        await self._runner.settled()
        raws = await self._redis.mget([attachment_key(v) for v in ids])
        nodes: dict[str, tuple[str, ...]] = {}
        for vid, raw in zip(ids, raws):
            if isinstance(raw, bytes):  # The client returns bytes; its stubs also allow str.
                nodes[vid] = self._runner.projection.load(raw).nodes
        return Attachments(nodes=nodes)

    # -- steps --------------------------------------------------------------

    async def _node(self, node_id: str) -> NodeInfo:
        node = self._registry.nodes.get(node_id)
        if node is None:
            # It may have registered a moment ago: catch up with the log before saying no.
            await self._nodes.wait_for_log(await self._store.last_seq(), timeout=10)
            node = self._registry.nodes.get(node_id)
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
        await self._runner.settled()
        return int(await self._redis.scard(node_key(node_id)))

    def _note(self, state: AttachmentState) -> None:
        self._runner.note(attachment_key(state.volume_id), state if state.attachments else None, state.version)

    async def _load(self, vid: str) -> AttachmentState | None:
        return await self._runner.get(attachment_key(vid))

    async def _reload(self, vid: str) -> AttachmentState | None:
        """The aggregate as of the log's newest event for it: one direct read of the log,
        then the read model once it has applied that event (a volume on no node has no
        key, but its history still fixes the version the next append must name)."""
        last = await self._store.last(subjects.attachment(vid))
        if last is None:
            return None
        await self._runner.wait_for(last.seq)
        state = await self._runner.get(attachment_key(vid))
        return state if state is not None else AttachmentState(volume_id=vid, attachments=(), version=last.seq)


def _require(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise InvalidArgument(f"{name}: required")
