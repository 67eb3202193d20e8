"""The attacher's attachment aggregate: decide_publish, decide_unpublish, evolve.

Domain tests read given events / when command / then events: the state is always built
by folding real events through ``evolve``, never constructed by hand.
"""

from __future__ import annotations

from functools import reduce

import pytest

from services.attacher.domain.attachment import (
    AttachmentState,
    accessible_from,
    decide_publish,
    decide_unpublish,
    evolve,
    publish_context,
)
from services.attacher.domain.events import ATTACHMENT_EVENTS, VolumeAttached, VolumeDetached
from volplane import codec
from volplane.commands import Capability, ControllerPublish, ControllerUnpublish, VolumeInfo
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from volplane.nodes import TOPOLOGY_KEY, NodeInfo

VID = "0123456789abcdef0123456789abcdef"
POOL = "shared"
SNW = Capability(access_type="mount", fs_type="ext4", access_mode=1)
MNMW = Capability(access_type="mount", fs_type="ext4", access_mode=5)  # MULTI_NODE_MULTI_WRITER
BLOCK = Capability(access_type="block", access_mode=1)


def volume(*caps: Capability, topology: tuple[dict[str, str], ...] = (), pool: str = POOL) -> VolumeInfo:
    return VolumeInfo(
        volume_id=VID,
        name="pvc-1",
        capacity_bytes=2**30,
        pool=pool,
        capabilities=caps or (SNW,),
        parameters={},
        volume_context={},
        accessible_topology=topology,
    )


def node(node_id: str, max_volumes: int = 0) -> NodeInfo:
    return NodeInfo(node_id=node_id, topology={TOPOLOGY_KEY: node_id}, max_volumes=max_volumes, pools=(), version=1)


def given(*events: VolumeAttached | VolumeDetached) -> AttachmentState | None:
    """The state after ``events``, numbered 1, 2, 3… as the stream would number them."""
    return reduce(lambda s, pair: evolve(s, pair[1], pair[0]), enumerate(events, start=1), None)


def attached(node_id: str, cap: Capability = SNW, readonly: bool = False) -> VolumeAttached:
    return VolumeAttached(volume_id=VID, node_id=node_id, capability=cap.stored(), readonly=readonly, context=publish_context(node_id, POOL))


def detached(node_id: str) -> VolumeDetached:
    return VolumeDetached(volume_id=VID, node_id=node_id)


def publish(node_id: str, cap: Capability = SNW, readonly: bool = False) -> ControllerPublish:
    return ControllerPublish(volume_id=VID, node_id=node_id, capability=cap, readonly=readonly)


def when_publish(
    state: AttachmentState | None,
    node_id: str,
    cap: Capability = SNW,
    readonly: bool = False,
    vol: VolumeInfo | None = None,
    max_volumes: int = 0,
    node_load: int = 0,
) -> VolumeAttached | None:
    return decide_publish(state, publish(node_id, cap, readonly), volume=vol or volume(), node=node(node_id, max_volumes), node_load=node_load)


# -- publish ------------------------------------------------------------------


def test_first_publish_attaches_the_volume_with_its_node_and_pool_as_context() -> None:
    event = when_publish(None, "node-a")
    assert isinstance(event, VolumeAttached)
    assert (event.volume_id, event.node_id, event.capability, event.readonly) == (VID, "node-a", SNW.stored(), False)
    assert event.context == {"volplane.io/node": "node-a", "volplane.io/pool": POOL}


def test_repeated_publish_with_same_capability_records_nothing() -> None:
    assert when_publish(given(attached("node-a")), "node-a") is None


def test_publish_after_detach_attaches_again() -> None:
    assert isinstance(when_publish(given(attached("node-a"), detached("node-a")), "node-a"), VolumeAttached)


def test_same_node_with_other_readonly_flag_already_exists() -> None:
    with pytest.raises(AlreadyExists, match="node-a"):
        when_publish(given(attached("node-a")), "node-a", readonly=True)


def test_same_node_with_other_capability_already_exists() -> None:
    other = Capability(access_type="mount", fs_type="ext4", mount_flags=("noatime",), access_mode=1)
    with pytest.raises(AlreadyExists):
        when_publish(given(attached("node-a")), "node-a", cap=other)


@pytest.mark.parametrize("mode", [1, 2, 6, 7])
def test_single_node_volume_on_one_node_is_refused_to_a_second_naming_the_first(mode: int) -> None:
    cap = Capability(access_type="mount", access_mode=mode)
    state = given(attached("node-a", cap=cap))
    with pytest.raises(FailedPrecondition, match="node-a"):
        when_publish(state, "node-b", cap=cap, vol=volume(cap))


