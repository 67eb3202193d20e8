"""``python -m services.apigw``: the CSI driver's front door, started by ``run_service``
like every service.

    VOLPLANE_APIGW_MODE=node python -m services.apigw   # a node plugin: Identity and Node only, no Redis

In "all" mode (the default; "controller" is the same) it also serves the Controller service,
and the resource API (volctl's server) on ``VOLPLANE_API_ENDPOINT``, its lists read from
the objects' projection in Redis. Its health is grpc.health.v1 on the CSI socket, SERVING
once the sockets listen; on SIGTERM the gRPC server stops first (calls in flight get 5 s),
then the NATS connection drains, then the projection and Redis close.
"""

from __future__ import annotations

import os
from typing import Any

# gRPC's legacy poller answers a unary call on this kind of host about a quarter
# faster than the EventEngine default (measured: 527 → 422 µs per round trip, see
# docs/performance.md); a deployment can still choose by setting the variable itself.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")

from volplane import subjects
from volplane.config import Config
from volplane.resources.authz import AppendObjectEvent
from volplane.resources.kinds import BY_NAME
from volplane.resources.projection import ObjectsProjection
from volplane.service import Runtime, run_service

from .access import Access
from .object_writes import NodeObjectWrites
from .resources import Resources
from .server import serve, serve_api

GRACE = 5.0  # seconds a gRPC call in flight may take to finish on stop
POD = BY_NAME["Pod"]


async def setup(rt: Runtime) -> None:
    if rt.cfg.apigw_controller:
        # The resource API: objects in the log, lists from their Redis projection.
        objects = ObjectsProjection()
        await rt.follow(objects)
        resources = Resources(rt.store, objects, Access.of(rt.cfg))
        api = await serve_api(rt.cfg, resources)
        rt.servers.append(lambda: api.stop(grace=GRACE))
        # Nodes' object writes, authorized (NodeRestriction) before they reach the log.
        async def pods_in(namespace: str) -> list[dict[str, Any]]:
            return (await objects.list_of(POD, lambda meta: meta.get("namespace") == namespace))[0]

        writes = NodeObjectWrites(rt.store, pods=pods_in)
        await rt.bus.serve_as_sender(subjects.NODE_OBJECT_WRITES, "apigw", AppendObjectEvent, writes.append)
    server = await serve(rt.cfg, rt.bus)
    rt.servers.append(lambda: server.stop(grace=GRACE))


def stateful(cfg: Config) -> bool:
    """Only the controller side follows the log; a node plugin needs no Redis."""
    return cfg.apigw_controller


def main() -> None:
    run_service("apigw", setup, per_node=True, stateful=stateful, bus_health=False)


if __name__ == "__main__":
    main()
