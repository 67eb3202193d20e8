"""The volume group snapshot aggregate and its members: decide_create_group /
decide_delete_group / check_members, and a member's snapshot decisions.

Given events / when command / then events: states are folded from real events.
"""

from __future__ import annotations

from functools import reduce

import pytest

from services.provisioner.domain.events import (
    GroupSnapshotCreated,
    GroupSnapshotCreateFailed,
    GroupSnapshotCreating,
    GroupSnapshotDeleting,
    GroupSnapshotEvent,
    MemberSnapshotCreating,
    SnapshotCreated,
    VolumeCreated,
    VolumeCreating,
)
from services.provisioner.domain.group_snapshot import (
    GroupSnapshotState,
    check_members,
    decide_create_group,
    decide_delete_group,
    evolve_group,
    group_snapshot_id_for,
    member_snapshot_id,
)
from services.provisioner.domain.snapshot import decide_create_member, decide_delete_snapshot, evolve_snapshot, snapshot_id_for
from services.provisioner.domain.volume import VolumeState, evolve, volume_id_for
from volplane.commands import CreateGroupSnapshot
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OperationPending
from volplane.volumes import StoredCapability

NAME = "group-1"
GID = group_snapshot_id_for(NAME)
A, B, C = (volume_id_for(n) for n in ("a", "b", "c"))


def volume(vid: str, ready: bool = True) -> VolumeState:
    events: list[VolumeCreating | VolumeCreated] = [VolumeCreating(volume_id=vid, name=vid, pool="shared", capacity_bytes=2**20, capabilities=(StoredCapability(),))]
    if ready:
        events.append(VolumeCreated(volume_id=vid))
    state = reduce(lambda s, pair: evolve(s, pair[1], pair[0]), enumerate(events, start=1), None)
    assert state is not None
    return state


SOURCES: dict[str, VolumeState | None] = {A: volume(A), B: volume(B), C: volume(C)}


def given(*events: GroupSnapshotEvent) -> GroupSnapshotState | None:
    return reduce(lambda s, pair: evolve_group(s, pair[1], pair[0]), enumerate(events, start=1), None)


def creating(*vids: str, parameters: dict[str, str] | None = None) -> GroupSnapshotCreating:
    intent = decide_create_group(None, CreateGroupSnapshot(name=NAME, source_volume_ids=vids, parameters=parameters or {}), SOURCES)
    assert intent is not None
    return intent


def test_new_group_names_one_member_per_source_in_their_order() -> None:
    intent = creating(A, B)
    assert intent.group_snapshot_id == GID
    assert intent.source_volume_ids == (A, B)
    assert intent.snapshot_ids == (member_snapshot_id(GID, A), member_snapshot_id(GID, B))


def test_member_ids_are_out_of_reach_of_snapshot_names() -> None:
    assert member_snapshot_id(GID, A) != snapshot_id_for(f"{NAME}/{A}")
    assert member_snapshot_id(GID, A) != member_snapshot_id(group_snapshot_id_for("other"), A)


def test_same_name_same_sources_in_any_order_is_the_existing_group() -> None:
    state = given(creating(A, B, parameters={"k": "v"}), GroupSnapshotCreated(group_snapshot_id=GID))
    assert decide_create_group(state, CreateGroupSnapshot(name=NAME, source_volume_ids=(B, A), parameters={"k": "v"}), SOURCES) is None


@pytest.mark.parametrize(("sources", "parameters"), [((A, C), {"k": "v"}), ((A,), {"k": "v"}), ((A, B), {"k": "w"}), ((A, B), {})])
def test_same_name_with_other_sources_or_parameters_already_exists(sources: tuple[str, ...], parameters: dict[str, str]) -> None:
    state = given(creating(A, B, parameters={"k": "v"}), GroupSnapshotCreated(group_snapshot_id=GID))
    with pytest.raises(AlreadyExists):
        decide_create_group(state, CreateGroupSnapshot(name=NAME, source_volume_ids=sources, parameters=parameters), SOURCES)


def test_a_failed_or_deleted_group_name_is_taken_anew() -> None:
    failed = given(creating(A), GroupSnapshotCreateFailed(group_snapshot_id=GID, reason="x"))
    assert decide_create_group(failed, CreateGroupSnapshot(name=NAME, source_volume_ids=(A, B)), SOURCES) is not None


@pytest.mark.parametrize(
    ("sources", "error"),
    [((), InvalidArgument), ((A, A), InvalidArgument), ((A, volume_id_for("nope")), NotFound), (("not-an-id",), NotFound)],
)
def test_bad_sources_are_refused(sources: tuple[str, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        decide_create_group(None, CreateGroupSnapshot(name=NAME, source_volume_ids=sources), SOURCES)


def test_a_source_not_ready_cannot_be_cut() -> None:
    with pytest.raises(FailedPrecondition):
        decide_create_group(None, CreateGroupSnapshot(name=NAME, source_volume_ids=(A,)), {A: volume(A, ready=False)})


def test_snapshot_ids_given_must_be_the_groups_members() -> None:
    state = given(creating(A, B))
    assert state is not None
    check_members(state, ())
    check_members(state, tuple(reversed(state.snapshot_ids)))
    for wrong in (state.snapshot_ids[:1], (*state.snapshot_ids, "x")):
        with pytest.raises(InvalidArgument):
            check_members(state, wrong)


def test_delete_of_a_group_being_created_is_pending_and_of_none_is_nothing() -> None:
    with pytest.raises(OperationPending):
        decide_delete_group(given(creating(A)))
    assert decide_delete_group(None) is None
    intent = decide_delete_group(given(creating(A), GroupSnapshotCreated(group_snapshot_id=GID)))
    assert isinstance(intent, GroupSnapshotDeleting) and intent.group_snapshot_id == GID


def test_a_member_is_deleted_only_by_its_group() -> None:
    sid = member_snapshot_id(GID, A)
    member = evolve_snapshot(
        evolve_snapshot(
            None,
            MemberSnapshotCreating(snapshot_id=sid, name=f"{NAME}/{A}", source_volume_id=A, pool="shared", size_bytes=2**20, group_snapshot_id=GID),
            1,
        ),
        SnapshotCreated(snapshot_id=sid),
        2,
    )
    assert member is not None and member.group_snapshot_id == GID and member.phase == "ready"
    with pytest.raises(FailedPrecondition):
        decide_delete_snapshot(member)
    assert decide_delete_snapshot(member, by_group=True) is not None
    # Asking again for the same member of the same group changes nothing.
    assert decide_create_member(member, sid, f"{NAME}/{A}", GID, SOURCES[A], A) is None