def test_single_node_request_is_refused_while_another_node_holds_a_multi_node_volume() -> None:
    state = given(attached("node-a", cap=MNMW))
    with pytest.raises(FailedPrecondition, match="node-a"):
        when_publish(state, "node-b", cap=SNW, vol=volume(MNMW, SNW))


def test_multi_node_volume_is_published_to_a_second_node() -> None:
    state = given(attached("node-a", cap=MNMW))
    assert isinstance(when_publish(state, "node-b", cap=MNMW, vol=volume(MNMW)), VolumeAttached)


def test_second_node_is_allowed_once_the_first_has_detached() -> None:
    state = given(attached("node-a"), detached("node-a"))
    assert isinstance(when_publish(state, "node-b"), VolumeAttached)


def test_block_request_for_a_mount_volume_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="mount"):
        when_publish(None, "node-a", cap=BLOCK)


def test_local_volume_is_not_accessible_from_another_node() -> None:
    vol = volume(topology=({TOPOLOGY_KEY: "node-a"},), pool="node-a")
    with pytest.raises(FailedPrecondition, match="not accessible from node node-b"):
        when_publish(None, "node-b", vol=vol)


def test_local_volume_is_published_to_its_own_node() -> None:
    vol = volume(topology=({TOPOLOGY_KEY: "node-a"},), pool="node-a")
    event = when_publish(None, "node-a", vol=vol)
    assert event is not None and event.context["volplane.io/pool"] == "node-a"


def test_node_at_its_max_volumes_is_exhausted() -> None:
    with pytest.raises(ResourceExhausted, match="node-a"):
        when_publish(None, "node-a", max_volumes=2, node_load=2)


def test_node_below_its_max_volumes_takes_one_more() -> None:
    assert isinstance(when_publish(None, "node-a", max_volumes=2, node_load=1), VolumeAttached)


def test_repeat_on_a_full_node_is_still_ok() -> None:
    assert when_publish(given(attached("node-a")), "node-a", max_volumes=1, node_load=1) is None


def test_topology_segment_matches_on_every_key_it_names() -> None:
    assert accessible_from((), {})
    assert accessible_from(({"zone": "a"}, {"zone": "b"}), {"zone": "b", "rack": "2"})
    assert not accessible_from(({"zone": "a", "rack": "1"},), {"zone": "a", "rack": "2"})


# -- unpublish ----------------------------------------------------------------


def test_unpublish_of_a_volume_never_published_records_nothing() -> None:
    assert decide_unpublish(None, ControllerUnpublish(volume_id=VID, node_id="node-a")) == ()


def test_unpublish_from_a_node_that_does_not_hold_it_records_nothing() -> None:
    state = given(attached("node-a"))
    assert decide_unpublish(state, ControllerUnpublish(volume_id=VID, node_id="node-b")) == ()


def test_unpublish_after_detach_records_nothing() -> None:
    state = given(attached("node-a"), detached("node-a"))
    assert decide_unpublish(state, ControllerUnpublish(volume_id=VID, node_id="node-a")) == ()


def test_unpublish_one_node_of_several_detaches_only_that_one() -> None:
    state = given(attached("node-a", cap=MNMW), attached("node-b", cap=MNMW), attached("node-c", cap=MNMW))
    events = decide_unpublish(state, ControllerUnpublish(volume_id=VID, node_id="node-b"))
    assert [(e.type, e.node_id) for e in events] == [("VolumeDetached", "node-b")]
    after = reduce(lambda s, e: evolve(s, e, 10), events, state)
    assert after is not None and after.nodes == ("node-a", "node-c")


def test_unpublish_without_a_node_detaches_every_node() -> None:
    state = given(attached("node-b", cap=MNMW), attached("node-a", cap=MNMW))
    events = decide_unpublish(state, ControllerUnpublish(volume_id=VID))
    assert [e.node_id for e in events] == ["node-a", "node-b"]


# -- evolve -------------------------------------------------------------------


def test_state_lists_nodes_in_order_and_carries_the_last_sequence() -> None:
    state = given(attached("node-b", cap=MNMW), attached("node-a", cap=MNMW))
    assert state is not None and state.nodes == ("node-a", "node-b") and state.version == 2


def test_detaching_the_last_node_keeps_an_empty_state_with_its_version() -> None:
    state = given(attached("node-a"), detached("node-a"))
    assert state is not None and state.attachments == () and state.version == 2


def test_replaying_an_event_onto_a_state_that_has_it_changes_nothing_but_the_version() -> None:
    event = attached("node-a")
    once = given(event)
    twice = evolve(once, event, 1)
    assert twice == once


def test_events_round_trip_through_the_codec() -> None:
    for event in (attached("node-a", readonly=True), detached("node-a")):
        assert codec.decode(ATTACHMENT_EVENTS, codec.encode(event)) == event
