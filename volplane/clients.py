"""The only place that builds NATS and Redis clients.

    nc = await connect_nats(cfg, name="volplane-provisioner")   # raises Unavailable with the URL in the message
    r = connect_redis(cfg)
    await answers(url, "vp.health.attacher")                     # a one-shot probe (the launcher's health check)
    nc = await connect_once(url)                                 # one job, no reconnects (the launcher's stream setup)
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote, urlsplit

import nats
import redis.asyncio as aioredis
import redis.exceptions
from nats.aio.client import Client as NATS
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from volplane.config import Config
from volplane.errors import Unavailable

__all__ = ["answers", "check_redis", "connect_nats", "connect_once", "connect_redis", "inbox_prefix", "redact"]

log = logging.getLogger(__name__)

FIRST_CONNECT_TIMEOUT = 15.0


async def connect_nats(cfg: Config, name: str) -> NATS:
    url = redact(cfg.nats_url)
    errors: list[str] = []
    client: list[NATS] = []  # the connection, once made: its callbacks tell our own close from a loss

    async def on_error(exc: Exception) -> None:
        # One line, no traceback: while NATS is away this fires on every reconnect attempt.
        errors.append(str(exc) or type(exc).__name__)
        log.warning("NATS %s: %s", url, errors[-1])

    async def on_disconnect() -> None:
        if client and client[0].is_closed:
            return  # our own shutdown: nothing lost, no reconnect coming
        log.warning("disconnected from NATS %s, reconnecting", url)

    async def on_reconnect() -> None:
        log.info("reconnected to NATS %s", url)

    connect = nats.connect(
        cfg.nats_url,
        name=name,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        pending_size=64 * 2**20,
        inbox_prefix=inbox_prefix(cfg.nats_url),
    )
    try:
        # Reconnects are unlimited once connected; the first connection is not, so that
        # wrong credentials or a wrong URL stop the service with the reason, not a hang.
        client.append(await asyncio.wait_for(connect, FIRST_CONNECT_TIMEOUT))
        return client[0]
    except TimeoutError as exc:
        raise Unavailable(f"cannot connect to NATS at {url}: {errors[-1] if errors else 'no answer'}") from exc
    except Exception as exc:  # nats-py raises several unrelated types here.
        raise Unavailable(f"cannot connect to NATS at {url}: {exc}") from exc


def inbox_prefix(url: str) -> str:
    """Where this client's replies and consumer deliveries arrive: ``_INBOX.<user>`` when
    the URL names a user, so that a server can let each user subscribe to its own inbox
    only (``access.credentials``) and none reads another's replies; ``_INBOX`` otherwise.

        inbox_prefix("nats://attacher:secret@nats:4222")   # "_INBOX.attacher"
    """
    parts = urlsplit(url.split(",")[0])
    user = unquote(parts.username or "")
    # A URL without a password carries a token in the user's place: never put it in a subject.
    if not user or parts.password is None or any(c in user for c in ".*> \t"):
        return "_INBOX"
    return f"_INBOX.{user}"


async def connect_once(url: str, timeout: float = 5.0) -> NATS:
    """A connection for one job (a probe, the launcher's stream setup): it does not
    reconnect, and a refusal raises at once."""
    return await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=0, allow_reconnect=False, inbox_prefix=inbox_prefix(url))


async def answers(url: str, subject: str, timeout: float = 1.0) -> bool:
    """Whether something answers a request on ``subject`` at ``url`` within ``timeout``:
    one connection, no reconnects, closed again — for a probe from outside the services."""
    try:
        nc = await connect_once(url, timeout)
    except Exception:  # noqa: BLE001 - the server is not up (yet): no answer.
        return False
    try:
        await nc.request(subject, b"\x80", timeout=timeout)  # an empty msgpack map
        return True
    except Exception:  # noqa: BLE001 - no responder (yet): no answer.
        return False
    finally:
        await nc.close()


def connect_redis(cfg: Config) -> aioredis.Redis:
    """A client that reconnects by itself: after a Redis restart, pooled connections are
    dead, and a command on one is retried on a fresh connection instead of failing."""
    return aioredis.Redis.from_url(
        cfg.redis_url,
        decode_responses=False,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=15,
    )


async def check_redis(r: aioredis.Redis, cfg: Config) -> None:
    try:
        await r.ping()
    except Exception as exc:
        raise Unavailable(f"cannot reach Redis at {redact(cfg.redis_url)}: {exc}") from exc


def redact(url: str) -> str:
    """Keep credentials out of messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
