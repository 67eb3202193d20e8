"""Writing objects straight into the log, as a controller would — for tests that stage a
half-done state (a bind a crash interrupted) without going through the API.

    direct_patch(stack, PV_REF, {"status": {"phase": "Bound"}}, manager="persistentvolume-controller")
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from devstack.launcher import Stack
from volplane.eventstore import EventStore
from volplane.resources.kinds import ref, resolve
from volplane.resources.store import ObjectStore


def _admin_url(stack: Stack) -> str:
    return stack.nats_url_of("admin")


async def _with_store(stack: Stack, manager: str, action: Any) -> Any:
    nc = await nats.connect(_admin_url(stack), tls=stack.client_tls())
    try:
        return await action(ObjectStore(EventStore(nc.jetstream(timeout=10)), manager))
    finally:
        await nc.close()


def direct_patch(stack: Stack, kind: str, name: str, patch: dict[str, Any], *, namespace: str = "", manager: str) -> dict[str, Any]:
    r = ref(resolve(kind), namespace, name)
    return asyncio.run(_with_store(stack, manager, lambda objects: objects.patch(r, patch, reason="test")))


def direct_create(stack: Stack, obj: dict[str, Any], *, manager: str) -> dict[str, Any]:
    return asyncio.run(_with_store(stack, manager, lambda objects: objects.create(obj)))
