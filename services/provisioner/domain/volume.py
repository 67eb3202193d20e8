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

from pydantic import Field

from volplane import volumes
from volplane.commands import Capability, CreateVolume
from volplane.errors import AlreadyExists, InvalidArgument, NotFound, OperationPending
from volplane.events import Frozen
from volplane.ids import is_volume_id, volume_id_for
from volplane.volumes import (
    BLOCK,
    DEFAULT_SIZE,
    FS_TYPE_KEY,
    FS_TYPES,
    MIN_SIZE,
    SINGLE_NODE_MODES,
    GiB,
    MiB,
    StoredCapability,
    StoredContentSource,
    resolve_size,
)

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
    VolumeModified,
    VolumeModifying,
)

# The volume rules live in volplane.volumes; their names stay importable from here too.
__all__ = [
    "BLOCK",
    "DEFAULT_SIZE",
    "FS_TYPES",
    "MAX_NAME",
    "MIN_SIZE",
    "MIN_SIZE_XFS",
    "SINGLE_NODE_MODES",
    "GiB",
    "MiB",
    "VolumeState",
    "check_capabilities",
    "decide_create",
    "decide_delete",
    "decide_expand",
    "decide_modify",
    "effective_fs_type",
    "evolve",
    "fs_type_of",
    "is_volume_id",
    "minimum_size",
    "resolve_size",
    "volume_id_for",
]

MIN_SIZE_XFS = volumes.minimum_size("xfs")
MAX_NAME = 128

Phase = Literal["creating", "ready", "expanding", "failed", "deleting", "deleted"]


class VolumeState(Frozen):
    volume_id: str
    name: str
    pool: str
    capacity_bytes: int
    capabilities: tuple[StoredCapability, ...]
    parameters: dict[str, str]
    phase: Phase
    version: int  # stream sequence of this aggregate's last event
    created_at: int
    content_source: StoredContentSource | None = None
    expand_from: int = 0  # the size an expansion in flight started from
    # The volume's I/O limits (volplane.volumes.io_limits), zeros left out.
    limits: dict[str, int] = Field(default_factory=dict)
    # Limits were decided (VolumeModifying) and not yet applied on every node (VolumeModified).
    modifying: bool = False
    # Whether limits were ever decided for this incarnation: a retried CreateVolume may
    # still set its mutable parameters only while this is False.
    modified: bool = False


def minimum_size(cmd: CreateVolume) -> int:
    """The smallest volume ``cmd`` may get: its filesystem's minimum, or the block minimum."""
    mount = any(c.access_type == "mount" for c in cmd.capabilities)
    return volumes.minimum_size(fs_type_of(cmd)) if mount else MIN_SIZE


def check_capabilities(caps: tuple[Capability, ...]) -> None:
    if not caps:
        raise InvalidArgument("volume_capabilities: at least one capability is required")
    for cap in caps:
        volumes.check_access_mode("volume_capabilities", cap.access_mode)
        if cap.access_type == "mount" and cap.fs_type:
            volumes.check_fs_type("volume_capabilities.fs_type", cap.fs_type)


def fs_type_of(cmd: CreateVolume) -> str:
    """The filesystem ``cmd`` asks for (``volplane.volumes.fs_type_of``), or InvalidArgument when
    a capability or the ``fsType`` parameter names one volplane does not format — the
    parameter is checked even when a capability overrides it."""
    for cap in cmd.capabilities:
        if cap.access_type == "mount" and cap.fs_type:
            volumes.check_fs_type("volume_capabilities.fs_type", cap.fs_type)
    if cmd.parameters.get(FS_TYPE_KEY):
        volumes.check_fs_type(f"parameters.{FS_TYPE_KEY}", cmd.parameters[FS_TYPE_KEY])
    return effective_fs_type(cmd.parameters, cmd.capabilities)


def effective_fs_type(parameters: dict[str, str], capabilities: tuple[Capability, ...] | tuple[StoredCapability, ...]) -> str:
    """The filesystem a volume gets: a capability's, else the ``fsType`` parameter, else ext4."""
    return volumes.fs_type_of(capabilities, parameters)


def decide_create(state: VolumeState | None, cmd: CreateVolume, *, pool: str, size: int) -> VolumeCreating | None:
    """The intent to record, or None when a compatible volume of that name exists."""
    if state is None or state.phase in ("deleted", "failed"):
        return VolumeCreating(
            volume_id=volume_id_for(cmd.name),
            name=cmd.name,
            pool=pool,
            capacity_bytes=size,
            capabilities=tuple(c.stored() for c in cmd.capabilities),
            parameters=cmd.parameters,
            content_source=cmd.content_source.stored() if cmd.content_source else None,
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
    if (cmd.content_source.stored() if cmd.content_source else None) != state.content_source:
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


def decide_modify(state: VolumeState | None, volume_id: str, parameters: dict[str, str]) -> VolumeModifying | None:
    """The intent of the limits ``parameters`` lead to, or None when the volume has them
    already and no modify is pending. Keys not named keep their limits (the CSI spec: no
    change for an absent key); "0" takes a limit off."""
    changes = volumes.io_limits(parameters)
    if state is None or state.phase in ("deleted", "failed", "deleting"):
        raise NotFound(f"volume {volume_id[:128]!r} does not exist")
    limits = {k: v for k, v in (state.limits | changes).items() if v}
    if limits == state.limits and not state.modifying:
        return None
    return VolumeModifying(volume_id=state.volume_id, limits=limits)


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
        case VolumeModifying():
            assert state is not None
            return state.model_copy(update={"limits": dict(event.limits), "modifying": True, "modified": True, "version": seq})
        case VolumeModified():
            assert state is not None
            return state.model_copy(update={"modifying": False, "version": seq})
    raise TypeError(f"unknown event {event!r}")
