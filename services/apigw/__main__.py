"""``python -m services.apigw``: the CSI driver's front door."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from volplane.clients import connect_nats
from volplane.config import Config
from volplane.errors import Unavailable
from volplane.logs import setup_logging

from .server import serve

log = logging.getLogger("apigw")


async def _main(cfg: Config) -> None:
    nc = await connect_nats(cfg, name="volplane-apigw")
    server = await serve(cfg, nc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)
    await nc.drain()


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
