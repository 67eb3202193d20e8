"""The volume aggregate's state, ``evolve`` and ``decide`` — pure functions.

    state = reduce(evolve, events, None)
    intent = decide_create(state, spec)     # VolumeCreating, or None when it already exists

A volume's id is derived from its name, so CreateVolume is idempotent by name without
a separate name index: the same name always lands on the same aggregate. A name that
comes back after its volume was deleted reuses the id (a new incarnation on the same
subject); callers that keep an old id see the new volume — the CSI spec allows this,
since ids are only meaningful while the volume exists.
"""

from __future__ import annotations

from typing import Literal

from volplane.commands import Capability, ContentSource, CreateVolume
from volplane.errors import AlreadyExists, InvalidArgument, NotFound, OperationPending, OutOfRange
from volplane.events import Frozen
from volplane.ids import is_volume_id, volume_id_for

from .events import (
    VolumeCreated,
    VolumeCreateFailed,
    VolumeCreating,
    VolumeDeleted,
    VolumeDeleting,
    VolumeEvent,
    VolumeExpanded,
    VolumeExpandFailed,
    VolumeExpanding,
)

__all__ = ["VolumeState", "decide_create", "decide_delete", "decide_expand", "evolve", "resolve_size", "is_volume_id", "volume_id_for"]

BLOCK = 4096
MiB = 2**20
GiB = 2**30
DEFAULT_SIZE = 1 * GiB
# Small enough for tests, large enough for ext4 with its journal; xfs needs 300 MiB.
MIN_SIZE = 32 * MiB
MIN_SIZE_XFS = 300 * MiB
MAX_NAME = 128

# CSI AccessMode.Mode numbers a single-node filesystem or block volume can serve.
SINGLE_NODE_MODES = frozenset({1, 2, 6, 7})  # WRITER, READER_ONLY, SINGLE_WRITER, MULTI_WRITER
FS_TYPES = frozenset({"ext4", "xfs"})

Phase = Literal["creating", "ready", "expanding", "failed", "deleting", "deleted"]


class VolumeState(Frozen):
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    capabilities: tuple[Capability, ...]
    parameters: dict[str, str]
    phase: Phase
    version: int  # stream sequence of this aggregate's last event
    created_at: int
    content_source: ContentSource | None = None
    expand_from: int = 0  # the size an expansion in flight started from


