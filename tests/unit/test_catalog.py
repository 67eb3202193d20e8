"""The catalog of deployables: every entry starts, and the credentials derived from it
give each service and each node its own identity, limited to its own subjects."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from unittest import mock

import pytest

from access.credentials import ADMIN, PERMISSIONS, USERS, Credentials, identities
from services import catalog
from services.catalog import CATALOG
from services.nodeagent.adapters import transfer
from volplane import subjects


@pytest.mark.parametrize("entry", CATALOG, ids=lambda d: d.name)
def test_every_entry_module_is_importable_and_has_a_main(entry: catalog.Deployable) -> None:
    # apigw's entry point sets GRPC_EXPERIMENTS for its process; keep it out of the test
    # run's environment, which the stacks of later tests inherit.
    with mock.patch.dict(os.environ):
        main = importlib.import_module(f"{entry.module}.__main__")
    assert callable(getattr(main, "main", None)), f"{entry.module}.__main__ has no main()"


def test_names_are_unique_and_single_tokens() -> None:
    names = [d.name for d in CATALOG]
    assert len(names) == len(set(names))
    # A process name such as "nodeagent-node-2" or "provisioner#2" splits at the first '-' or '#'.
    assert all(n.isalnum() for n in names)


def test_credentials_give_each_node_its_own_identity_limited_to_its_node() -> None:
    ids = identities(("node-1", "node-2"))
    assert set(ids) == {"provisioner", "attacher", "nodeagent-node-1", "nodeagent-node-2", "apigw", "apigw-node-2"}
    agent = ids["nodeagent-node-2"]
    assert "vp.ev.node.node-2.>" in agent.publish and "vp.ev.nodeinfo.node-2" in agent.publish
    assert "vp.cmd.node.node-2.>" in agent.subscribe and "vp.health.nodeagent.node-2" in agent.subscribe
    assert not [s for s in (*agent.publish, *agent.subscribe) if "node-1" in s or s.startswith(("vp.ev.node.*", "vp.cmd.node.*"))]
    assert not [s for s in (*agent.publish, *agent.subscribe) if s in ("vp.ev.node.>", "vp.cmd.node.>", "vp.ev.>", "vp.cmd.>", ">")]
    assert agent.redis_keys[0] == "vp:node:node-2:*"
    # Node 2's plugin: its own node's commands, no log, no Redis.
    plugin = ids["apigw-node-2"]
    assert plugin.publish == ("vp.cmd.node.node-2.>",) and not plugin.reads_log and not plugin.redis_keys
    # The one-node users the chart and compose read.
    assert set(USERS) == {*PERMISSIONS, ADMIN} and set(PERMISSIONS) == {"provisioner", "attacher", "nodeagent-node-1", "apigw"}


def test_no_service_may_administer_the_stream() -> None:
    config = Credentials(nats={u: "x" for u in identities(("node-1", "node-2"))}, redis_password="x", nodes=("node-1", "node-2")).nats_config(4222, Path("/data"))
    # The one purge a node may do: a transfer it has received, in the image transfer store
    # (never the event log; test_a_node_reaches_the_transfer_store_for_its_own_keys_only).
    config = config.replace(f'"$JS.API.STREAM.PURGE.{subjects.TRANSFER_STREAM}"', "")
    for forbidden in ("$JS.API.>", "$JS.API.STREAM.>", "PURGE", "DELETE", "UPDATE", "STREAM.CREATE", "DURABLE", '"_INBOX.>"]'):
        assert forbidden not in config, forbidden


def test_per_node_health_subjects_carry_the_node() -> None:
    assert catalog.get("nodeagent").health_subject("node-2") == "vp.health.nodeagent.node-2"
    assert catalog.get("provisioner").health_subject("node-2") == "vp.health.provisioner"


def test_an_unknown_service_is_named_in_the_error() -> None:
    with pytest.raises(KeyError, match="known: provisioner, attacher, nodeagent, apigw"):
        catalog.get("scheduler")


def test_a_node_reaches_the_transfer_store_for_its_own_keys_only() -> None:
    """Images across hosts (docs/decisions.md): a node stores under keys that start with its
    own token, asks other nodes to send, reads and discards through the stream's API only."""
    assert (subjects.TRANSFER_STREAM, subjects.TRANSFERS) == (transfer.STREAM, transfer.SUBJECTS)
    ids = identities(("node-1", "node-2"))
    agent = ids["nodeagent-node-2"]
    assert "vp.xfer.*.node-2.>" in agent.publish and subjects.NODE_POOL_SENDS in agent.publish
    assert set(subjects.TRANSFER_API) <= set(agent.publish)
    assert not [s for s in agent.publish if s.startswith("vp.xfer.") and s != "vp.xfer.*.node-2.>"]
    assert [s for s in agent.publish if "PURGE" in s] == [f"$JS.API.STREAM.PURGE.{subjects.TRANSFER_STREAM}"]
    assert subjects.node_pool_command("node-2", subjects.POOL_SEND).startswith(subjects.node_pool_command("node-2", ">")[:-1])
    assert "vp.cmd.pool.node.node-2.>" in agent.subscribe  # its own send subject, no other node's
    for other in ("provisioner", "attacher", "apigw", "apigw-node-2"):
        assert not [s for s in ids[other].publish if s.startswith("vp.xfer") or subjects.TRANSFER_STREAM in s], other
