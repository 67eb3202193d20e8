"""Asks the attacher whether a volume is published (ControllerPublishVolume) to this node.

    is_published = attacher_check(bus, "node-1")
    await is_published(volume_id)      # True / False; Unavailable when no attacher answers

NodeStage asks before it stages a volume anew, so that a CO cannot use a volume on a node
the controller did not attach it to (the attacher keeps a single-node volume on one node).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from volplane import subjects
from volplane.bus import Bus
from volplane.commands import Attachments, GetAttachments

TIMEOUT_S = 10.0


def attacher_check(bus: Bus, node: str, timeout: float = TIMEOUT_S) -> Callable[[str], Awaitable[bool]]:
    async def is_published(volume_id: str) -> bool:
        reply = await bus.request(subjects.GET_ATTACHMENTS, GetAttachments(volume_ids=(volume_id,)), timeout=timeout)
        return node in Attachments.model_validate(reply).nodes.get(volume_id, ())

    return is_published
