"""The authorizing writer of nodes' objects: NodeRestriction in front of the log.

    writes = NodeObjectWrites(rt.store)
    await rt.bus.serve_as_sender(subjects.NODE_OBJECT_WRITES, "apigw", AppendObjectEvent, writes.append)

A node asks on ``vp.cmd.objects.node.<node>.append`` (``volplane.resources.authz.NodeWrites``);
only that node's NATS user may publish there, so the subject's token is who asks. Each
append is checked against the object as the log has it at the very version the append is
conditioned on (``admit_node_write``), then appended with that condition: the pod the
check saw bound to the node is the pod the write changes, or the append loses the race
and the node reloads, as it would writing directly.
"""

from __future__ import annotations

import logging

from volplane import codec, subjects
from volplane.errors import ConcurrencyConflict, InvalidArgument, PermissionDenied
from volplane.events import Event
from volplane.eventstore import EventStore
from volplane.resources.authz import AppendObjectEvent, admit_node_write
from volplane.resources.events import OBJECT_EVENTS, RECORDED
from volplane.resources.kinds import Ref, ref_of_subject
from volplane.resources.store import ObjectStore

__all__ = ["NodeObjectWrites"]

log = logging.getLogger(__name__)
_RES, _REC = "vp.ev.res.", "vp.ev.rec."


class NodeObjectWrites:
    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._objects = ObjectStore(store, manager="node-authorizer")

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
        admitted = admit_node_write(node, ref, event, current, recorded=recorded)
        return await self._store.append(command.subject, admitted, expected=command.expected)


def _ref(subject: str, recorded: bool) -> Ref:
    try:
        return ref_of_subject(_RES + subject[len(_REC) :] if recorded else subject)
    except Exception as exc:  # noqa: BLE001 - Undecodable: no object can live there
        raise InvalidArgument(str(exc)) from None
