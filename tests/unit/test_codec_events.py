"""Every event of both aggregates survives volplane.codec: encode → bytes → decode.

The examples are listed by hand, and a guard test checks that the list covers every
member of each discriminated union, so a new event type cannot slip in untested.
"""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.nodeagent.domain import events as node_events
from services.provisioner.domain import events as volume_events
from volplane import codec
from volplane.commands import Capability, ContentSource

VID = "0123456789abcdef0123456789abcdef"
TARGET = "/var/lib/kubelet/pods/p1/volumes/v1"

VOLUME_EXAMPLES: list[BaseModel] = [
    volume_events.VolumeCreating(
        volume_id=VID,
        name="pvc-ü-1",  # non-ASCII survives msgpack's str type
        pool="default",
        capacity_bytes=5 * 2**40,  # beyond 32 bits
        capabilities=(
            Capability(access_type="mount", fs_type="ext4", mount_flags=("noatime", "nodev"), access_mode=7),
            Capability(access_type="block", access_mode=1),
        ),
        parameters={"fsType": "ext4", "tier": "fast"},
    ),
    volume_events.VolumeCreated(volume_id=VID),
    volume_events.VolumeCreateFailed(volume_id=VID, reason="pool default: no room for 1073741824 bytes"),
    volume_events.VolumeExpanding(volume_id=VID, capacity_bytes=3 * 2**40),
    volume_events.VolumeExpanded(volume_id=VID, capacity_bytes=3 * 2**40),
    volume_events.VolumeExpandFailed(volume_id=VID, capacity_bytes=2**40, reason="pool shared: no room"),
    volume_events.VolumeDeleting(volume_id=VID),
    volume_events.VolumeDeleted(volume_id=VID),
    volume_events.VolumeCreating(
        volume_id=VID, name="clone", pool="shared", capacity_bytes=2**30, capabilities=(Capability(),),
        content_source=ContentSource(kind="snapshot", id=VID),
    ),
]

SNAPSHOT_EXAMPLES: list[BaseModel] = [
    volume_events.SnapshotCreating(snapshot_id=VID, name="snap-1", source_volume_id=VID, pool="node-1", size_bytes=2**30, parameters={"a": "b"}),
    volume_events.SnapshotCreated(snapshot_id=VID),
    volume_events.SnapshotCreateFailed(snapshot_id=VID, reason="source image is gone"),
    volume_events.SnapshotDeleting(snapshot_id=VID),
    volume_events.SnapshotDeleted(snapshot_id=VID),
]

NODE_EXAMPLES: list[BaseModel] = [
    node_events.VolumeStaging(volume_id=VID, staging_path="/staging/v", fs_type="ext4", mount_flags=("noatime", "discard")),
    node_events.VolumeStaged(volume_id=VID, device="/dev/loop3", formatted=True),
    node_events.VolumeStageFailed(volume_id=VID, reason="volume has no image"),
    node_events.VolumeUnstaging(volume_id=VID),
    node_events.VolumeUnstaged(volume_id=VID),
    node_events.VolumePublishing(volume_id=VID, target_path=TARGET, readonly=True, mount_flags=("ro",)),
    node_events.VolumePublished(volume_id=VID, target_path=TARGET),
    node_events.VolumePublishFailed(volume_id=VID, target_path=TARGET, reason="EPERM"),
    node_events.VolumeUnpublishing(volume_id=VID, target_path=TARGET),
    node_events.VolumeUnpublished(volume_id=VID, target_path=TARGET),
    node_events.VolumeStaging(volume_id=VID, staging_path="/staging/b", fs_type="", image=f"/pools/shared/{VID}.img", access_type="block"),
    node_events.VolumeExpandingOnNode(volume_id=VID, capacity_bytes=3 * 2**40),
    node_events.VolumeExpandedOnNode(volume_id=VID, capacity_bytes=3 * 2**40),
    node_events.VolumeExpandOnNodeFailed(volume_id=VID, reason="resize2fs failed"),
]

