"""The one way a service process starts, serves and stops.

    def main() -> None:
        run_service("provisioner", setup)      # setup(runtime) wires the app and its handlers
        run_service("apigw", setup, per_node=True, stateful=lambda cfg: cfg.apigw_controller, bus_health=False)

``run_service`` reads the Config, sets up logging and telemetry, connects NATS and Redis
(failing fast with a readable message), makes sure the event stream exists, calls
``setup``, answers health requests on ``vp.health.<service>[.<node>]``, and on SIGTERM or
SIGINT stops in order: its servers (a gRPC front door lets the calls in flight finish),
its control loops, then it stops taking commands, lets those in flight finish and closes
its connections. The names and where each service runs are in ``services.catalog``.

A ``stateful=False`` process (apigw as a node plugin) neither reads the log nor keeps
read models: it needs no Redis and does not touch the stream. A ``bus_health=False``
process answers health checks itself (apigw: grpc.health.v1 on its CSI socket).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict

from volplane import __version__, quarantine, subjects
from volplane.bus import Bus
from volplane.clients import check_redis, connect_nats, connect_redis
from volplane.config import Config
from volplane.errors import Unavailable
from volplane.eventstore import EventStore
from volplane.logs import setup_logging
from volplane.projection import Projection, ProjectionRunner
from volplane.telemetry import gauge, setup_telemetry, shutdown_telemetry

__all__ = ["HealthCheck", "Runtime", "run_service", "shutdown"]

log = logging.getLogger(__name__)

SAMPLE_EVERY = 2.0
STREAM_WAIT = 120.0  # seconds a service waits for the event log's stream to be created
PROJECTION_LAG = gauge("volplane_projection_lag_events", "Events a projection has not applied yet.", ("service", "projection"))


@dataclass
class Runtime:
    name: str
    cfg: Config
    nc: NATS
    store: EventStore
    bus: Bus
    node: str | None = None
    # None in a process that keeps no read models (``run_service(stateful=False)``).
    redis_client: aioredis.Redis | None = None
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    # Front doors (apigw's gRPC server): stopped before anything else, so that the calls
    # in flight finish while the services and connections behind them still run.
    servers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    # Control loops and their informers: stopped next, while NATS still carries their
    # last writes (closers run after the connection has drained).
    controllers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    runners: list[ProjectionRunner[Any]] = field(default_factory=list)
    # Called every few seconds to refresh gauges (pool usage, volume counts, ...).
    samplers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def redis(self) -> aioredis.Redis:
        if self.redis_client is None:
            raise RuntimeError(f"{self.name} runs without Redis (stateful=False): it keeps no read models")
        return self.redis_client

    async def follow(self, projection: Projection[Any]) -> ProjectionRunner[Any]:
        """A projection runner, caught up with the log, stopped with the service, measured."""
        runner: ProjectionRunner[Any] = ProjectionRunner(self.redis, self.store, projection)
        await runner.start()
        self.closers.append(runner.stop)
        self.runners.append(runner)
        return runner

    async def sample(self) -> None:
        """Every few seconds: notice a Redis that lost its projections, refresh gauges."""
        for runner in self.runners:
            await runner.rebuild_if_wiped()
            PROJECTION_LAG.labels(self.name, runner.projection.name).set(runner.lag)
        for sampler in self.samplers:
            sampler()


Setup = Callable[[Runtime], Awaitable[None]]


def run_service(
    name: str,
    setup: Setup,
    *,
    per_node: bool = False,
    stateful: bool | Callable[[Config], bool] = True,
    bus_health: bool = True,
) -> None:
    """Run service ``name`` until SIGTERM or SIGINT. ``per_node``: its identity (health
    subject, connection and telemetry) carries the node id. ``stateful``: whether it
    follows the log into Redis (a predicate decides from the Config). ``bus_health``:
    whether it answers ``vp.health.…`` on the bus. Exits 2 with the reason when NATS or
    Redis cannot be reached."""
    cfg = Config.from_env_or_exit(f"volplane-{name}")
    setup_logging(name, cfg.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works.
        pass
    uses_state = stateful(cfg) if callable(stateful) else stateful
    try:
        asyncio.run(_serve(name, cfg, setup, per_node=per_node, stateful=uses_state, bus_health=bus_health))
    except Unavailable as exc:
        log.error("%s cannot start: %s", name, exc.message)
        sys.exit(2)


async def _serve(name: str, cfg: Config, setup: Setup, *, per_node: bool, stateful: bool, bus_health: bool) -> None:
    node = cfg.node_id if per_node else None
    setup_telemetry(name, node)
    quarantine.identify(name)
    nc = await connect_nats(cfg, name=f"volplane-{name}" + (f"-{node}" if node else ""))
    redis: aioredis.Redis | None = None
    store = EventStore(nc.jetstream(timeout=10))
    if stateful:
        redis = connect_redis(cfg)
        await check_redis(redis, cfg)
        await _await_stream(store)
    rt = Runtime(name=name, cfg=cfg, nc=nc, store=store, bus=Bus(nc, name), node=node, redis_client=redis)
    await setup(rt)

    async def health(_: HealthCheck) -> dict[str, Any]:
        return {"service": name, "node": node, "version": __version__}

    if bus_health:
        await rt.bus.serve(subjects.health(name, node), subjects.queue(name, node) + ".health", HealthCheck, health)
    log.info("%s ready", name, extra={"node": node})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await rt.sample()
        except Exception:  # Sampling must never stop the service.
            log.exception("sampling failed")
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        except TimeoutError:
            pass
    log.info("%s stopping", name)
    for stop_server in reversed(rt.servers):
        await stop_server()
    for stop_loop in reversed(rt.controllers):
        await stop_loop()
    await shutdown(nc, rt.bus)
    for close in reversed(rt.closers):
        await close()
    if redis is not None:
        await redis.aclose()
    shutdown_telemetry()


async def _await_stream(store: EventStore) -> None:
    """Wait for the event log's stream. Creating it is an administrator's step (the
    launcher; an install job in Kubernetes) that no service's credentials allow; a service
    started alongside waits for it, and stops with the reason if it never comes."""
    deadline = asyncio.get_running_loop().time() + STREAM_WAIT
    missing = unanswered = 0
    while True:
        try:
            await store.require_stream()
            return
        except nats.js.errors.NotFoundError:
            missing += 1
            if missing == 1:
                log.warning("waiting for the event log (stream %s) to be created by the install step", subjects.STREAM)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            # A cluster member that has just (re)started, or a cluster between leaders,
            # answers late or "temporarily unavailable" until JetStream is ready on it.
            unanswered += 1
            if unanswered == 1:
                log.warning("waiting for the event log (stream %s) to answer: %s", subjects.STREAM, exc.__class__.__name__)
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(1.0)
    if missing >= unanswered:
        raise Unavailable(f"no event log (stream {subjects.STREAM}) after {STREAM_WAIT:.0f}s: the install step creates it, as admin")
    raise Unavailable(f"the event log (stream {subjects.STREAM}) did not answer for {STREAM_WAIT:.0f}s")


async def shutdown(nc: NATS, bus: Bus | None = None, grace: float = 5.0) -> None:
    """Stop taking requests, let those in flight finish, close — within ``grace`` seconds,
    even when NATS itself is already gone (a drain would wait for a reconnect forever)."""
    try:
        await asyncio.wait_for(nc.drain(), grace)
        if bus is not None:
            await asyncio.wait_for(bus.drain(), grace)
    except Exception:  # noqa: BLE001 - shutting down regardless (TimeoutError included).
        log.warning("shutdown did not finish within %.0fs; closing", grace)
    finally:
        if not nc.is_closed:
            await nc.close()


class HealthCheck(BaseModel):
    """A health request: it carries no fields, and any it does carry are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
