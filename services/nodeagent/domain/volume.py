"""State of one volume on one node, and the decisions NodeStage/Publish/Expand make on it.

    intent = decide_stage(state, cmd, fs_type="ext4", image="/pools/node-1/3f….img")   # None if already staged

The state answers "what did we do to this host for this volume": staged where, from which
image, as a filesystem or a raw block device, on which loop device, published at which
targets, grown to what size. It is gone (None) once the volume is neither staged nor
published on the node; the log keeps the history.
"""

from __future__ import annotations

import posixpath
from typing import Literal

from pydantic import Field

from volplane import volumes
from volplane.commands import Capability, PublishVolume, StageVolume
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OperationPending, OutOfRange
from volplane.events import Frozen
from volplane.volumes import FS_TYPES, READER_ONLY_MODES, SINGLE_NODE_SINGLE_WRITER, AccessType

from .events import (
    NodeVolumeEvent,
    VolumeExpandedOnNode,
    VolumeExpandingOnNode,
    VolumeExpandOnNodeFailed,
    VolumeIoLimitsApplied,
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

# The volume rules live in volplane.volumes; FS_TYPES stays importable from here.
__all__ = [
    "FS_TYPES",
    "MAX_PATH",
    "MOUNT_FLAGS",
    "NodeVolumeState",
    "Publication",
    "check_capability",
    "check_path",
    "decide_expand",
    "decide_publish",
    "decide_stage",
    "decide_unpublish",
    "decide_unstage",
    "evolve",
    "is_idle",
    "locate",
    "stage_fs_type",
]

StagePhase = Literal["none", "staging", "staged", "unstaging"]
PublishPhase = Literal["publishing", "published", "unpublishing"]

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
    keep_target: bool = False


class NodeVolumeState(Frozen):
    volume_id: str
    staging_path: str = ""
    access_type: AccessType = "mount"
    image: str = ""
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    device: str = ""
    stage_phase: StagePhase = "none"
    publications: tuple[Publication, ...] = ()
    # An expansion was decided and its result is not recorded yet.
    expanding: bool = False
    # The size the device and filesystem were last grown to on this node; 0: not since staging.
    capacity_bytes: int = 0
    # The I/O limits last written for ``device`` (VolumeIoLimitsApplied); cleared with the stage.
    io_limits: dict[str, int] = Field(default_factory=dict)
    io_device: str = ""  # the device they were written for: a device of another stage needs them again
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
    if cap.access_type == "block":
        if cap.fs_type or cap.mount_flags:
            raise InvalidArgument("volume_capability.block: a block volume takes no fs_type or mount_flags")
        return
    if cap.fs_type:
        volumes.check_fs_type("volume_capability.mount.fs_type", cap.fs_type)
    bad = [f for f in cap.mount_flags if f not in MOUNT_FLAGS]
    if bad:
        raise InvalidArgument(f"volume_capability.mount.mount_flags: not allowed: {', '.join(sorted(bad))[:256]}")


def stage_fs_type(cmd: StageVolume) -> str:
    """The filesystem NodeStage makes or expects: "" for a block volume, else the one
    ``volplane.volumes.fs_type_of`` picks — the capability's, then the volume context's
    ``fsType`` (which CreateVolume filled in), then ext4 — or InvalidArgument."""
    if cmd.capability.access_type == "block":
        return ""
    return volumes.check_fs_type(f"volume_context.{volumes.FS_TYPE_KEY}", volumes.fs_type_of((cmd.capability,), cmd.volume_context))


def decide_stage(state: NodeVolumeState | None, cmd: StageVolume, fs_type: str, image: str) -> VolumeStaging | None:
    """The intent, or None when already staged so. ``fs_type`` is "" for a block volume."""
    access = cmd.capability.access_type
    if state is None or state.stage_phase == "none":
        return VolumeStaging(
            volume_id=cmd.volume_id, staging_path=cmd.staging_path, fs_type=fs_type,
            mount_flags=cmd.capability.mount_flags, image=image, access_type=access,
        )
    if state.stage_phase == "unstaging":
        raise OperationPending(f"volume {cmd.volume_id} is being unstaged")
    if state.staging_path != cmd.staging_path:
        raise FailedPrecondition(f"volume {cmd.volume_id} is already staged at {state.staging_path}")
    if state.access_type != access:
        raise AlreadyExists(f"volume {cmd.volume_id} is staged at {state.staging_path} as a {state.access_type} volume, not {access}")
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


def decide_publish(state: NodeVolumeState | None, cmd: PublishVolume, target_exists: bool = False) -> VolumePublishing | None:
    if state is None or state.stage_phase != "staged" or state.staging_path != cmd.staging_path:
        raise FailedPrecondition(f"volume {cmd.volume_id} is not staged at {cmd.staging_path}")
    access = cmd.capability.access_type
    readonly = cmd.readonly or cmd.capability.access_mode in READER_ONLY_MODES
    existing = state.publication(cmd.target_path)
    if existing is None:
        if access != state.access_type:
            raise FailedPrecondition(f"volume {cmd.volume_id} is staged as a {state.access_type} volume and cannot be published as {access}")
        writers = [p.target_path for p in state.publications if not p.readonly]
        if cmd.capability.access_mode == SINGLE_NODE_SINGLE_WRITER and not readonly and writers:
            raise FailedPrecondition(f"volume {cmd.volume_id} is SINGLE_NODE_SINGLE_WRITER and already writable at {writers[0]}")
        return VolumePublishing(
            volume_id=cmd.volume_id, target_path=cmd.target_path, readonly=readonly, mount_flags=cmd.capability.mount_flags, keep_target=target_exists
        )
    if access != state.access_type:
        raise AlreadyExists(f"volume {cmd.volume_id} is published at {cmd.target_path} as a {state.access_type} volume")
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


def locate(state: NodeVolumeState | None, volume_id: str, volume_path: str, staging_path: str = "") -> str:
    """The path, normalised, if this volume is staged or published there on this node; else NotFound.

    ``volume_path`` is matched as given, not checked as a path: a CO asking about a path that
    is none of ours learns that the volume is not there (csi-sanity sends "some/path").
    """
    path = volume_path.rstrip("/") or volume_path
    wanted_staging = staging_path.rstrip("/") or staging_path
    if state is None or state.stage_phase != "staged":
        raise NotFound(f"volume {volume_id[:128]} is not staged on this node")
    if wanted_staging and wanted_staging != state.staging_path:
        raise NotFound(f"volume {volume_id} is not staged at {wanted_staging[:256]} on this node")
    pub = state.publication(path)
    if path != state.staging_path and (pub is None or pub.phase != "published"):
        raise NotFound(f"volume {volume_id} is neither staged nor published at {path[:256]} on this node")
    return path


def decide_expand(
    state: NodeVolumeState, image_bytes: int, required_bytes: int, limit_bytes: int, grows_online: bool
) -> VolumeExpandingOnNode | None:
    """The intent to grow the device and filesystem to the image's size, or None when done already.

    ``grows_online`` is False when this node cannot grow the filesystem while mounted (ext4
    without CAP_SYS_RESOURCE): then it is grown unmounted, which only a volume published
    nowhere allows.
    """
    vid = state.volume_id
    if required_bytes and image_bytes < required_bytes:
        raise OutOfRange(f"volume {vid} holds {image_bytes} bytes, fewer than the {required_bytes} required; expand it with ControllerExpandVolume first")
    if limit_bytes and image_bytes > limit_bytes:
        raise OutOfRange(f"volume {vid} holds {image_bytes} bytes, more than the limit of {limit_bytes}")
    if state.capacity_bytes == image_bytes:
        return None
    if not grows_online and state.publications:
        raise FailedPrecondition(
            f"volume {vid} is published at {state.publications[0].target_path}: its {state.fs_type} filesystem cannot grow "
            "while mounted on this node (CAP_SYS_RESOURCE is missing); it grows when next staged and expanded before publishing"
        )
    return VolumeExpandingOnNode(volume_id=vid, capacity_bytes=image_bytes)


def evolve(state: NodeVolumeState | None, event: NodeVolumeEvent, seq: int) -> NodeVolumeState | None:
    s = state or NodeVolumeState(volume_id=event.volume_id)
    match event:
        case VolumeStaging():
            s = s.model_copy(update={
                "stage_phase": "staging", "staging_path": event.staging_path, "fs_type": event.fs_type,
                "mount_flags": event.mount_flags, "image": event.image, "access_type": event.access_type,
                "capacity_bytes": 0, "expanding": False,
            })
        case VolumeStaged():
            s = s.model_copy(update={"stage_phase": "staged", "device": event.device, "capacity_bytes": event.capacity_bytes})
        case VolumeStageFailed() | VolumeUnstaged():
            s = s.model_copy(update={
                "stage_phase": "none", "staging_path": "", "device": "", "fs_type": "", "mount_flags": (),
                "image": "", "access_type": "mount", "capacity_bytes": 0, "expanding": False,
                "io_limits": {}, "io_device": "",
            })
        case VolumeUnstaging():
            s = s.model_copy(update={"stage_phase": "unstaging"})
        case VolumePublishing():
            pub = Publication(target_path=event.target_path, readonly=event.readonly, phase="publishing", keep_target=event.keep_target)
            s = s.model_copy(update={"publications": (*_without(s, event.target_path), pub)})
        case VolumePublished() | VolumeUnpublishing():
            phase: PublishPhase = "published" if isinstance(event, VolumePublished) else "unpublishing"
            pubs = tuple(p.model_copy(update={"phase": phase}) if p.target_path == event.target_path else p for p in s.publications)
            s = s.model_copy(update={"publications": pubs})
        case VolumePublishFailed() | VolumeUnpublished():
            s = s.model_copy(update={"publications": _without(s, event.target_path)})
        case VolumeExpandingOnNode():
            s = s.model_copy(update={"expanding": True})
        case VolumeExpandedOnNode():
            s = s.model_copy(update={"expanding": False, "capacity_bytes": event.capacity_bytes})
        case VolumeExpandOnNodeFailed():
            s = s.model_copy(update={"expanding": False})
        case VolumeIoLimitsApplied():
            s = s.model_copy(update={"io_limits": dict(event.limits), "io_device": event.device})
        case _:
            raise TypeError(f"unknown event {event!r}")
    s = s.model_copy(update={"version": seq})
    return s


def is_idle(state: NodeVolumeState) -> bool:
    """Nothing of this volume is left on the node."""
    return state.stage_phase == "none" and not state.publications


def _without(state: NodeVolumeState, target: str) -> tuple[Publication, ...]:
    return tuple(p for p in state.publications if p.target_path != target)