CASES = (
    [(volume_events.VOLUME_EVENTS, e) for e in VOLUME_EXAMPLES]
    + [(volume_events.SNAPSHOT_EVENTS, e) for e in SNAPSHOT_EXAMPLES]
    + [(node_events.NODE_VOLUME_EVENTS, e) for e in NODE_EXAMPLES]
)


def _members(annotated: typing.Any) -> set[type]:
    """The classes of an ``Annotated[A | B | ..., Field(discriminator=...)]`` union."""
    union = typing.get_args(annotated)[0]
    return set(typing.get_args(union))


@pytest.mark.parametrize(
    ("union", "examples"),
    [(volume_events.VolumeEvent, VOLUME_EXAMPLES), (volume_events.SnapshotEvent, SNAPSHOT_EXAMPLES), (node_events.NodeVolumeEvent, NODE_EXAMPLES)],
)
def test_examples_cover_every_event_type_of_the_union(union: typing.Any, examples: list[BaseModel]) -> None:
    members = _members(union)
    assert len(members) >= 5
    assert {type(e) for e in examples} == members


@pytest.mark.parametrize(("adapter", "event"), CASES, ids=[type(e).__name__ for _, e in CASES])
def test_event_round_trips_to_an_equal_event_of_the_same_type(adapter: TypeAdapter[typing.Any], event: BaseModel) -> None:
    data = codec.encode(event)

    decoded = codec.decode(adapter, data)

    assert isinstance(data, bytes)
    assert type(decoded) is type(event)
    assert decoded == event
    assert decoded.at == event.at  # type: ignore[attr-defined]
    # Re-encoding is stable: the bytes a projection stores do not drift on replay.
    assert codec.encode(decoded) == data


def test_tuples_come_back_as_tuples_so_frozen_states_stay_hashable() -> None:
    event = VOLUME_EXAMPLES[0]
    decoded = codec.decode(volume_events.VOLUME_EVENTS, codec.encode(event))
    assert isinstance(decoded.capabilities, tuple)  # type: ignore[union-attr]
    assert isinstance(decoded.capabilities[0].mount_flags, tuple)  # type: ignore[union-attr]
    hash(decoded.capabilities)  # type: ignore[union-attr]


@pytest.mark.parametrize("adapter", [volume_events.VOLUME_EVENTS, node_events.NODE_VOLUME_EVENTS])
def test_unknown_type_is_refused(adapter: TypeAdapter[typing.Any]) -> None:
    data = codec.pack({"type": "VolumeExploded", "volume_id": VID, "at": 1})
    with pytest.raises(ValidationError):
        codec.decode(adapter, data)


@pytest.mark.parametrize("adapter", [volume_events.VOLUME_EVENTS, node_events.NODE_VOLUME_EVENTS])
def test_missing_type_is_refused(adapter: TypeAdapter[typing.Any]) -> None:
    with pytest.raises(ValidationError):
        codec.decode(adapter, codec.pack({"volume_id": VID, "at": 1}))


def test_an_event_of_the_other_aggregate_is_refused() -> None:
    with pytest.raises(ValidationError):
        codec.decode(volume_events.VOLUME_EVENTS, codec.encode(NODE_EXAMPLES[0]))
    with pytest.raises(ValidationError):
        codec.decode(node_events.NODE_VOLUME_EVENTS, codec.encode(VOLUME_EXAMPLES[0]))


def test_unknown_field_is_refused() -> None:
    raw = VOLUME_EXAMPLES[1].model_dump() | {"smuggled": "x"}
    with pytest.raises(ValidationError):
        codec.decode(volume_events.VOLUME_EVENTS, codec.pack(raw))


def test_missing_required_field_is_refused() -> None:
    raw = NODE_EXAMPLES[1].model_dump()
    del raw["device"]
    with pytest.raises(ValidationError):
        codec.decode(node_events.NODE_VOLUME_EVENTS, codec.pack(raw))
