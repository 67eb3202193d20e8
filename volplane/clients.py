"""The only place that builds NATS and Redis clients.

    nc = await connect_nats(cfg, name="volplane-provisioner")   # raises Unavailable with the URL in the message
    r = connect_redis(cfg)
    await answers(url, "vp.health.attacher")                     # a one-shot probe (the launcher's health check)
    nc = await connect_once(url)                                 # one job, no reconnects (the launcher's stream setup)

TLS: a ``tls://`` NATS URL and a ``rediss://`` Redis URL connect with TLS only, checking the
server's certificate against ``VOLPLANE_TLS_CA`` (else the system's CAs) and its host name,
and presenting ``VOLPLANE_TLS_CERT`` / ``VOLPLANE_TLS_KEY`` to servers that ask for a client
certificate; ``make run``'s servers ask (docs/security.md). A ``nats://`` URL with a CA set
uses TLS when the server requires it; ``redis://`` and ``unix://`` never do.

    ctx = client_tls(Path("run/tls/ca.pem"), Path("run/tls/client.pem"), Path("run/tls/client.key"))
    nc = await connect_once("tls://admin:…@127.0.0.1:4222", tls=ctx)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import redis.asyncio as aioredis
import redis.exceptions
from nats.aio.client import Client as NATS
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from volplane.config import Config
from volplane.errors import Unavailable

__all__ = ["answers", "check_redis", "client_tls", "connect_nats", "connect_once", "connect_redis", "inbox_prefix", "nats_tls", "redact", "redis_tls"]

log = logging.getLogger(__name__)


class _StartTlsEof(logging.Filter):
    """nats-py upgrades a plain connection with ``start_tls``, under an asyncio stream whose
    protocol still believes it is plaintext: every TLS close then makes asyncio's SSL layer
    warn that the protocol's "keep open" answer "has no effect when using ssl" — true, and
    harmless (the connection closes as it should). One line per closed connection would
    bury real warnings, so that one message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no effect when using ssl" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_StartTlsEof())

FIRST_CONNECT_TIMEOUT = 15.0


def client_tls(ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None) -> ssl.SSLContext:
    """The client's side of TLS: the server's certificate must chain to ``ca`` (None: the
    system's CAs) and name the host dialled; ``cert`` and ``key`` are presented when the
    server asks for a client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def nats_tls(cfg: Config) -> ssl.SSLContext | None:
    """The TLS context for ``cfg.nats_url``: for a ``tls://`` URL, or any URL when a CA or a
    client certificate is configured; None for plaintext."""
    schemes = {urlsplit(part.strip()).scheme for part in cfg.nats_url.split(",")}
    if "tls" in schemes or cfg.tls_ca or cfg.tls_cert:
        return client_tls(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
    return None


def redis_tls(cfg: Config) -> dict[str, Any]:
    """redis-py's TLS arguments for ``cfg.redis_url``: none unless the URL is ``rediss://``."""
    if urlsplit(cfg.redis_url).scheme != "rediss":
        return {}
    out: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    if cfg.tls_ca is not None:
        out["ssl_ca_certs"] = str(cfg.tls_ca)
    if cfg.tls_cert is not None:
        out["ssl_certfile"], out["ssl_keyfile"] = str(cfg.tls_cert), str(cfg.tls_key)
    return out


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

    try:
        context = nats_tls(cfg)
    except (OSError, ssl.SSLError) as exc:  # a file that is no PEM, a key that is not the certificate's
        raise Unavailable(f"cannot use the TLS files for NATS at {url} (VOLPLANE_TLS_CA, VOLPLANE_TLS_CERT, VOLPLANE_TLS_KEY): {exc}") from exc
    tls: dict[str, Any] = {"tls": context} if context is not None else {}
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
        **tls,
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


async def connect_once(url: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> NATS:
    """A connection for one job (a probe, the launcher's stream setup): it does not
    reconnect, and a refusal raises at once. ``tls``: ``client_tls(...)`` for a server
    that requires TLS."""
    extra: dict[str, Any] = {"tls": tls} if tls is not None else {}
    return await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=0, allow_reconnect=False, inbox_prefix=inbox_prefix(url), **extra)


async def answers(url: str, subject: str, timeout: float = 1.0, tls: ssl.SSLContext | None = None) -> bool:
    """Whether something answers a request on ``subject`` at ``url`` within ``timeout``:
    one connection, no reconnects, closed again — for a probe from outside the services."""
    try:
        nc = await connect_once(url, timeout, tls)
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
        **redis_tls(cfg),
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
