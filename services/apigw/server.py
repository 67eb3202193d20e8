"""apigw's gRPC servers: the CSI services plus grpc.health.v1, on a unix socket and
optionally TCP; and the resource API, a server of its own behind its caller check.

    api = await serve_api(cfg, resources)          # the resource API (services.apigw.access)
    server = await serve(cfg, bus)                 # listening and SERVING when it returns
    await server.stop(grace=5); await api.stop(5)
"""

from __future__ import annotations

import grp
import logging
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from volplane.bus import Bus
from volplane.config import Config
from volplane.csi import csi_pb2_grpc, resources_pb2_grpc
from volplane.telemetry import grpc_server_interceptors

from .access import PeerFront
from .controller import Controller
from .group_controller import GroupController
from .identity import Identity
from .node import Node
from .resources import Resources
from .telemetry import MetricsInterceptor

log = logging.getLogger(__name__)

# Both servers' options: no SO_REUSEPORT (a second apigw must not share a socket), and no
# BDP probing — these sockets carry small unary calls, and a probe is a PING frame and its
# acknowledgement on top of the call (docs/performance.md, "Controller operations").
SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)]


async def serve(cfg: Config, bus: Bus) -> grpc.aio.Server:
    # The span interceptor first (outermost): the metrics one runs inside the call's span.
    interceptors = [*grpc_server_interceptors(), MetricsInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    controller = cfg.apigw_controller
    csi_pb2_grpc.add_IdentityServicer_to_server(Identity(bus.nc, controller=controller), server)
    if controller:
        csi_pb2_grpc.add_ControllerServicer_to_server(Controller(bus), server)
        csi_pb2_grpc.add_GroupControllerServicer_to_server(GroupController(bus), server)
    csi_pb2_grpc.add_NodeServicer_to_server(Node(bus, cfg.node_id, cfg.max_volumes_per_node), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)

    endpoints = [cfg.csi_endpoint]
    sockets = [p for p in map(_unix_path, endpoints) if p is not None]
    for path in sockets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # A stale socket from a killed run.
    # grpc binds when the port is added: a tight umask makes the socket 0600 from birth,
    # and the chmod below states it whatever grpc does.
    old = os.umask(0o177)
    try:
        for endpoint in endpoints:
            unix = _unix_path(endpoint)
            server.add_insecure_port(f"unix://{unix}" if unix is not None else endpoint)
        if cfg.csi_tcp:
            server.add_insecure_port(cfg.csi_tcp)
        await server.start()
    finally:
        os.umask(old)
    for path in sockets:
        os.chmod(path, 0o600)
        if cfg.csi_socket_group:
            # A group may be let in (e.g. the sidecars' user): 0660, owned by that group.
            os.chown(path, -1, grp.getgrnam(cfg.csi_socket_group).gr_gid)
            os.chmod(path, 0o660)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    if controller:
        await checker.set("csi.v1.Controller", health_pb2.HealthCheckResponse.SERVING)
    await checker.set("csi.v1.Node", health_pb2.HealthCheckResponse.SERVING)
    log.info("CSI endpoint %s ready", cfg.csi_endpoint, extra={"node": cfg.node_id})
    return server


class ApiServer:
    """The resource API's gRPC server and, on a unix endpoint, the front that names callers."""

    def __init__(self, server: grpc.aio.Server, front: PeerFront | None) -> None:
        self.server = server
        self.front = front

    async def stop(self, grace: float) -> None:
        if self.front is not None:
            await self.front.stop()
        await self.server.stop(grace)


async def serve_api(cfg: Config, resources: Resources) -> ApiServer:
    """The resource API on ``cfg.api_endpoint``: on a unix socket, through ``PeerFront``
    (its callers' uids decide what they may do); on TCP, directly (no peer credentials:
    every caller has the role of other users)."""
    server = grpc.aio.server(interceptors=[*grpc_server_interceptors(), MetricsInterceptor()], options=SERVER_OPTIONS)
    resources_pb2_grpc.add_ResourcesServicer_to_server(resources, server)
    public = _unix_path(cfg.api_endpoint)
    if public is None:
        server.add_insecure_port(cfg.api_endpoint)
        await server.start()
        log.info("resource API %s ready (TCP: no peer credentials, callers get the role of other users)", cfg.api_endpoint)
        return ApiServer(server, None)
    public.parent.mkdir(parents=True, exist_ok=True)
    # grpc's own socket, for apigw's user only: 0600 from birth (umask), in the same
    # directory, hidden; every caller comes through the front.
    private = public.with_name(f".{public.name}.authz")
    private.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix://{private}")
        await server.start()
    finally:
        os.umask(old)
    os.chmod(private, 0o600)
    front = await PeerFront.start(public, private)
    log.info("resource API %s ready", cfg.api_endpoint)
    return ApiServer(server, front)


def _unix_path(endpoint: str) -> Path | None:
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            return Path(endpoint[len(prefix) :]).absolute()
    return None
