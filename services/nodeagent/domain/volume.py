"""State of one volume on one node, and the decisions NodeStage/Publish make on it.

    intent = decide_stage(state, cmd, fs_type="ext4")   # VolumeStaging, or None if already staged

The state answers "what did we do to this host for this volume": staged where, on which
loop device, published at which targets. It is gone (None) once the volume is neither
staged nor published on the node; the log keeps the history.
"""

from __future__ import annotations

import posixpath
from typing import Literal

from volplane.commands import Capability, PublishVolume, StageVolume
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, OperationPending
from volplane.events import Frozen

from .events import (
    NodeVolumeEvent,
    VolumePublished,
    VolumePublishFailed,
    VolumePublishing,
    VolumeStaged,
    VolumeStageFailed,
    VolumeStaging,
    VolumeUnpublished,
    VolumeUnpublishing,
    VolumeUnstaged,
    VolumeUnstaging,
)

StagePhase = Literal["none", "staging", "staged", "unstaging"]
PublishPhase = Literal["publishing", "published", "unpublishing"]

FS_TYPES = frozenset({"ext4", "xfs"})
READER_ONLY_MODES = frozenset({2, 4})  # SINGLE_NODE_READER_ONLY, MULTI_NODE_READER_ONLY
# Mount flags a capability may carry: they change how, never where or what, is mounted.
MOUNT_FLAGS = frozenset({
    "noatime", "nodiratime", "relatime", "strictatime", "lazytime", "nolazytime",
    "nodev", "nosuid", "noexec", "sync", "async", "dirsync", "discard", "nodiscard",
    "ro", "rw", "nobarrier", "barrier",
})
MAX_PATH = 4096


class Publication(Frozen):
    target_path: str
    readonly: bool
    phase: PublishPhase


class NodeVolumeState(Frozen):
    volume_id: str
    staging_path: str = ""
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    device: str = ""
    stage_phase: StagePhase = "none"
    publications: tuple[Publication, ...] = ()
    version: int = 0

    def publication(self, target: str) -> Publication | None:
        return next((p for p in self.publications if p.target_path == target), None)


def check_path(field: str, text: str) -> str:
    """An absolute, normalised path with no '..', NUL or oversized parts, or InvalidArgument."""
    if not text:
        raise InvalidArgument(f"{field}: required")
    if "\x00" in text:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    if len(text.encode()) > MAX_PATH:
        raise InvalidArgument(f"{field}: longer than {MAX_PATH} bytes")
    if not text.startswith("/"):
        raise InvalidArgument(f"{field}: must be an absolute path")
    if text == "/" or text.startswith("//") or posixpath.normpath(text) != text.rstrip("/") or "/../" in f"{text}/":
        raise InvalidArgument(f"{field}: must be a normalised path below /, got {text[:256]!r}")
    return text.rstrip("/")


def check_capability(cap: Capability) -> None:
    if cap.access_type != "mount":
        raise InvalidArgument("volume_capability: only mount access is supported by this node")
    if cap.fs_type and cap.fs_type not in FS_TYPES:
        raise InvalidArgument(f"volume_capability.mount.fs_type: {cap.fs_type!r} is not supported (ext4, xfs)")
    bad = [f for f in cap.mount_flags if f not in MOUNT_FLAGS]
    if bad:
        raise InvalidArgument(f"volume_capability.mount.mount_flags: not allowed: {', '.join(sorted(bad))[:256]}")


def decide_stage(state: NodeVolumeState | None, cmd: StageVolume, fs_type: str) -> VolumeStaging | None:
    if state is None or state.stage_phase == "none":
        return VolumeStaging(volume_id=cmd.volume_id, staging_path=cmd.staging_path, fs_type=fs_type, mount_flags=cmd.capability.mount_flags)
    if state.stage_phase == "unstaging":
        raise OperationPending(f"volume {cmd.volume_id} is being unstaged")
    if state.staging_path != cmd.staging_path:
        raise FailedPrecondition(f"volume {cmd.volume_id} is already staged at {state.staging_path}")
    if state.fs_type != fs_type or state.mount_flags != cmd.capability.mount_flags:
        raise AlreadyExists(f"volume {cmd.volume_id} is staged at {state.staging_path} with another capability")
    return None


