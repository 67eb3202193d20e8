"""``python -m services.apigw``: the CSI driver's front door."""

from __future__ import annotations

import os

# gRPC's legacy poller answers a unary call on this kind of host about a quarter
# faster than the EventEngine default (measured: 527 → 422 µs per round trip, see
# docs/performance.md); a deployment can still choose by setting the variable itself.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client,-event_engine_listener")

import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from volplane.clients import check_redis, connect_nats, connect_redis  # noqa: E402
from volplane.config import Config  # noqa: E402
from volplane.errors import Unavailable  # noqa: E402
from volplane.eventstore import EventStore  # noqa: E402
from volplane.projection import ProjectionRunner  # noqa: E402
from volplane.resources.projection import ObjectsProjection  # noqa: E402
from volplane.logs import setup_logging  # noqa: E402
from volplane.service import shutdown  # noqa: E402
from volplane.telemetry import setup_telemetry, shutdown_telemetry  # noqa: E402

from .resources import Resources  # noqa: E402
from .server import serve  # noqa: E402

log = logging.getLogger("apigw")


async def _main(cfg: Config) -> None:
    setup_telemetry("apigw", cfg.node_id)
    nc = await connect_nats(cfg, name="volplane-apigw")
    resources, runner, redis = None, None, None
    if cfg.apigw_mode != "node":
        # The resource API: objects in the log, lists from their Redis projection.
        redis = connect_redis(cfg)
        await check_redis(redis, cfg)
        store = EventStore(nc.jetstream(timeout=10))
        await store.ensure_stream()
        runner = ProjectionRunner(redis, store, ObjectsProjection())
        await runner.start()
        resources = Resources(store, redis, runner)
    server = await serve(cfg, nc, resources)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        if runner is not None:
            await runner.rebuild_if_wiped()
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass
    await server.stop(grace=5)
    await shutdown(nc)
    if runner is not None and redis is not None:
        await runner.stop()
        await redis.aclose()
    shutdown_telemetry()


def main() -> None:
    cfg = Config.from_env()
    setup_logging("apigw", cfg.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        asyncio.run(_main(cfg))
    except Unavailable as exc:
        log.error("apigw cannot start: %s", exc.message)
        sys.exit(2)


if __name__ == "__main__":
    main()
