"""The volume group snapshot aggregate: one consistent cut across several volumes.

    intent = decide_create_group(state, cmd, sources)   # GroupSnapshotCreating or None

A group's id is derived from its name (in its own namespace), so CreateVolumeGroupSnapshot
is idempotent by name; the same name with other source volumes or parameters is
ALREADY_EXISTS. Its members are ordinary snapshots whose ids the group derives from its
own id and each source volume (``member_snapshot_id``), named in the intent before any is
taken: a crash after the intent is finished from the log alone (``GroupSnapshotsApp.recover``).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from volplane.commands import CreateGroupSnapshot
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OperationPending
from volplane.events import Frozen
from volplane.ids import is_volume_id

from .events import (
    GroupSnapshotCreated,
    GroupSnapshotCreateFailed,
    GroupSnapshotCreating,
    GroupSnapshotDeleted,
    GroupSnapshotDeleting,
    GroupSnapshotEvent,
)
from .volume import MAX_NAME, VolumeState

GroupPhase = Literal["creating", "ready", "failed", "deleting", "deleted"]


class GroupSnapshotState(Frozen):
    group_snapshot_id: str
    name: str
    source_volume_ids: tuple[str, ...]
    snapshot_ids: tuple[str, ...]
    parameters: dict[str, str]
    phase: GroupPhase
    version: int
    created_at: int


def group_snapshot_id_for(name: str) -> str:
    return hashlib.sha256(f"groupsnapshot:{name}".encode()).hexdigest()[:32]


def member_snapshot_id(group_snapshot_id: str, volume_id: str) -> str:
    """The id of the group's snapshot of ``volume_id``: a namespace no snapshot name reaches."""
    return hashlib.sha256(f"groupmember:{group_snapshot_id}:{volume_id}".encode()).hexdigest()[:32]


def decide_create_group(
    state: GroupSnapshotState | None, cmd: CreateGroupSnapshot, sources: dict[str, VolumeState | None]
) -> GroupSnapshotCreating | None:
    """``sources``: each requested volume's state (None: unknown). None when the group exists as asked."""
    size = len(cmd.name.encode())
    if not cmd.name or size > MAX_NAME:
        raise InvalidArgument(f"name: must be 1 to {MAX_NAME} bytes, got {size}")
    if not cmd.source_volume_ids:
        raise InvalidArgument("source_volume_ids: at least one volume is required")
    if len(set(cmd.source_volume_ids)) != len(cmd.source_volume_ids):
        raise InvalidArgument("source_volume_ids: a volume is listed twice")
    if state is not None and state.phase not in ("deleted", "failed"):
        if set(state.source_volume_ids) != set(cmd.source_volume_ids) or state.parameters != cmd.parameters:
            raise AlreadyExists(f"group snapshot {cmd.name!r} exists for other source volumes or parameters")
        if state.phase == "deleting":
            raise OperationPending(f"group snapshot {cmd.name!r} is being deleted")
        return None
    for vid in cmd.source_volume_ids:
        source = sources.get(vid) if is_volume_id(vid) else None
        if source is None or source.phase in ("deleted", "failed"):
            raise NotFound(f"source volume {vid[:128]!r} does not exist")
        if source.phase != "ready":
            raise FailedPrecondition(f"source volume {vid} is {source.phase}")
    gid = group_snapshot_id_for(cmd.name)
    return GroupSnapshotCreating(
        group_snapshot_id=gid,
        name=cmd.name,
        source_volume_ids=cmd.source_volume_ids,
        snapshot_ids=tuple(member_snapshot_id(gid, v) for v in cmd.source_volume_ids),
        parameters=cmd.parameters,
    )


def check_members(state: GroupSnapshotState, snapshot_ids: tuple[str, ...]) -> None:
    """The CO's list of the group's snapshots, when it gives one, must be the group's own."""
    if snapshot_ids and set(snapshot_ids) != set(state.snapshot_ids):
        raise InvalidArgument(f"snapshot_ids: do not match the members of group snapshot {state.group_snapshot_id}")


def decide_delete_group(state: GroupSnapshotState | None, snapshot_ids: tuple[str, ...] = ()) -> GroupSnapshotDeleting | None:
    if state is None or state.phase in ("deleted", "failed"):
        return None
    check_members(state, snapshot_ids)
    if state.phase == "creating":
        raise OperationPending(f"group snapshot {state.group_snapshot_id} is still being created")
    if state.phase == "deleting":
        return None
    return GroupSnapshotDeleting(group_snapshot_id=state.group_snapshot_id)


def evolve_group(state: GroupSnapshotState | None, event: GroupSnapshotEvent, seq: int) -> GroupSnapshotState | None:
    match event:
        case GroupSnapshotCreating():
            return GroupSnapshotState(
                group_snapshot_id=event.group_snapshot_id,
                name=event.name,
                source_volume_ids=event.source_volume_ids,
                snapshot_ids=event.snapshot_ids,
                parameters=event.parameters,
                phase="creating",
                version=seq,
                created_at=event.at,
            )
        case GroupSnapshotCreated():
            assert state is not None
            return state.model_copy(update={"phase": "ready", "version": seq})
        case GroupSnapshotCreateFailed():
            assert state is not None
            return state.model_copy(update={"phase": "failed", "version": seq})
        case GroupSnapshotDeleting():
            assert state is not None
            return state.model_copy(update={"phase": "deleting", "version": seq})
        case GroupSnapshotDeleted():
            assert state is not None
            return state.model_copy(update={"phase": "deleted", "version": seq})
    raise TypeError(f"unknown event {event!r}")