def resolve_size(required: int, limit: int, minimum: int = MIN_SIZE) -> int:
    """The size to create for a CSI CapacityRange: whole MiB where the range allows,
    else whole 4 KiB blocks (loop devices need whole sectors).

    >>> resolve_size(0, 0) == DEFAULT_SIZE
    True
    >>> resolve_size(0, 100 * MiB + 1) == 100 * MiB
    True
    """
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range: bytes must not be negative")
    if limit and required > limit:
        raise OutOfRange(f"capacity_range: required_bytes {required} exceeds limit_bytes {limit}")
    if required:
        size = max(minimum, _round_up(required, MiB))
        if limit and size > limit:
            size = max(minimum, _round_up(required, BLOCK))
    else:
        size = max(minimum, min(DEFAULT_SIZE, limit // MiB * MiB) if limit else DEFAULT_SIZE)
    if limit and size > limit:
        raise OutOfRange(f"capacity_range: no size of whole blocks of at least {minimum} bytes fits in [{required}, {limit}]")
    return size


def minimum_size(cmd: CreateVolume) -> int:
    mount = any(c.access_type == "mount" for c in cmd.capabilities)
    return MIN_SIZE_XFS if mount and fs_type_of(cmd) == "xfs" else MIN_SIZE


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def check_capabilities(caps: tuple[Capability, ...]) -> None:
    if not caps:
        raise InvalidArgument("volume_capabilities: at least one capability is required")
    for cap in caps:
        if cap.access_mode not in SINGLE_NODE_MODES:
            raise InvalidArgument(f"volume_capabilities: access mode {cap.access_mode} is not supported (single-node modes only)")
        if cap.access_type == "mount" and cap.fs_type and cap.fs_type not in FS_TYPES:
            raise InvalidArgument(f"volume_capabilities: fs_type {cap.fs_type!r} is not supported (ext4, xfs)")


def fs_type_of(cmd: CreateVolume) -> str:
    fs = effective_fs_type(cmd.parameters, cmd.capabilities)
    if fs not in FS_TYPES:
        raise InvalidArgument(f"parameters.fsType: {fs!r} is not supported (ext4, xfs)")
    return fs


def effective_fs_type(parameters: dict[str, str], capabilities: tuple[Capability, ...]) -> str:
    """The filesystem a volume gets: the ``fsType`` parameter, else a capability's, else ext4."""
    return parameters.get("fsType", "") or next((c.fs_type for c in capabilities if c.fs_type), "") or "ext4"


def decide_create(state: VolumeState | None, cmd: CreateVolume, *, pool: str, size: int) -> VolumeCreating | None:
    """The intent to record, or None when a compatible volume of that name exists."""
    if state is None or state.phase in ("deleted", "failed"):
        return VolumeCreating(
            volume_id=volume_id_for(cmd.name),
            name=cmd.name,
            pool=pool,
            capacity_bytes=size,
            capabilities=cmd.capabilities,
            parameters=cmd.parameters,
            content_source=cmd.content_source,
        )
    if state.phase == "deleting":
        raise OperationPending(f"volume {cmd.name!r} is being deleted")
    _check_compatible(state, cmd)
    return None


def _check_compatible(state: VolumeState, cmd: CreateVolume) -> None:
    if cmd.required_bytes and state.capacity_bytes < cmd.required_bytes:
        raise AlreadyExists(f"volume {cmd.name!r} exists with {state.capacity_bytes} bytes, less than required {cmd.required_bytes}")
    if cmd.limit_bytes and state.capacity_bytes > cmd.limit_bytes:
        raise AlreadyExists(f"volume {cmd.name!r} exists with {state.capacity_bytes} bytes, more than limit {cmd.limit_bytes}")
    if {c.access_type for c in cmd.capabilities} != {c.access_type for c in state.capabilities}:
        raise AlreadyExists(f"volume {cmd.name!r} exists with another access type")
    if cmd.parameters != state.parameters:
        raise AlreadyExists(f"volume {cmd.name!r} exists with other parameters")
    wanted = effective_fs_type(cmd.parameters, cmd.capabilities)
    have = effective_fs_type(state.parameters, state.capabilities)
    if any(c.access_type == "mount" for c in cmd.capabilities) and wanted != have:
        raise AlreadyExists(f"volume {cmd.name!r} exists with {have}, not {wanted}")
    if cmd.content_source != state.content_source:
        raise AlreadyExists(f"volume {cmd.name!r} exists with another content source")


def decide_delete(state: VolumeState | None) -> VolumeDeleting | None:
    """The intent to record, or None when there is nothing to delete."""
    if state is None or state.phase in ("deleted", "failed"):
        return None
    if state.phase in ("creating", "expanding"):
        raise OperationPending(f"volume {state.volume_id} is still being {state.phase[:-3]}ed")
    return VolumeDeleting(volume_id=state.volume_id)


def decide_expand(state: VolumeState | None, volume_id: str, size: int) -> VolumeExpanding | None:
    """The intent to grow to ``size``, or None when the volume is already that big."""
    if state is None or state.phase in ("deleted", "failed"):
        raise NotFound(f"volume {volume_id} does not exist")
    if state.phase in ("creating", "deleting", "expanding"):
        raise OperationPending(f"volume {volume_id} is {state.phase}")
    if size <= state.capacity_bytes:
        return None
    return VolumeExpanding(volume_id=volume_id, capacity_bytes=size, previous_bytes=state.capacity_bytes)


def evolve(state: VolumeState | None, event: VolumeEvent, seq: int) -> VolumeState | None:
    match event:
        case VolumeCreating():
            return VolumeState(
                volume_id=event.volume_id,
                name=event.name,
                pool=event.pool,
                capacity_bytes=event.capacity_bytes,
                capabilities=event.capabilities,
                parameters=event.parameters,
                phase="creating",
                version=seq,
                created_at=event.at,
                content_source=event.content_source,
            )
        case VolumeCreated():
            assert state is not None
            return state.model_copy(update={"phase": "ready", "version": seq})
        case VolumeCreateFailed():
            assert state is not None
            return state.model_copy(update={"phase": "failed", "version": seq})
        case VolumeExpanding():
            assert state is not None
            return state.model_copy(update={"phase": "expanding", "capacity_bytes": event.capacity_bytes, "expand_from": event.previous_bytes, "version": seq})
        case VolumeExpanded() | VolumeExpandFailed():
            assert state is not None
            return state.model_copy(update={"phase": "ready", "capacity_bytes": event.capacity_bytes, "expand_from": 0, "version": seq})
        case VolumeDeleting():
            assert state is not None
            return state.model_copy(update={"phase": "deleting", "version": seq})
        case VolumeDeleted():
            assert state is not None
            return state.model_copy(update={"phase": "deleted", "version": seq})
    raise TypeError(f"unknown event {event!r}")
