"""The authorizing writer of nodes' objects: NodeRestriction in front of the log.

    writes = NodeObjectWrites(rt.store, pods=pods_in)   # pods_in(namespace) -> that namespace's pods
    await rt.bus.serve_as_sender(subjects.NODE_OBJECT_WRITES, "apigw", AppendObjectEvent, writes.append)

A node asks on ``vp.cmd.objects.node.<node>.append`` (``volplane.resources.authz.NodeWrites``);
only that node's NATS user may publish there, so the subject's token is who asks. Each
append is checked against the object as the log has it at the very version the append is
conditioned on (``admit_node_write``), then appended with that condition: the pod the
check saw bound to the node is the pod the write changes, or the append loses the race
and the node reloads, as it would writing directly.

A claim's status (the kubelet's node expansion) is the node's to write only while a pod
bound to it uses the claim: ``pods`` lists a namespace's pods for that check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from volplane import codec, subjects
from volplane.errors import ConcurrencyConflict, InvalidArgument, PermissionDenied
from volplane.events import Event
from volplane.eventstore import EventStore
from volplane.resources.authz import AppendObjectEvent, admit_node_write
from volplane.resources.events import OBJECT_EVENTS, RECORDED
from volplane.resources.kinds import Ref, ref_of_subject
from volplane.resources.objects import Pod
from volplane.resources.store import ObjectStore

__all__ = ["NodeObjectWrites"]

log = logging.getLogger(__name__)
_RES, _REC = "vp.ev.res.", "vp.ev.rec."

# The pods of a namespace, as the caller's read model has them.
PodsIn = Callable[[str], Awaitable[list[dict[str, Any]]]]


class NodeObjectWrites:
    def __init__(self, store: EventStore, *, pods: PodsIn | None = None) -> None:
        self._store = store
        self._objects = ObjectStore(store, manager="node-authorizer")
        self._pods = pods

    async def append(self, subject: str, command: AppendObjectEvent) -> int:
        node = subjects.node_of_object_write(subject).replace("~", ".")
        try:
            return await self._append(node, command)
        except PermissionDenied as exc:
            # One line per refusal: a node asking for what it may not have is news.
            log.warning("refused a write of node %s: %s", node, exc.message, extra={"node": node})
            raise

    async def _append(self, node: str, command: AppendObjectEvent) -> int:
        recorded = command.subject.startswith(_REC)
        if not (recorded or command.subject.startswith(_RES)):
            raise PermissionDenied(f'node "{node}" may not append to {command.subject[:120]!r}: not an object subject')
        ref = _ref(command.subject, recorded)
        event: Event
        try:
            event = codec.decode(RECORDED, command.data) if recorded else codec.decode(OBJECT_EVENTS, command.data)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder says, it is not an event we keep
            raise InvalidArgument(f"{command.subject[:120]}: not an object event: {str(exc)[:200]}") from None
        current, head = await self._objects.read(ref)
        if not recorded and command.expected != head:
            # Checked against an older object than the one the node saw, or a newer one:
            # either way the node reloads, as when its append loses a race.
            raise ConcurrencyConflict(f"{ref.subject} moved past {command.expected}")
        claim_used = ref.kind.name == "PersistentVolumeClaim" and await self._claim_used(node, ref)
        admitted = admit_node_write(node, ref, event, current, recorded=recorded, claim_used=claim_used)
        return await self._store.append(command.subject, admitted, expected=command.expected)

    async def _claim_used(self, node: str, ref: Ref) -> bool:
        """Whether a pod bound to ``node`` uses the claim ``ref`` (Kubernetes' node authorizer
        follows the same edge, pod → claim, from the pods the node runs)."""
        if self._pods is None:
            return False
        return any(p.node_name == node and ref.name in {claim for _, claim in p.claims} for p in map(Pod, await self._pods(ref.namespace)))


def _ref(subject: str, recorded: bool) -> Ref:
    try:
        return ref_of_subject(_RES + subject[len(_REC) :] if recorded else subject)
    except Exception as exc:  # noqa: BLE001 - Undecodable: no object can live there
        raise InvalidArgument(str(exc)) from None
