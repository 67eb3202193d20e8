"""The only place that builds NATS and Redis clients.

    nc = await connect_nats(cfg, name="volplane-provisioner")   # raises Unavailable with the URL in the message
    r = connect_redis(cfg)                                       # REDIS_URL redis+sentinel://s1:26379,s2:26379/volplane/0: the Sentinels' master
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
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import nats.aio.transport as nats_transport
import redis.asyncio as aioredis
import redis.exceptions
from nats.aio.client import Client as NATS
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff

from volplane.config import SENTINEL_SCHEMES, Config, RedisSentinel
from volplane.errors import Unavailable

__all__ = ["answers", "check_redis", "client_tls", "connect_nats", "connect_once", "connect_redis", "inbox_prefix", "nats_tls", "reconnected", "redact", "redis_tls"]

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
# How a connection notices a member that is gone and moves to another (docs/decisions.md,
# "Failing fast on a clustered log"). A killed member's socket closes at once; a frozen or
# cut-off one answers no PING: after PING_INTERVAL * (MAX_OUTSTANDING_PINGS + 1) seconds at
# most (6 s) the client gives up on it. The next member is dialled at once; only a member
# tried within RECONNECT_WAIT is waited for, so a cluster with one member down costs no
# pause, and a cluster with all down is tried twice a second, without end.
PING_INTERVAL = 2
MAX_OUTSTANDING_PINGS = 2
RECONNECT_WAIT = 0.5
CONNECT_TIMEOUT = 2
# How long closing a connection may wait for the member to take what is left to send and,
# over TLS, answer the close: a frozen member never does (see _bounded_close).
CLOSE_TIMEOUT = 1.0


def _bounded_close() -> None:
    """Bound how long nats-py waits for a connection to close, and abort it past that.

    nats-py closes the connection it gives up on and waits until it is closed before it
    dials the next member. A member that is frozen or cut off never reads: a TLS connection
    then waits out asyncio's SSL shutdown timeout (30 s), and a plain one with unsent bytes
    waits without end, and the client reaches no other member meanwhile (a frozen host's
    member held the others' services for 30 s). Past ``CLOSE_TIMEOUT`` the socket is
    aborted: nothing it still held was acknowledged, and requests are re-sent on reconnect."""
    transport_class = nats_transport.TcpTransport
    if getattr(transport_class, "_volplane_bounded", False):
        return
    graceful: Callable[[Any], Awaitable[None]] = transport_class.wait_closed

    async def wait_closed(self: Any) -> None:
        try:
            await asyncio.wait_for(graceful(self), CLOSE_TIMEOUT)
        except TimeoutError:
            writer = getattr(self, "_io_writer", None)
            if writer is not None:
                writer.transport.abort()

    transport_class.wait_closed = wait_closed  # type: ignore[method-assign]  # the bounded close replaces nats-py's on purpose
    transport_class._volplane_bounded = True  # type: ignore[attr-defined]  # our mark on their class: patched once


_bounded_close()


class _Reconnects:
    """A future per connection that completes at its next reconnect: a request waiting for
    an answer that went down with a member races it, and is sent again at once."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None

    def next(self) -> asyncio.Future[None]:
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    def fire(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None


_RECONNECTS: weakref.WeakKeyDictionary[NATS, _Reconnects] = weakref.WeakKeyDictionary()


def reconnected(nc: NATS) -> asyncio.Future[None]:
    """A future done when ``nc`` next reconnects (to the same member or another). For a
    connection not made by ``connect_nats`` it never completes.

        done, _ = await asyncio.wait({reply, reconnected(nc)}, return_when=asyncio.FIRST_COMPLETED)
    """
    watch = _RECONNECTS.get(nc)
    if watch is None:
        watch = _RECONNECTS[nc] = _Reconnects()
    return watch.next()


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
    """redis-py's TLS arguments for ``cfg.redis_url``: none unless the URL is ``rediss://``
    (or ``rediss+sentinel://``: the Sentinels and the master both)."""
    if cfg.redis_url.partition("://")[0] not in ("rediss", "rediss+sentinel"):
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
        where = client[0].connected_url if client else None
        log.info("reconnected to NATS %s (%s)", url, where.netloc.rpartition("@")[2] if where else "?")
        if client:
            watch = _RECONNECTS.get(client[0])
            if watch is not None:
                watch.fire()

    try:
        context = nats_tls(cfg)
    except (OSError, ssl.SSLError) as exc:  # a file that is no PEM, a key that is not the certificate's
        raise Unavailable(f"cannot use the TLS files for NATS at {url} (VOLPLANE_TLS_CA, VOLPLANE_TLS_CERT, VOLPLANE_TLS_KEY): {exc}") from exc
    tls: dict[str, Any] = {"tls": context} if context is not None else {}
    servers = cfg.nats_servers
    connect = nats.connect(
        servers,
        name=name,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        connect_timeout=CONNECT_TIMEOUT,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT,  # seconds, a float too
        ping_interval=PING_INTERVAL,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        allow_reconnect=True,
        pending_size=64 * 2**20,
        inbox_prefix=inbox_prefix(cfg.nats_url),
        **tls,
        **_credentials(servers),
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


def _credentials(servers: list[str]) -> dict[str, str]:
    """The user and password every member URL names, as nats-py's own options: the members a
    client learns of from the cluster (connect_urls) come without them, and would refuse it."""
    users = {(unquote(p.username or ""), unquote(p.password or "")) for p in map(urlsplit, servers)}
    if len(users) != 1:
        return {}
    user, password = users.pop()
    return {"user": user, "password": password} if user and password else {}


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
    servers = [part.strip() for part in url.split(",") if part.strip()]  # a cluster's members: the first that answers

    async def quiet(exc: Exception) -> None:  # nats-py's default prints a traceback per refused member
        log.debug("NATS %s: %s", redact(url), exc)

    # nats-py keeps a member that refused in its pool unless it has a positive attempt limit,
    # and then dials the pool round and round: one attempt each, then NoServersError.
    connect = nats.connect(servers, connect_timeout=timeout, max_reconnect_attempts=1, reconnect_time_wait=0.05,
                           allow_reconnect=False, error_cb=quiet, inbox_prefix=inbox_prefix(url), **extra, **_credentials(servers))
    return await asyncio.wait_for(connect, timeout * (len(servers) + 1))


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
    dead, and a command on one is retried on a fresh connection instead of failing.
    A ``redis+sentinel://`` URL gives a client of the Sentinels' master (``_connect_sentinel``)."""
    if cfg.redis_url.partition("://")[0] in SENTINEL_SCHEMES:
        return _connect_sentinel(cfg, RedisSentinel.parse(cfg.redis_url))
    return aioredis.Redis.from_url(
        cfg.redis_url,
        decode_responses=False,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=15,
        **redis_tls(cfg),
    )


# How long a command keeps retrying while Sentinel fails over: the Sentinels go on naming
# the dead master until they agree it is down (down-after-milliseconds) and have promoted
# a replica; a command that waits this out succeeds instead of failing its caller. The
# chart's Sentinels fail over in about 6 s (docs/deploy.md); ~15 s of retries cover that.
SENTINEL_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), 20)


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the master that asks the Sentinels where the master is before every
    (re)connect. redis-py's own reconnects a dropped connection through the base class's
    ``connect_check_health`` (``send_packed_command``), skipping the Sentinel lookup: after
    a failover such a connection dialled the dead master until its retries ran out (17 s
    measured, against 2 s for the failover itself)."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    pass


def _connect_sentinel(cfg: Config, sentinel: RedisSentinel) -> aioredis.Redis:
    """A client of the master the Sentinels name: each new connection asks them where it is,
    so after a failover the next command reaches the promoted replica (a command that meets
    the old master — gone, or demoted to read-only — fails with ConnectionError and is
    retried on a fresh connection). Timeouts bound a dead host that answers nothing."""
    tls = redis_tls(cfg)
    if tls:
        tls["ssl"] = True
    sockets: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 10.0}
    sentinels = Sentinel(
        list(sentinel.sentinels),
        sentinel_kwargs={**tls, **sockets, "username": sentinel.sentinel_username, "password": sentinel.sentinel_password},
    )
    master_tls = {k: v for k, v in tls.items() if k != "ssl"}  # the connection class says TLS
    client: aioredis.Redis = sentinels.master_for(
        sentinel.master,
        connection_class=_SentinelSSLConnection if tls else _SentinelConnection,
        db=sentinel.db,
        username=sentinel.username,
        password=sentinel.password,
        decode_responses=False,
        retry=SENTINEL_RETRY,
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=15,
        **sockets,
        **master_tls,
    )
    return client


async def check_redis(r: aioredis.Redis, cfg: Config) -> None:
    try:
        await r.ping()
    except Exception as exc:
        raise Unavailable(f"cannot reach Redis at {redact(cfg.redis_url)}: {exc}") from exc


def redact(url: str) -> str:
    """Keep credentials out of messages and logs."""
    url = re.sub(r"(sentinel_password=)[^&]*", r"\1***", url)
    if "@" not in url:
        return url
    # A cluster's members, each with its own credentials: every one hidden.
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
