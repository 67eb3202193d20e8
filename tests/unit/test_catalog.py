"""The catalog of deployables: every entry starts, and the credentials derived from it
grant what each service was granted before the catalog existed."""

from __future__ import annotations

import importlib
import os
from unittest import mock

import pytest

from access.credentials import ADMIN, PERMISSIONS, USERS
from services import catalog
from services.catalog import CATALOG

# The permissions access/credentials.py spelled out by hand before they came from the catalog.
_OBJECTS = ["vp.ev.res.>", "vp.ev.rec.>"]
_BEFORE: dict[str, tuple[list[str], list[str]]] = {
    "apigw": (["vp.cmd.>", "vp.health.>", *_OBJECTS], []),
    # Since group snapshots (issue 16): their events, and the freeze and thaw of a cut on the nodes.
    "provisioner": (
        ["vp.ev.volume.>", "vp.ev.snapshot.>", "vp.ev.groupsnapshot.>", "vp.cmd.attacher.>", "vp.cmd.node.*.freeze", "vp.cmd.node.*.thaw", *_OBJECTS],
        ["vp.cmd.provisioner.>", "vp.health.provisioner"],
    ),
    "attacher": (["vp.ev.attachment.>", "vp.cmd.provisioner.get_volume", *_OBJECTS], ["vp.cmd.attacher.>", "vp.health.attacher"]),
    "nodeagent": (["vp.ev.node.>", "vp.ev.nodeinfo.>", "vp.cmd.attacher.attachments", *_OBJECTS], ["vp.cmd.node.>", "vp.health.nodeagent.>"]),
}


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


def test_credentials_grant_each_service_what_it_was_granted_before() -> None:
    assert PERMISSIONS == _BEFORE
    assert set(USERS) == {*_BEFORE, ADMIN}


def test_per_node_health_subjects_carry_the_node() -> None:
    assert catalog.get("nodeagent").health_subject("node-2") == "vp.health.nodeagent.node-2"
    assert catalog.get("provisioner").health_subject("node-2") == "vp.health.provisioner"


def test_an_unknown_service_is_named_in_the_error() -> None:
    with pytest.raises(KeyError, match="known: provisioner, attacher, nodeagent, apigw"):
        catalog.get("scheduler")
