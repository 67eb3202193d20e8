"""A NATS cluster's member URLs as the clients use them: all dialled, none leaked."""

from __future__ import annotations

import asyncio
import socket
import time

import nats.errors
import pytest

from volplane.clients import _credentials, connect_once, redact


def test_every_members_credentials_are_hidden() -> None:
    assert redact("nats://svc:pw@a:4222,nats://svc:pw@b:4222") == "nats://***@a:4222,nats://***@b:4222"
    assert redact("tls://admin:x@127.0.0.1:4222") == "tls://***@127.0.0.1:4222"
    assert redact("nats://a:4222,nats://b:4222") == "nats://a:4222,nats://b:4222"


def test_members_learnt_from_the_cluster_get_the_urls_credentials() -> None:
    assert _credentials(["nats://svc:pw@a:4222", "nats://svc:pw@b:4222"]) == {"user": "svc", "password": "pw"}
    assert _credentials(["nats://a:4222"]) == {}
    assert _credentials(["nats://one:pw@a:4222", "nats://two:pw@b:4222"]) == {}  # ambiguous: each URL keeps its own


def _refusing_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_one_shot_connection_to_members_that_refuse_fails_at_once() -> None:
    url = ",".join(f"nats://127.0.0.1:{_refusing_port()}" for _ in range(3))
    started = time.monotonic()
    with pytest.raises(nats.errors.NoServersError):
        asyncio.run(connect_once(url, timeout=2.0))
    assert time.monotonic() - started < 2.0
