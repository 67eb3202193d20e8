"""The snapshot aggregate: a sparse copy of a volume's image, taken once, read-only.

    intent = decide_create_snapshot(state, cmd, source=volume_state)   # SnapshotCreating or None

A snapshot's id is derived from its name as a volume's is (in its own namespace), so
CreateSnapshot is idempotent by name. Snapshots are full sparse copies: a volume may be
deleted while its snapshots live on, and a snapshot while volumes restored from it live
on (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from volplane.commands import CreateSnapshot
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OperationPending
from volplane.events import Frozen

from .events import (
    MemberSnapshotCreating,
    SnapshotCreated,
    SnapshotCreateFailed,
    SnapshotCreating,
    SnapshotDeleted,
    SnapshotDeleting,
    SnapshotEvent,
)
from .volume import MAX_NAME, VolumeState

SnapshotPhase = Literal["creating", "ready", "failed", "deleting", "deleted"]


class SnapshotState(Frozen):
    snapshot_id: str
    name: str
    source_volume_id: str
    pool: str
    size_bytes: int
    parameters: dict[str, str]
    phase: SnapshotPhase
    version: int
    created_at: int
    group_snapshot_id: str = ""  # a member of this volume group snapshot


def snapshot_id_for(name: str) -> str:
    return hashlib.sha256(f"snapshot:{name}".encode()).hexdigest()[:32]


def decide_create_snapshot(state: SnapshotState | None, cmd: CreateSnapshot, source: VolumeState | None) -> SnapshotCreating | None:
    size = len(cmd.name.encode())
    if not cmd.name or size > MAX_NAME:
        raise InvalidArgument(f"name: must be 1 to {MAX_NAME} bytes, got {size}")
    if state is not None and state.phase not in ("deleted", "failed"):
        if state.source_volume_id != cmd.source_volume_id:
            raise AlreadyExists(f"snapshot {cmd.name!r} exists for another volume ({state.source_volume_id})")
        if state.phase == "deleting":
            raise OperationPending(f"snapshot {cmd.name!r} is being deleted")
        return None
    if source is None or source.phase in ("deleted", "failed"):
        raise NotFound(f"source volume {cmd.source_volume_id} does not exist")
    if source.phase != "ready":
        raise FailedPrecondition(f"source volume {cmd.source_volume_id} is {source.phase}")
    return SnapshotCreating(
        snapshot_id=snapshot_id_for(cmd.name),
        name=cmd.name,
        source_volume_id=cmd.source_volume_id,
        pool=source.pool,
        size_bytes=source.capacity_bytes,
        parameters=cmd.parameters,
    )


def decide_create_member(
    state: SnapshotState | None, snapshot_id: str, name: str, group_snapshot_id: str, source: VolumeState | None, source_volume_id: str
) -> MemberSnapshotCreating | None:
    """The intent of one member of a group snapshot, or None when it is already taken.

    A member's id is chosen by its group (``member_snapshot_id``), not derived from a name,
    so no CreateSnapshot can collide with it."""
    if state is not None and state.phase not in ("deleted", "failed"):
        if state.group_snapshot_id != group_snapshot_id or state.source_volume_id != source_volume_id:
            raise AlreadyExists(f"snapshot {snapshot_id} belongs to another group")
        return None
    if source is None or source.phase in ("deleted", "failed"):
        raise NotFound(f"source volume {source_volume_id} does not exist")
    if source.phase != "ready":
        raise FailedPrecondition(f"source volume {source_volume_id} is {source.phase}")
    return MemberSnapshotCreating(
        snapshot_id=snapshot_id,
        name=name,
        source_volume_id=source_volume_id,
        pool=source.pool,
        size_bytes=source.capacity_bytes,
        group_snapshot_id=group_snapshot_id,
    )


def decide_delete_snapshot(state: SnapshotState | None, *, by_group: bool = False) -> SnapshotDeleting | None:
    """``by_group``: the member's own group deletes it; anyone else is refused a member."""
    if state is None or state.phase in ("deleted", "failed"):
        return None
    if state.group_snapshot_id and not by_group:
        # As csi-driver-host-path does: a member goes with its group (DeleteVolumeGroupSnapshot).
        raise FailedPrecondition(f"snapshot {state.snapshot_id} is part of group snapshot {state.group_snapshot_id}")
    if state.phase == "creating":
        raise OperationPending(f"snapshot {state.snapshot_id} is still being created")
    return SnapshotDeleting(snapshot_id=state.snapshot_id)


def evolve_snapshot(state: SnapshotState | None, event: SnapshotEvent, seq: int) -> SnapshotState | None:
    match event:
        case SnapshotCreating():
            return SnapshotState(
                snapshot_id=event.snapshot_id,
                name=event.name,
                source_volume_id=event.source_volume_id,
                pool=event.pool,
                size_bytes=event.size_bytes,
                parameters=event.parameters,
                phase="creating",
                version=seq,
                created_at=event.at,
            )
        case MemberSnapshotCreating():
            return SnapshotState(
                snapshot_id=event.snapshot_id,
                name=event.name,
                source_volume_id=event.source_volume_id,
                pool=event.pool,
                size_bytes=event.size_bytes,
                parameters={},
                phase="creating",
                version=seq,
                created_at=event.at,
                group_snapshot_id=event.group_snapshot_id,
            )
        case SnapshotCreated():
            assert state is not None
            return state.model_copy(update={"phase": "ready", "version": seq})
        case SnapshotCreateFailed():
            assert state is not None
            return state.model_copy(update={"phase": "failed", "version": seq})
        case SnapshotDeleting():
            assert state is not None
            return state.model_copy(update={"phase": "deleting", "version": seq})
        case SnapshotDeleted():
            assert state is not None
            return state.model_copy(update={"phase": "deleted", "version": seq})
    raise TypeError(f"unknown event {event!r}")
