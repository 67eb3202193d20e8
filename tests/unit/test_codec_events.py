"""Every event of both aggregates survives volplane.codec: encode → bytes → decode; an
event stored in an older schema version is upcast on the way in.

The examples are listed by hand, and a guard test checks that the list covers every
member of each discriminated union, so a new event type cannot slip in untested.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from services.nodeagent.domain import events as node_events
from services.provisioner.domain import events as volume_events
from volplane import codec
from volplane.events import VERSION_KEY, Event, Upcaster, renamed
from volplane.volumes import StoredCapability, StoredContentSource

VID = "0123456789abcdef0123456789abcdef"
TARGET = "/var/lib/kubelet/pods/p1/volumes/v1"

VOLUME_EXAMPLES: list[BaseModel] = [
    volume_events.VolumeCreating(
        volume_id=VID,
        name="pvc-ü-1",  # non-ASCII survives msgpack's str type
        pool="default",
        capacity_bytes=5 * 2**40,  # beyond 32 bits
        capabilities=(
            StoredCapability(access_type="mount", fs_type="ext4", mount_flags=("noatime", "nodev"), access_mode=7),
            StoredCapability(access_type="block", access_mode=1),
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
        volume_id=VID, name="clone", pool="shared", capacity_bytes=2**30, capabilities=(StoredCapability(),),
        content_source=StoredContentSource(kind="snapshot", id=VID),
    ),
    volume_events.VolumeModifying(volume_id=VID, limits={"writeIOPS": 50, "readBytesPerSecond": 10 * 2**20}),
    volume_events.VolumeModified(volume_id=VID),
]

SNAPSHOT_EXAMPLES: list[BaseModel] = [
    volume_events.SnapshotCreating(snapshot_id=VID, name="snap-1", source_volume_id=VID, pool="node-1", size_bytes=2**30, parameters={"a": "b"}),
    volume_events.SnapshotCreated(snapshot_id=VID),
    volume_events.SnapshotCreateFailed(snapshot_id=VID, reason="source image is gone"),
    volume_events.SnapshotDeleting(snapshot_id=VID),
    volume_events.SnapshotDeleted(snapshot_id=VID),
    volume_events.MemberSnapshotCreating(snapshot_id=VID, name="g-1/v", source_volume_id=VID, pool="shared", size_bytes=2**20, group_snapshot_id=VID),
]
GROUP_SNAPSHOT_EXAMPLES: list[BaseModel] = [
    volume_events.GroupSnapshotCreating(group_snapshot_id=VID, name="g-1", source_volume_ids=(VID,), snapshot_ids=(VID,), parameters={"a": "b"}),
    volume_events.GroupSnapshotCreated(group_snapshot_id=VID),
    volume_events.GroupSnapshotCreateFailed(group_snapshot_id=VID, reason="node-1 cannot freeze"),
    volume_events.GroupSnapshotDeleting(group_snapshot_id=VID),
    volume_events.GroupSnapshotDeleted(group_snapshot_id=VID),
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
    node_events.VolumeIoLimitsApplied(volume_id=VID, device="/dev/loop3", limits={"writeIOPS": 50}),
]

CASES = (
    [(volume_events.VOLUME_EVENTS, e) for e in VOLUME_EXAMPLES]
    + [(volume_events.SNAPSHOT_EVENTS, e) for e in SNAPSHOT_EXAMPLES]
    + [(volume_events.GROUP_SNAPSHOT_EVENTS, e) for e in GROUP_SNAPSHOT_EXAMPLES]
    + [(node_events.NODE_VOLUME_EVENTS, e) for e in NODE_EXAMPLES]
)


def _members(annotated: typing.Any) -> set[type]:
    """The classes of an ``Annotated[A | B | ..., Field(discriminator=...)]`` union."""
    union = typing.get_args(annotated)[0]
    return set(typing.get_args(union))


@pytest.mark.parametrize(
    ("union", "examples"),
    [(volume_events.VolumeEvent, VOLUME_EXAMPLES), (volume_events.SnapshotEvent, SNAPSHOT_EXAMPLES),
     (volume_events.GroupSnapshotEvent, GROUP_SNAPSHOT_EXAMPLES), (node_events.NodeVolumeEvent, NODE_EXAMPLES)],
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
    assert decoded.at == event.at  # type: ignore[attr-defined]  # every example is an Event, listed as BaseModel
    # Re-encoding is stable: the bytes a projection stores do not drift on replay.
    assert codec.encode(decoded) == data


def test_tuples_come_back_as_tuples_so_frozen_states_stay_hashable() -> None:
    event = VOLUME_EXAMPLES[0]
    decoded = codec.decode(volume_events.VOLUME_EVENTS, codec.encode(event))
    assert isinstance(decoded.capabilities, tuple)  # type: ignore[union-attr]  # the union's VolumeCreating member
    assert isinstance(decoded.capabilities[0].mount_flags, tuple)  # type: ignore[union-attr]  # as above
    hash(decoded.capabilities)  # type: ignore[union-attr]  # as above


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


# -- schema versions -------------------------------------------------------------
#
# A test aggregate whose one event changed twice: version 1 stored ``size`` in MiB,
# version 2 renamed it ``mib``, version 3 stores ``capacity_bytes``.


class Resized(Event):
    schema_version: ClassVar[int] = 3
    upcasters: ClassVar[Mapping[int, Upcaster]] = {
        1: renamed("size", "mib"),
        2: lambda fields: {**{k: v for k, v in fields.items() if k != "mib"}, "capacity_bytes": fields["mib"] << 20},
    }

    type: Literal["Resized"] = "Resized"
    volume_id: str
    capacity_bytes: int


class Touched(Event):
    type: Literal["Touched"] = "Touched"
    volume_id: str


TEST_EVENTS: TypeAdapter[Resized | Touched] = TypeAdapter(Annotated[Resized | Touched, Field(discriminator="type")])


def test_version_1_events_are_stored_without_a_version_as_before_versions_existed() -> None:
    for event in VOLUME_EXAMPLES + SNAPSHOT_EXAMPLES + NODE_EXAMPLES + [Touched(volume_id=VID)]:
        assert type(event).schema_version == 1  # type: ignore[attr-defined]  # every example is an Event, listed as BaseModel
        assert VERSION_KEY not in codec.unpack(codec.encode(event))


def test_an_event_of_a_later_version_is_stored_with_it() -> None:
    stored = codec.unpack(codec.encode(Resized(volume_id=VID, capacity_bytes=2**30, at=5)))
    assert stored == {"at": 5, "type": "Resized", "volume_id": VID, "capacity_bytes": 2**30, VERSION_KEY: 3}


@pytest.mark.parametrize(
    "stored",
    [
        {"type": "Resized", "volume_id": VID, "size": 1024, "at": 5},  # version 1: no version stored
        {"type": "Resized", "volume_id": VID, "mib": 1024, "at": 5, VERSION_KEY: 2},
        {"type": "Resized", "volume_id": VID, "capacity_bytes": 2**30, "at": 5, VERSION_KEY: 3},
    ],
    ids=["v1", "v2", "v3"],
)
def test_decode_upcasts_every_older_version_to_the_current_shape(stored: dict[str, typing.Any]) -> None:
    event = codec.decode(TEST_EVENTS, codec.pack(stored))

    assert event == Resized(volume_id=VID, capacity_bytes=2**30, at=5)
    # Written back, it is stored in the current version.
    assert codec.unpack(codec.encode(event))[VERSION_KEY] == 3


def test_an_event_built_in_code_has_the_current_shape() -> None:
    event = Resized(volume_id=VID, capacity_bytes=1)
    assert Resized.model_validate(event.model_dump()) == event


def test_a_version_newer_than_the_code_is_refused() -> None:
    with pytest.raises(ValidationError, match="schema versions 1 to 3"):
        codec.decode(TEST_EVENTS, codec.pack({"type": "Resized", "volume_id": VID, "capacity_bytes": 1, "at": 5, VERSION_KEY: 4}))


def test_an_old_shape_is_not_taken_for_the_current_one_outside_decode() -> None:
    with pytest.raises(ValidationError, match=r"volplane\.codec\.decode"):
        Resized.model_validate({"type": "Resized", "volume_id": VID, "mib": 1, "at": 5, VERSION_KEY: 2})


def test_a_version_1_event_stored_with_its_version_decodes_too() -> None:
    event = codec.decode(TEST_EVENTS, codec.pack({"type": "Touched", "volume_id": VID, "at": 5, VERSION_KEY: 1}))
    assert event == Touched(volume_id=VID, at=5)