def decide_unstage(state: NodeVolumeState | None, staging_path: str) -> VolumeUnstaging | None:
    if state is None or state.stage_phase == "none":
        return None
    if state.staging_path != staging_path:
        raise FailedPrecondition(f"volume {state.volume_id} is staged at {state.staging_path}, not {staging_path}")
    if state.publications:
        targets = ", ".join(p.target_path for p in state.publications)
        raise FailedPrecondition(f"volume {state.volume_id} is still published at {targets}")
    if state.stage_phase in ("staging", "unstaging"):
        return None  # An intent is pending; the caller finishes it.
    return VolumeUnstaging(volume_id=state.volume_id)


def decide_publish(state: NodeVolumeState | None, cmd: PublishVolume) -> VolumePublishing | None:
    if state is None or state.stage_phase != "staged" or state.staging_path != cmd.staging_path:
        raise FailedPrecondition(f"volume {cmd.volume_id} is not staged at {cmd.staging_path}")
    readonly = cmd.readonly or cmd.capability.access_mode in READER_ONLY_MODES
    existing = state.publication(cmd.target_path)
    if existing is None:
        return VolumePublishing(volume_id=cmd.volume_id, target_path=cmd.target_path, readonly=readonly, mount_flags=cmd.capability.mount_flags)
    if existing.readonly != readonly:
        raise AlreadyExists(f"volume {cmd.volume_id} is published at {cmd.target_path} with readonly={existing.readonly}")
    if existing.phase == "unpublishing":
        raise OperationPending(f"volume {cmd.volume_id} is being unpublished from {cmd.target_path}")
    return None


def decide_unpublish(state: NodeVolumeState | None, target: str) -> VolumeUnpublishing | None:
    """The intent, or None when the target is not published (or an intent is pending)."""
    existing = state.publication(target) if state else None
    if state is None or existing is None or existing.phase != "published":
        return None
    return VolumeUnpublishing(volume_id=state.volume_id, target_path=target)


def evolve(state: NodeVolumeState | None, event: NodeVolumeEvent, seq: int) -> NodeVolumeState | None:
    s = state or NodeVolumeState(volume_id=event.volume_id)
    match event:
        case VolumeStaging():
            s = s.model_copy(update={"stage_phase": "staging", "staging_path": event.staging_path, "fs_type": event.fs_type, "mount_flags": event.mount_flags})
        case VolumeStaged():
            s = s.model_copy(update={"stage_phase": "staged", "device": event.device})
        case VolumeStageFailed() | VolumeUnstaged():
            s = s.model_copy(update={"stage_phase": "none", "staging_path": "", "device": "", "fs_type": "", "mount_flags": ()})
        case VolumeUnstaging():
            s = s.model_copy(update={"stage_phase": "unstaging"})
        case VolumePublishing():
            pub = Publication(target_path=event.target_path, readonly=event.readonly, phase="publishing")
            s = s.model_copy(update={"publications": _without(s, event.target_path) + (pub,)})
        case VolumePublished() | VolumeUnpublishing():
            phase: PublishPhase = "published" if isinstance(event, VolumePublished) else "unpublishing"
            pubs = tuple(p.model_copy(update={"phase": phase}) if p.target_path == event.target_path else p for p in s.publications)
            s = s.model_copy(update={"publications": pubs})
        case VolumePublishFailed() | VolumeUnpublished():
            s = s.model_copy(update={"publications": _without(s, event.target_path)})
        case _:
            raise TypeError(f"unknown event {event!r}")
    s = s.model_copy(update={"version": seq})
    return s


def is_idle(state: NodeVolumeState) -> bool:
    """Nothing of this volume is left on the node."""
    return state.stage_phase == "none" and not state.publications


def _without(state: NodeVolumeState, target: str) -> tuple[Publication, ...]:
    return tuple(p for p in state.publications if p.target_path != target)
