"""CSI messages ↔ volplane commands, with the spec's field checks on the way in.

    cap = capability(req.volume_capability, "volume_capability")
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from volplane.commands import Capability
from volplane.csi import csi_pb2 as csi
from volplane.errors import InvalidArgument

MAX_ID = 128


def deadline(context: grpc.aio.ServicerContext) -> float:
    """How long to wait for a service: the caller's deadline, 120 s without one, never over 600 s."""
    remaining = context.time_remaining()
    return 120.0 if remaining is None else max(0.1, min(remaining, 600.0))


def required(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{field}: required")
    return value


def identifier(field: str, value: str) -> str:
    """A volume id or name: present and at most 128 bytes, as the spec allows plugins to demand."""
    required(field, value)
    if len(value.encode()) > MAX_ID:
        raise InvalidArgument(f"{field}: longer than {MAX_ID} bytes")
    if "\x00" in value:
        raise InvalidArgument(f"{field}: contains a NUL byte")
    return value


def capability(cap: csi.VolumeCapability, field: str) -> Capability:
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise InvalidArgument(f"{field}.access_type: one of mount or block is required")
    if cap.access_mode.mode == csi.VolumeCapability.AccessMode.UNKNOWN:
        raise InvalidArgument(f"{field}.access_mode: required")
    if kind == "mount":
        return Capability(
            access_type="mount",
            fs_type=cap.mount.fs_type,
            mount_flags=tuple(cap.mount.mount_flags),
            access_mode=cap.access_mode.mode,
        )
    return Capability(access_type="block", access_mode=cap.access_mode.mode)


def capabilities(caps: Iterable[csi.VolumeCapability], field: str) -> tuple[Capability, ...]:
    out = tuple(capability(c, f"{field}[{i}]") for i, c in enumerate(caps))
    if not out:
        raise InvalidArgument(f"{field}: at least one capability is required")
    return out


def to_proto(cap: Capability) -> csi.VolumeCapability:
    msg = csi.VolumeCapability(access_mode=csi.VolumeCapability.AccessMode(mode=cap.access_mode))  # type: ignore[arg-type]  # the stub wants its Mode enum type; the int is one of its values
    if cap.access_type == "block":
        msg.block.SetInParent()
    else:
        msg.mount.fs_type = cap.fs_type
        msg.mount.mount_flags.extend(cap.mount_flags)
    return msg
