"""The resource API's callers: who each peer is, and what each role may do."""

from __future__ import annotations

import os

from services.apigw.access import Access, Caller, caller_of


def test_a_relayed_peer_is_the_uid_its_name_carries() -> None:
    assert caller_of("unix:/tmp/volplane-api-x1/volplane-api.1000.100.0123456789abcdef") == Caller(1000, 100)


def test_a_direct_peer_on_the_private_socket_is_apigws_own_user() -> None:
    assert caller_of("unix:") == Caller(os.geteuid(), os.getegid())
    assert caller_of("unix:/tmp/elsewhere/volplane-api.x.y.z") == Caller(os.geteuid(), os.getegid())


def test_a_tcp_peer_has_no_identity_and_gets_the_others_role() -> None:
    access = Access(frozenset({0}), frozenset(), "view")
    assert caller_of("ipv4:127.0.0.1:5000") == Caller(None, None)
    assert access.role(Caller(None, None)) == "view"


def test_admins_by_uid_and_by_group() -> None:
    access = Access(frozenset({0, 1234}), frozenset({4321}), "none")
    assert access.role(Caller(1234, 1)) == "admin"
    assert access.role(Caller(99999, 4321)) == "admin"  # its gid is an admin group
    assert access.role(Caller(99999, 1)) == "none"
