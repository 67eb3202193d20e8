"""What a volume is, in one place: the value types stored in events and the rules about them.

    fs = fs_type_of(cmd.capabilities, cmd.parameters)      # "xfs": the capability's, else fsType, else ext4
    check_fs_type("parameters.fsType", fs)                 # InvalidArgument unless ext4 or xfs
    resolve_size(0, 0, minimum_size(fs)) == 1 << 30

Stored value types. ``StoredCapability`` and ``StoredContentSource`` are the shapes events
and read models keep on disk. The command types of ``volplane.commands`` (what callers
send) convert to and from them (``Capability.stored()``, ``Capability.of(stored)``); the
dependency runs that way only, so changing a command cannot change what is stored.
Changing a stored type changes the schema of every event that holds it: add a field with
a default, or bump the event's ``schema_version`` and give it an upcaster
(``volplane.events``).

Mutable parameters (CreateVolume's ``mutable_parameters``, ControllerModifyVolume) are
per-volume I/O limits, the one place their names and values are checked::

    io_limits({"writeIOPS": "50", "readBytesPerSecond": "10Mi"}) == {"writeIOPS": 50, "readBytesPerSecond": 10 * 2**20}

Rules. The filesystems volplane formats, the default one and which of the two places a
request may name it wins, the CSI access modes a volume serves, and the smallest volume
of each filesystem. The provisioner, the nodeagent and apigw import them from here.

fsType precedence: the capability's ``mount.fs_type`` wins over the ``fsType`` parameter
(or, at NodeStage, the ``fsType`` of the volume context), and ext4 is the default. The
capability is CSI's own field for the filesystem and the one the CO fills: Kubernetes'
external-provisioner turns a StorageClass's ``csi.storage.k8s.io/fstype`` (or its
deprecated ``fsType``) into the capability of CreateVolume, and kubelet passes the PV's
``spec.csi.fsType`` in the capability of NodeStage. Parameters are opaque to the CO, so
they only decide what no capability names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

from volplane.errors import InvalidArgument, OutOfRange
from volplane.events import Frozen

__all__ = [
    "BLOCK",
    "DEFAULT_FS_TYPE",
    "DEFAULT_SIZE",
    "FS_TYPES",
    "FS_TYPE_KEY",
    "IO_LIMIT_KEYS",
    "MIN_SIZE",
    "MIN_SIZES",
    "MULTI_NODE_MULTI_WRITER",
    "MULTI_NODE_READER_ONLY",
    "MULTI_NODE_SINGLE_WRITER",
    "READER_ONLY_MODES",
    "READ_BPS",
    "READ_IOPS",
    "SINGLE_NODE_MODES",
    "SINGLE_NODE_MULTI_WRITER",
    "SINGLE_NODE_READER_ONLY",
    "SINGLE_NODE_SINGLE_WRITER",
    "SINGLE_NODE_WRITER",
    "WRITE_BPS",
    "WRITE_IOPS",
    "AccessType",
    "GiB",
    "MiB",
    "StoredCapability",
    "StoredContentSource",
    "Topology",
    "check_access_mode",
    "check_fs_type",
    "format_io_limits",
    "fs_type_of",
    "io_limits",
    "minimum_size",
    "resolve_size",
]

# -- stored value types ---------------------------------------------------------

# A topology segment, e.g. {"topology.csi.volplane.io/node": "node-1"}.
Topology = dict[str, str]

AccessType = Literal["mount", "block"]


class StoredCapability(Frozen):
    """One CSI VolumeCapability as events and read models keep it.

    ``access_mode`` holds the CSI AccessMode.Mode number (1 = SINGLE_NODE_WRITER, ...).
    """

    access_type: AccessType = "mount"
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()
    access_mode: int = 1


class StoredContentSource(Frozen):
    """What a volume started from, as stored: a snapshot or another volume (a clone)."""

    kind: Literal["snapshot", "volume"]
    id: str


# -- access modes ---------------------------------------------------------------

# CSI's AccessMode.Mode numbers (csi.proto).
SINGLE_NODE_WRITER = 1
SINGLE_NODE_READER_ONLY = 2
MULTI_NODE_READER_ONLY = 3
MULTI_NODE_SINGLE_WRITER = 4
MULTI_NODE_MULTI_WRITER = 5
SINGLE_NODE_SINGLE_WRITER = 6
SINGLE_NODE_MULTI_WRITER = 7

# The modes that allow one node at a time; they are also the only ones a volplane volume
# serves (a loop device over an image file is safe on one host only).
SINGLE_NODE_MODES = frozenset({SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER})
READER_ONLY_MODES = frozenset({SINGLE_NODE_READER_ONLY, MULTI_NODE_READER_ONLY})


def check_access_mode(field: str, mode: int) -> None:
    """InvalidArgument unless volplane serves ``mode``: ``check_access_mode("volume_capabilities", 5)`` raises."""
    if mode not in SINGLE_NODE_MODES:
        raise InvalidArgument(f"{field}: access mode {mode} is not supported (single-node modes only)")


# -- filesystems ----------------------------------------------------------------

FS_TYPES = frozenset({"ext4", "xfs"})
DEFAULT_FS_TYPE = "ext4"
# The key naming the filesystem in CreateVolume's parameters and in the volume context.
FS_TYPE_KEY = "fsType"


class _HasFsType(Protocol):
    @property
    def fs_type(self) -> str: ...


def fs_type_of(capabilities: Iterable[_HasFsType], context: Mapping[str, str]) -> str:
    """The filesystem a volume gets: the first capability's ``fs_type`` that is set, else
    ``context["fsType"]`` (CreateVolume's parameters, NodeStage's volume context), else ext4.

    >>> fs_type_of([StoredCapability(fs_type="xfs")], {"fsType": "ext4"})
    'xfs'
    >>> fs_type_of([StoredCapability()], {"fsType": "xfs"})
    'xfs'
    >>> fs_type_of([], {})
    'ext4'
    """
    named = next((c.fs_type for c in capabilities if c.fs_type), "")
    return named or context.get(FS_TYPE_KEY, "") or DEFAULT_FS_TYPE


def check_fs_type(field: str, fs_type: str) -> str:
    """``fs_type`` if volplane formats it; InvalidArgument naming ``field`` otherwise."""
    if fs_type not in FS_TYPES:
        raise InvalidArgument(f"{field}: {fs_type[:64]!r} is not supported (ext4, xfs)")
    return fs_type


# -- sizes ----------------------------------------------------------------------

BLOCK = 4096
MiB = 2**20
GiB = 2**30
DEFAULT_SIZE = 1 * GiB
# Small enough for tests, large enough for ext4 with its journal; xfs needs 300 MiB.
MIN_SIZE = 32 * MiB
MIN_SIZES: Mapping[str, int] = {"ext4": MIN_SIZE, "xfs": 300 * MiB}


def minimum_size(fs_type: str) -> int:
    """The smallest volume of a filesystem; "" (a block volume) or another name: ``MIN_SIZE``."""
    return MIN_SIZES.get(fs_type, MIN_SIZE)


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


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


# -- mutable parameters: I/O limits ------------------------------------------------

# The mutable parameters volplane knows, each an I/O limit of the volume's device
# (docs/decisions.md, "I/O limits"). "0" means no limit.
READ_IOPS = "readIOPS"
WRITE_IOPS = "writeIOPS"
READ_BPS = "readBytesPerSecond"
WRITE_BPS = "writeBytesPerSecond"
IO_LIMIT_KEYS = (READ_IOPS, WRITE_IOPS, READ_BPS, WRITE_BPS)
_BYTE_KEYS = frozenset({READ_BPS, WRITE_BPS})
# The kernel keeps a throttle as a u64 (bytes) or u32 (IOPS); beyond that a value is refused.
_MAX = {READ_IOPS: 2**32 - 1, WRITE_IOPS: 2**32 - 1, READ_BPS: 2**63 - 1, WRITE_BPS: 2**63 - 1}
_BINARY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def io_limits(parameters: Mapping[str, str], field: str = "mutable_parameters") -> dict[str, int]:
    """The limits ``parameters`` set, as whole numbers; InvalidArgument for an unknown key or a
    value that is not a non-negative whole number (bytes may carry a suffix: 10Mi, 5M).

    >>> io_limits({"writeIOPS": "50", "writeBytesPerSecond": "1Mi"})
    {'writeIOPS': 50, 'writeBytesPerSecond': 1048576}
    >>> io_limits({})
    {}
    """
    limits: dict[str, int] = {}
    for key, text in parameters.items():
        if key not in IO_LIMIT_KEYS:
            raise InvalidArgument(f"{field}: unknown key {key[:64]!r} (known: {', '.join(IO_LIMIT_KEYS)})")
        limits[key] = _limit(f"{field}.{key}", key, text)
    return limits


def format_io_limits(limits: Mapping[str, int]) -> dict[str, str]:
    """The parameters of ``limits`` as a CO sent them (whole numbers, no suffix); zeros left out."""
    return {k: str(v) for k, v in limits.items() if v}


def _limit(field: str, key: str, text: str) -> int:
    value = text.strip()
    number, unit = value, ""
    if key in _BYTE_KEYS:
        for suffix in sorted(_BINARY, key=len, reverse=True):
            if suffix and value.endswith(suffix):
                number, unit = value[: -len(suffix)], suffix
                break
    if not number.isascii() or not number.isdigit():
        raise InvalidArgument(f"{field}: {text[:64]!r} is not a non-negative whole number")
    limit = int(number) * _BINARY[unit]
    if limit > _MAX[key]:
        raise InvalidArgument(f"{field}: {text[:64]!r} is larger than the kernel can hold")
    return limit
