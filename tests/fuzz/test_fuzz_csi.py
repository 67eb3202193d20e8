"""Hypothesis fuzzing of every CSI RPC against the real stack (session ``stack``/``client``).

Requests are built field by field from the protobuf descriptors, so every field of every
request can be missing or hold a hostile value; the fields volplane interprets (ids,
names, paths, sizes, capabilities, topology, paging, parameters) draw from biased
strategies. After every example:

- each status code is OK or one the CSI spec allows for that RPC, never INTERNAL or
  UNKNOWN (UNIMPLEMENTED only for RPCs the driver does not implement);
- nothing appeared in /etc, /tmp (top level), the stack's run and pools directories, and
  no mount appeared or vanished outside this module's own tmp directory;
- every service process is alive;
- what the example created is deleted, and the fixture volumes are put back as they were.

``VOLPLANE_FUZZ_EXAMPLES`` sets hypothesis' ``max_examples`` per test (default 300, seed
fixed through ``derandomize``; ``VOLPLANE_FUZZ_RANDOM=1`` draws fresh examples). The last
test prints a table of (RPC, status code) → count.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.launcher import Stack
from tests.conftest import IS_ROOT, Csi
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc
from volplane.nodes import TOPOLOGY_KEY

EXAMPLES = int(os.environ.get("VOLPLANE_FUZZ_EXAMPLES", "300"))
pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root and /dev/loop-control for loop devices and mounts"),
    # pyproject's 300 s per test is too short for `make fuzz`'s 2000 examples.
    pytest.mark.timeout(max(300, EXAMPLES)),
]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("VOLPLANE_FUZZ_RANDOM", "") != "1",
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
CALL_TIMEOUT = 60.0

# (rpc, status code name) → how often the generated requests got it.
COUNTS: Counter[tuple[str, str]] = Counter()
# Findings that are not failures by the brief's properties (left-over files and the like).
NOTES: list[str] = []
TIMES: dict[str, float] = {}  # rpc → seconds spent in all calls (generated and cleanup)
CALLS: Counter[str] = Counter()  # rpc → all calls (generated and cleanup)

C = grpc.StatusCode
GENERAL = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION, C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED, C.ABORTED}
NO_ALREADY = GENERAL - {C.ALREADY_EXISTS}
ALLOWED: dict[str, set[grpc.StatusCode]] = {
    # Identity
    "GetPluginInfo": {C.OK},
    "GetPluginCapabilities": {C.OK},
    "Probe": {C.OK, C.FAILED_PRECONDITION},
    # Controller
    "CreateVolume": GENERAL,
    # The spec: a volume or snapshot that does not exist MUST be reported deleted (OK).
    "DeleteVolume": NO_ALREADY - {C.NOT_FOUND, C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED},
    "ControllerPublishVolume": GENERAL,
    "ControllerUnpublishVolume": NO_ALREADY - {C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED},
    "ValidateVolumeCapabilities": NO_ALREADY,
    "ListVolumes": NO_ALREADY - {C.NOT_FOUND},
    "GetCapacity": NO_ALREADY - {C.NOT_FOUND},
    "ControllerGetCapabilities": {C.OK},
    "CreateSnapshot": GENERAL,
    "DeleteSnapshot": NO_ALREADY - {C.NOT_FOUND, C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED},
    "ListSnapshots": NO_ALREADY - {C.NOT_FOUND},
    "ControllerExpandVolume": NO_ALREADY,
    "ControllerGetVolume": NO_ALREADY,
    "GetSnapshot": NO_ALREADY,
    # GroupController (issue 16): a group that does not exist is deleted already (OK).
    "GroupControllerGetCapabilities": {C.OK},
    "CreateVolumeGroupSnapshot": GENERAL,
    "DeleteVolumeGroupSnapshot": NO_ALREADY - {C.NOT_FOUND, C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED},
    "GetVolumeGroupSnapshot": NO_ALREADY,
    # I/O limits (issue 16): an unknown volume is NOT_FOUND, unknown keys INVALID_ARGUMENT.
    "ControllerModifyVolume": NO_ALREADY,
    # Not implemented by volplane (not advertised): UNIMPLEMENTED is the answer.
    "GetMetadataAllocated": NO_ALREADY | {C.UNIMPLEMENTED},
    "GetMetadataDelta": NO_ALREADY | {C.UNIMPLEMENTED},
    # Node
    "NodeStageVolume": GENERAL,
    "NodeUnstageVolume": NO_ALREADY,
    "NodePublishVolume": GENERAL,
    "NodeUnpublishVolume": NO_ALREADY,
    "NodeGetVolumeStats": NO_ALREADY,
    "NodeExpandVolume": NO_ALREADY,
    "NodeGetCapabilities": {C.OK},
    "NodeGetInfo": {C.OK},
}
STREAMING = {"GetMetadataAllocated", "GetMetadataDelta"}

# service attribute of Fuzz.stubs → the RPCs of it and their request classes
IDENTITY_RPCS = {"GetPluginInfo": csi.GetPluginInfoRequest, "GetPluginCapabilities": csi.GetPluginCapabilitiesRequest, "Probe": csi.ProbeRequest}
CONTROLLER_RPCS = {
    "CreateVolume": csi.CreateVolumeRequest,
    "DeleteVolume": csi.DeleteVolumeRequest,
    "ControllerPublishVolume": csi.ControllerPublishVolumeRequest,
    "ControllerUnpublishVolume": csi.ControllerUnpublishVolumeRequest,
    "ValidateVolumeCapabilities": csi.ValidateVolumeCapabilitiesRequest,
    "ListVolumes": csi.ListVolumesRequest,
    "GetCapacity": csi.GetCapacityRequest,
    "ControllerGetCapabilities": csi.ControllerGetCapabilitiesRequest,
    "CreateSnapshot": csi.CreateSnapshotRequest,
    "DeleteSnapshot": csi.DeleteSnapshotRequest,
    "ListSnapshots": csi.ListSnapshotsRequest,
    "GetSnapshot": csi.GetSnapshotRequest,
    "ControllerExpandVolume": csi.ControllerExpandVolumeRequest,
    "ControllerGetVolume": csi.ControllerGetVolumeRequest,
    "ControllerModifyVolume": csi.ControllerModifyVolumeRequest,
}
GROUP_RPCS = {
    "GroupControllerGetCapabilities": csi.GroupControllerGetCapabilitiesRequest,
    "CreateVolumeGroupSnapshot": csi.CreateVolumeGroupSnapshotRequest,
    "DeleteVolumeGroupSnapshot": csi.DeleteVolumeGroupSnapshotRequest,
    "GetVolumeGroupSnapshot": csi.GetVolumeGroupSnapshotRequest,
}
METADATA_RPCS = {"GetMetadataAllocated": csi.GetMetadataAllocatedRequest, "GetMetadataDelta": csi.GetMetadataDeltaRequest}
NODE_RPCS = {
    "NodeStageVolume": csi.NodeStageVolumeRequest,
    "NodeUnstageVolume": csi.NodeUnstageVolumeRequest,
    "NodePublishVolume": csi.NodePublishVolumeRequest,
    "NodeUnpublishVolume": csi.NodeUnpublishVolumeRequest,
    "NodeGetVolumeStats": csi.NodeGetVolumeStatsRequest,
    "NodeExpandVolume": csi.NodeExpandVolumeRequest,
    "NodeGetCapabilities": csi.NodeGetCapabilitiesRequest,
    "NodeGetInfo": csi.NodeGetInfoRequest,
}
SERVICE_OF = {
    **{k: "identity" for k in IDENTITY_RPCS},
    **{k: "controller" for k in CONTROLLER_RPCS},
    **{k: "group" for k in GROUP_RPCS},
    **{k: "metadata" for k in METADATA_RPCS},
    **{k: "node" for k in NODE_RPCS},
}
PATH_FIELDS = ("staging_target_path", "target_path", "volume_path")

# -- value strategies --------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MiB, GiB = 1 << 20, 1 << 30

# Valid UTF-8 only (protobuf strings): no surrogates.
any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
ODD = [
    "../../etc", "/etc/passwd", "..", ".", "/", "//", "a/b", "a\x00b", "\x00", " ", "\t\n", "%s%n", "${HOME}", "*", "?",
    "\u202eevil", "\ufeffbom", "\u2028", "\uffff", "\U0010ffff", "é", "e\u0301", "😀" * 40, "ᚠ" * 43, "a" * 128, "a" * 129,
    "é" * 64, "é" * 65, "x" * 10_240, "\x7f", "CON", "-rf", "--help", "node-1\x00", "NODE-1",
]
odd_text = st.one_of(st.sampled_from(ODD), any_text)
hex32 = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
INT64_EDGES = [0, 1, -1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1, 2**62, 4095, 4096, 4097, 32 * MiB - 1, 32 * MiB,
               300 * MiB, GiB, 64 * GiB, 64 * GiB + 1, 2**53, -(2**53)]
sizes = st.one_of(st.sampled_from(INT64_EDGES), st.integers(INT64_MIN, INT64_MAX), st.integers(0, 2 * GiB))
int32s = st.one_of(st.sampled_from([0, 1, -1, 2, 3, 1000, INT32_MIN, INT32_MAX]), st.integers(INT32_MIN, INT32_MAX))
access_modes = st.one_of(st.integers(0, 8), st.sampled_from([-1, 100, INT32_MAX, INT32_MIN]))
FS = ["", "ext4", "xfs", "btrfs", "ext3", "vfat", "nfs", "tmpfs", "proc", "EXT4", "ext4\x00", "../xfs", "-t xfs", "bind"]
fs_types = st.one_of(st.sampled_from(FS), odd_text)
FLAGS = ["noatime", "ro", "rw", "nodev", "nosuid", "noexec", "sync", "discard", "bind", "rbind", "remount", "loop", "dev", "suid",
         "exec", "X-mount.mkdir", "ro,bind", "uid=0", "context=system_u:object_r:tmp_t:s0", "upperdir=/etc", "defaults", "",
         "-o", "--bind", "move", "shared", "nofail"]
mount_flags = st.lists(st.one_of(st.sampled_from(FLAGS), odd_text), max_size=5)
NODE_IDS = ["node-2", "node-3", "", "Node-1", "node_1", "localhost"]
PARAM_KEYS = ["pool", "fsType", "csi.storage.k8s.io/fstype", "type", "replicas", "", "pool\x00"]
PARAM_VALUES = ["local", "shared", "node-1", "node-2", "ext4", "xfs", "btrfs", "", "nope", "../shared", "/", "LOCAL"]
parameters = st.dictionaries(st.one_of(st.sampled_from(PARAM_KEYS), odd_text), st.one_of(st.sampled_from(PARAM_VALUES), odd_text), max_size=4)
TOPO_KEYS = [TOPOLOGY_KEY, "topology.kubernetes.io/zone", "", "kubernetes.io/hostname", TOPOLOGY_KEY + "x"]
TOPO_VALUES = ["node-1", "node-2", "", "shared", "zone-a"]
segments = st.dictionaries(st.one_of(st.sampled_from(TOPO_KEYS), odd_text), st.one_of(st.sampled_from(TOPO_VALUES), odd_text), max_size=3)
tokens = st.one_of(st.just(""), hex32, odd_text, st.sampled_from(["0", "-1", "1", "ffffffffffffffffffffffffffffffff", "(", "[", "+", "-", "\xff"]))


@dataclass
class Ctx:
    """What the field strategies may draw from in one test."""

    ids: st.SearchStrategy[str]
    node_ids: st.SearchStrategy[str]
    safe_paths: st.SearchStrategy[str]
    wild_paths: st.SearchStrategy[str]
    known_ids: frozenset[str]
    # Set while filling a request: the volume_id drawn so far is one of ours.
    known_volume: bool = False


def _is_map(f: FD) -> bool:
    return f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _is_repeated(f: FD) -> bool:
    rep = getattr(f, "is_repeated", None)
    return bool(rep) if rep is not None else f.label == FD.LABEL_REPEATED


def _string_for(name: str, ctx: Ctx) -> st.SearchStrategy[str]:
    if name in ("volume_id", "source_volume_id", "snapshot_id", "group_snapshot_id", "base_snapshot_id"):
        return ctx.ids
    if name == "node_id":
        return ctx.node_ids
    if name == "name":
        return st.one_of(odd_text, st.builds(lambda s: f"vpfz-{s}", any_text))
    if name in PATH_FIELDS:
        return ctx.safe_paths if ctx.known_volume else st.one_of(ctx.safe_paths, ctx.wild_paths)
    if name == "starting_token":
        return tokens
    if name == "fs_type":
        return fs_types
    return odd_text


def _map_for(name: str) -> st.SearchStrategy[dict[str, str]]:
    if name == "segments":
        return segments
    if name in ("parameters", "mutable_parameters", "volume_context", "publish_context"):
        return parameters
    return st.dictionaries(odd_text, odd_text, max_size=3)


def _scalar(f: FD, ctx: Ctx) -> st.SearchStrategy[Any]:
    t = f.type
    if t == FD.TYPE_STRING:
        return _string_for(f.name, ctx)
    if t == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_ENUM:
        return access_modes if f.name == "mode" else st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), int32s)
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == FD.TYPE_FLOAT else 64)
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        if f.name in ("required_bytes", "limit_bytes", "value"):
            return sizes
        return st.one_of(st.sampled_from(INT64_EDGES), st.integers(INT64_MIN, INT64_MAX))
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    return int32s  # int32, sint32, sfixed32 (max_entries and the like)


def fill(draw: Callable[..., Any], msg: Any, ctx: Ctx, depth: int = 0) -> Any:
    """Fill ``msg`` in place: each field missing (one in four) or drawn."""
    for f in msg.DESCRIPTOR.fields:
        if draw(st.integers(0, 3)) == 0:
            continue
        name = f.name
        if _is_map(f):
            if f.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE:
                continue
            getattr(msg, name).update(draw(_map_for(name)))
        elif f.type == FD.TYPE_MESSAGE:
            if depth >= 4:
                continue
            if _is_repeated(f):
                for _ in range(draw(st.integers(0, 3))):
                    fill(draw, getattr(msg, name).add(), ctx, depth + 1)
            else:
                sub = getattr(msg, name)
                sub.SetInParent()
                if name == "volume_capability" or f.message_type.name == "VolumeCapability":
                    sub.CopyFrom(draw(capabilities()))
                else:
                    fill(draw, sub, ctx, depth + 1)
        elif _is_repeated(f):
            values = draw(mount_flags if name == "mount_flags" else st.lists(_scalar(f, ctx), max_size=4))
            getattr(msg, name).extend(values)
        else:
            value = draw(_scalar(f, ctx))
            setattr(msg, name, value)
            if name == "volume_id" and depth == 0:
                ctx.known_volume = value in ctx.known_ids
    return msg


@st.composite
def capabilities(draw: Callable[..., Any]) -> csi.VolumeCapability:
    cap = csi.VolumeCapability()
    kind = draw(st.sampled_from(["mount", "block", "none", "both"]))
    if kind in ("mount", "both"):
        cap.mount.SetInParent()
        cap.mount.fs_type = draw(fs_types)
        cap.mount.mount_flags.extend(draw(mount_flags))
        if draw(st.booleans()):
            cap.mount.volume_mount_group = draw(odd_text)
    if kind in ("block", "both"):
        cap.block.SetInParent()  # "both": the oneof keeps the last one set
    if draw(st.integers(0, 4)) != 0:
        cap.access_mode.mode = draw(access_modes)
    return cap


def request_of(rpc_name: str, cls: type, ctx: Ctx) -> st.SearchStrategy[tuple[str, Any]]:
    @st.composite
    def build(draw: Callable[..., Any]) -> tuple[str, Any]:
        ctx.known_volume = False
        msg = fill(draw, cls(), ctx)
        # Lists of capabilities get the capability strategy too.
        for f in msg.DESCRIPTOR.fields:
            if f.type == FD.TYPE_MESSAGE and _is_repeated(f) and f.message_type.name == "VolumeCapability" and draw(st.booleans()):
                getattr(msg, f.name).extend(draw(st.lists(capabilities(), max_size=3)))
        return rpc_name, msg

    return build()


# -- the world: fixture volumes, tmp dirs, watchers ---------------------------------


def _walk(root: Path) -> set[str]:
    """Every path under ``root``, not descending into mount points."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in list(dirnames):
            if os.path.ismount(os.path.join(dirpath, d)):
                dirnames.remove(d)
                out.add(os.path.join(dirpath, d))
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return out


def _mountpoints() -> Counter[str]:
    with open("/proc/self/mountinfo") as f:
        return Counter(line.split(" ")[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\") for line in f)


# /tmp entries that other processes on this machine make all the time (not ours).
FOREIGN_TMP = re.compile(r"^(tmp[a-z0-9_]{6,}|pytest-of-.*|pip-.*|\.[^v].*)$")


@dataclass
class World:
    stack: Stack
    client: Csi
    root: Path  # our own tmp dir; everything the node RPCs may touch lies below it
    basetemp: Path
    group: Any = None
    metadata: Any = None
    ctl_vols: dict[str, str] = field(default_factory=dict)  # name → id: controller-only fixture volumes
    ctl_caps: dict[str, csi.VolumeCapability] = field(default_factory=dict)
    ctl_sizes: dict[str, int] = field(default_factory=dict)
    snap_name: str = ""
    snap_id: str = ""
    node_vols: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind → {id, cap, staging, target}
    baseline_mounts: set[str] = field(default_factory=set)
    baseline_tree: set[str] = field(default_factory=set)
    volumes_before: set[str] = field(default_factory=set)
    snapshots_before: set[str] = field(default_factory=set)

    # -- calls --

    def stub(self, service: str) -> Any:
        return {"identity": self.client.identity, "controller": self.client.controller, "node": self.client.node,
                "group": self.group, "metadata": self.metadata}[service]

    def raw(self, rpc_name: str, req: Any) -> tuple[grpc.StatusCode, Any, str]:
        method = getattr(self.stub(SERVICE_OF[rpc_name]), rpc_name)
        t0 = time.monotonic()
        try:
            resp = list(method(req, timeout=CALL_TIMEOUT)) if rpc_name in STREAMING else method(req, timeout=CALL_TIMEOUT)
            return C.OK, resp, ""
        except grpc.RpcError as exc:
            return exc.code(), None, exc.details() or ""
        finally:
            TIMES[rpc_name] = TIMES.get(rpc_name, 0.0) + time.monotonic() - t0
            CALLS[rpc_name] += 1

    def fuzz(self, rpc_name: str, req: Any) -> tuple[grpc.StatusCode, Any]:
        """One generated request: counted, and its status code checked."""
        code, resp, details = self.raw(rpc_name, req)
        COUNTS[(rpc_name, code.name)] += 1
        assert code in ALLOWED[rpc_name], f"{rpc_name} answered {code.name}: {details[:500]}\nrequest: {_short(req)}"
        return code, resp

    def must(self, rpc_name: str, req: Any) -> Any:
        code, resp, details = self.raw(rpc_name, req)
        assert code == C.OK, f"cleanup {rpc_name} answered {code.name}: {details[:500]}\nrequest: {_short(req)}"
        return resp

    # -- fixtures --

    def create_ctl(self, name: str) -> None:
        resp = self.must("CreateVolume", csi.CreateVolumeRequest(
            name=name, capacity_range=csi.CapacityRange(required_bytes=self.ctl_sizes[name]), volume_capabilities=[self.ctl_caps[name]]))
        self.ctl_vols[name] = resp.volume.volume_id

    def create_snap(self) -> None:
        c1 = next(iter(self.ctl_vols.values()))
        self.snap_id = self.must("CreateSnapshot", csi.CreateSnapshotRequest(name=self.snap_name, source_volume_id=c1)).snapshot.snapshot_id

    def stage_and_publish(self, kind: str) -> None:
        v = self.node_vols[kind]
        self.must("NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=v["id"], staging_target_path=v["staging"], volume_capability=v["cap"], publish_context=v["ctx"]))
        self.must("NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=v["id"], staging_target_path=v["staging"], target_path=v["target"], volume_capability=v["cap"]))

    def all_volumes(self) -> set[str]:
        ids, token = set(), ""
        while True:
            resp = self.must("ListVolumes", csi.ListVolumesRequest(max_entries=500, starting_token=token))
            ids.update(e.volume.volume_id for e in resp.entries)
            token = resp.next_token
            if not token:
                return ids

    def all_snapshots(self) -> set[str]:
        ids, token = set(), ""
        while True:
            resp = self.must("ListSnapshots", csi.ListSnapshotsRequest(max_entries=500, starting_token=token))
            ids.update(e.snapshot.snapshot_id for e in resp.entries)
            token = resp.next_token
            if not token:
                return ids

    def delete_volume(self, vid: str) -> None:
        for node in ("", self.stack.node_id):
            self.raw("ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node))
        self.must("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid))

    # -- the safety net around each example --

    def host(self) -> dict[str, Any]:
        run = self.stack.run_dir
        return {
            "etc": set(os.listdir("/etc")),
            "tmp": set(os.listdir("/tmp")),
            "run": set(os.listdir(run)),
            "pools": set(os.listdir(run / "pools")),
            "mounts": _mountpoints(),
        }

    def ours(self, path: str) -> bool:
        return path == str(self.root) or path.startswith(f"{self.root}/")

    def foreign(self, path: str) -> bool:
        """A mount of another test session on this machine (not this stack's)."""
        return path.startswith("/tmp/pytest-of-") and not path.startswith(f"{self.basetemp}/") and path != str(self.basetemp)

    def check_host(self, before: dict[str, Any], what: str) -> None:
        after = self.host()
        problems = []
        for key in ("etc", "run", "pools"):
            if before[key] != after[key]:
                problems.append(f"{key}: new {sorted(after[key] - before[key])[:10]}, gone {sorted(before[key] - after[key])[:10]}")
        new_tmp = [n for n in after["tmp"] - before["tmp"] if not FOREIGN_TMP.match(n) or "vpfz" in n]
        if new_tmp:
            problems.append(f"/tmp: new {sorted(new_tmp)[:10]}")
        added = [m for m in (after["mounts"] - before["mounts"]) if not self.ours(m) and not self.foreign(m)]
        removed = [m for m in (before["mounts"] - after["mounts"]) if not self.ours(m) and not self.foreign(m)]
        if added or removed:
            problems.append(f"mounts: new {added[:10]}, gone {removed[:10]}")
        dead = self.stack.dead()
        if dead:
            problems.append(f"dead processes: {dead}")
        if problems:
            for m in added:  # do not leave the host damaged for the next example
                subprocess.run(["umount", "-l", m], capture_output=True)
        assert not problems, f"after {what}: " + "; ".join(problems)


def _short(req: Any) -> str:
    text = repr(req)
    return text if len(text) < 1500 else text[:1500] + f"... ({len(text)} chars)"


@pytest.fixture(scope="module")
def world(stack: Stack, client: Csi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="vpfz-"))
    w = World(stack=stack, client=client, root=root, basetemp=Path(tmp_path_factory.getbasetemp()))
    w.group = rpc.GroupControllerStub(client.channel)
    w.metadata = rpc.SnapshotMetadataStub(client.channel)
    w.volumes_before = w.all_volumes()
    w.snapshots_before = w.all_snapshots()
    tag = uuid.uuid4().hex[:8]
    mount_cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=csi.VolumeCapability.AccessMode(mode=1))
    block_cap = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=csi.VolumeCapability.AccessMode(mode=1))
    # Controller-only fixtures: never staged, so the controller fuzz may delete, expand and
    # publish them; they are put back after each example.
    for name, cap in ((f"vpfz-c1-{tag}", mount_cap), (f"vpfz-c2-{tag}", block_cap)):
        w.ctl_caps[name], w.ctl_sizes[name] = cap, 64 * MiB
        w.create_ctl(name)
    w.snap_name = f"vpfz-s1-{tag}"
    w.create_snap()
    # Node fixtures: published to this node, staged and published below root.
    for d in ("stage/m", "stage/b", "stage/spare", "pods", "canary", "nonempty"):
        (root / d).mkdir(parents=True)
    (root / "nonempty" / "keep").write_text("x")
    (root / "file").write_text("x")
    (root / "link").symlink_to(root / "canary")
    for kind, cap in (("m", mount_cap), ("b", block_cap)):
        vid = w.must("CreateVolume", csi.CreateVolumeRequest(
            name=f"vpfz-n{kind}-{tag}", capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capabilities=[cap])).volume.volume_id
        ctx = w.must("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=stack.node_id, volume_capability=cap)).publish_context
        w.node_vols[kind] = {"id": vid, "cap": cap, "ctx": dict(ctx), "staging": str(root / "stage" / kind), "target": str(root / "pods" / kind)}
        w.stage_and_publish(kind)
    w.baseline_mounts = {m for m in _mountpoints() if w.ours(m)}
    w.baseline_tree = _walk(root)
    yield w
    # Undo everything, whatever the tests left.
    for v in w.node_vols.values():
        w.raw("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(volume_id=v["id"], target_path=v["target"]))
        w.raw("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(volume_id=v["id"], staging_target_path=v["staging"]))
    for sid in w.all_snapshots() - w.snapshots_before:
        w.raw("DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=sid))
    for vid in w.all_volumes() - w.volumes_before:
        for node in ("", stack.node_id):
            w.raw("ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node))
        w.raw("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid))
    left = [m for m in _mountpoints() if w.ours(m)]
    for m in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


# -- path strategies ----------------------------------------------------------------


def safe_paths(w: World) -> st.SearchStrategy[str]:
    """Paths the driver may act on with our own volumes: below our tmp dir, or refused
    before any effect (relative, not normalised, a pool directory, too long)."""
    r = str(w.root)
    pools = w.stack.pool_dir("shared").parent
    names = st.one_of(st.sampled_from(["x", "y", "m", "b", "..", ".", "...", " ", "a b", "é", "😀", "-rf", "x" * 255, "x" * 256]),
                      st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"), min_size=1, max_size=20))
    fixed = [
        f"{r}/stage/m", f"{r}/stage/b", f"{r}/stage/spare", f"{r}/pods/m", f"{r}/pods/b", f"{r}/pods", f"{r}/file", f"{r}/nonempty",
        f"{r}/link", f"{r}/link/x", f"{r}/canary", f"{r}/nope/x", f"{r}/file/x", f"{r}/stage/m/lost+found", f"{r}/pods/m/x",
        f"{r}/pods/../../vpfz-escape", f"{r}/../vpfz-escape-{w.root.name}", f"{r}/./pods/x", f"{r}//pods/x", f"{r}/pods/x/",
        f"{r}/pods/x/.", f"{r}/stage/m/", f"{r}\x00/x", f"{r}/" + "d/" * 2100 + "x", f"{r}/" + "x" * 5000,
        str(w.stack.pool_dir("shared")), str(w.stack.pool_dir(w.stack.node_id)), str(pools), f"{pools}/x",
        f"{w.stack.pool_dir('shared')}/x", f"{w.stack.pool_dir(w.stack.node_id)}/x", f"{w.stack.pool_dir('shared')}/..",
        "relative", "pods/x", "./x", "../x", "", " ", "~/x",
    ]
    return st.one_of(
        st.sampled_from(fixed),
        st.builds(lambda d, n: f"{r}/{d}/{n}", st.sampled_from(["pods", "stage", "stage/spare", "nonempty", "canary"]), names),
        st.builds(lambda n: f"{r}/{n}", names),
    )


def wild_paths() -> st.SearchStrategy[str]:
    """Paths outside our tmp dir, drawn only with ids that name no volume of ours."""
    return st.one_of(
        st.sampled_from(["/", "/etc", "/etc/passwd", "/etc/vpfz-new", "/etc/../etc/vpfz", "/proc/self/root", "/dev/null", "/tmp",
                         "/tmp/vpfz-wild", "/nonexistent/vpfz/x", "/root", "/sys/kernel", "/var/lib/kubelet/pods/x", "//etc"]),
        odd_text,
    )


def controller_ctx(w: World) -> Ctx:
    known = set(w.ctl_vols.values()) | {w.snap_id}
    return Ctx(
        ids=st.one_of(st.sampled_from(sorted(known)), hex32, odd_text, st.just("")),
        node_ids=st.one_of(st.just(w.stack.node_id), st.sampled_from(NODE_IDS), odd_text),
        safe_paths=safe_paths(w), wild_paths=wild_paths(), known_ids=frozenset(known),
    )


def node_ctx(w: World) -> Ctx:
    known = {v["id"] for v in w.node_vols.values()}
    return Ctx(
        ids=st.one_of(st.sampled_from(sorted(known)), hex32, odd_text, st.just("")),
        node_ids=st.one_of(st.just(w.stack.node_id), st.sampled_from(NODE_IDS), odd_text),
        safe_paths=safe_paths(w), wild_paths=wild_paths(), known_ids=frozenset(known),
    )


def _is_safe(w: World, path: str) -> bool:
    pools = str(w.stack.pool_dir("shared").parent)
    return "\x00" in path or not path.startswith("/") or w.ours(path) or path.startswith(f"{w.root}/") or path == pools or path.startswith(pools + "/")


# -- cleanup after an example -----------------------------------------------------


@dataclass
class Effects:
    """What the generated requests of one example may have left behind."""

    volumes: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)  # group snapshots, deleted with their members
    touched_fixtures: bool = False  # an OK call that changed a controller fixture
    undone: set[str] = field(default_factory=set)  # ids of OK NodeUnpublish/NodeUnstage
    published: set[tuple[str, str]] = field(default_factory=set)  # (volume id, target) from OK NodePublish
    staged: set[tuple[str, str]] = field(default_factory=set)


def record(w: World, eff: Effects, rpc_name: str, req: Any, code: grpc.StatusCode, resp: Any) -> None:
    if code != C.OK:
        return
    fixture_ids = set(w.ctl_vols.values()) | {w.snap_id}
    changing = ("DeleteVolume", "ControllerPublishVolume", "ControllerExpandVolume", "DeleteSnapshot")
    if rpc_name in changing and {getattr(req, n, None) for n in ("volume_id", "snapshot_id")} & fixture_ids:
        eff.touched_fixtures = True
    if rpc_name in ("NodeUnpublishVolume", "NodeUnstageVolume"):
        eff.undone.add(req.volume_id)
    if rpc_name == "CreateVolume":
        eff.volumes.add(resp.volume.volume_id)
    elif rpc_name == "CreateSnapshot":
        eff.snapshots.add(resp.snapshot.snapshot_id)
    elif rpc_name == "CreateVolumeGroupSnapshot":
        eff.groups.add(resp.group_snapshot.group_snapshot_id)
    elif rpc_name == "NodePublishVolume":
        eff.published.add((req.volume_id, req.target_path))
    elif rpc_name == "NodeStageVolume":
        eff.staged.add((req.volume_id, req.staging_target_path))


def restore_controller(w: World, eff: Effects) -> None:
    for gid in eff.groups:
        w.must("DeleteVolumeGroupSnapshot", csi.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid))
    for sid in eff.snapshots - {w.snap_id}:
        w.must("DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=sid))
    fixtures = set(w.ctl_vols.values())
    for vid in eff.volumes - fixtures:
        w.delete_volume(vid)
    if not eff.touched_fixtures:
        return
    for name, vid in list(w.ctl_vols.items()):
        for node in ("", w.stack.node_id):
            w.raw("ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node))
        code, resp, _ = w.raw("ControllerGetVolume", csi.ControllerGetVolumeRequest(volume_id=vid))
        if code == C.OK and resp.volume.capacity_bytes != w.ctl_sizes[name]:
            w.must("DeleteVolume", csi.DeleteVolumeRequest(volume_id=vid))
            code = C.NOT_FOUND
        if code == C.NOT_FOUND:
            w.create_ctl(name)
        else:
            assert code == C.OK, f"ControllerGetVolume of a fixture answered {code.name}"
    if not w.must("ListSnapshots", csi.ListSnapshotsRequest(snapshot_id=w.snap_id)).entries:
        w.create_snap()


def restore_node(w: World, eff: Effects) -> None:
    # A fixture volume that a generated request published or staged (perhaps with other
    # options at the fixture's own paths) is taken down completely and set up again.
    redo = {vid for vid, _ in eff.published | eff.staged} | eff.undone
    published = set(eff.published) | {(v["id"], v["target"]) for v in w.node_vols.values() if v["id"] in redo}
    staged = set(eff.staged) | {(v["id"], v["staging"]) for v in w.node_vols.values() if v["id"] in redo}
    for vid, target in sorted(published):
        w.must("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
    for vid, staging in sorted(staged):
        w.must("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))
    for kind, v in w.node_vols.items():
        if v["id"] in redo:
            w.stage_and_publish(kind)
    mounts = {m for m in _mountpoints() if w.ours(m)}
    leaked = mounts - w.baseline_mounts
    missing = w.baseline_mounts - mounts
    tree = _walk(w.root)
    extra = tree - w.baseline_tree
    if extra:
        NOTES.append(f"left below the tmp dir after cleanup: {sorted(extra)[:5]}")
        for p in sorted(extra, key=len, reverse=True):
            if p in mounts:
                continue
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    os.rmdir(p)
                else:
                    os.unlink(p)
            except OSError:
                pass
    if leaked:
        for m in sorted(leaked, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
    assert not leaked and not missing, f"mounts below the tmp dir after cleanup: leaked {sorted(leaked)}, missing {sorted(missing)}"


def run_example(w: World, requests: list[tuple[str, Any]], restore: Callable[[World, Effects], None] | None) -> None:
    before = w.host()
    eff = Effects()
    try:
        for rpc_name, req in requests:
            code, resp = w.fuzz(rpc_name, req)
            record(w, eff, rpc_name, req, code, resp)
    finally:
        if restore is not None:
            restore(w, eff)
    w.check_host(before, ", ".join(r for r, _ in requests))


# -- the tests ------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_identity_requests(world: World, data: st.DataObject) -> None:
    ctx = controller_ctx(world)
    reqs = data.draw(st.lists(st.one_of(*(request_of(n, c, ctx) for n, c in IDENTITY_RPCS.items())), min_size=1, max_size=4))
    run_example(world, reqs, None)


@FUZZ
@given(data=st.data())
def test_controller_requests(world: World, data: st.DataObject) -> None:
    ctx = controller_ctx(world)
    rpcs = {**CONTROLLER_RPCS, **GROUP_RPCS, **METADATA_RPCS}
    reqs = data.draw(st.lists(st.one_of(*(request_of(n, c, ctx) for n, c in rpcs.items())), min_size=1, max_size=4))
    run_example(world, reqs, restore_controller)


@FUZZ
@given(data=st.data())
def test_node_requests(world: World, data: st.DataObject) -> None:
    ctx = node_ctx(world)
    reqs = data.draw(st.lists(st.one_of(*(request_of(n, c, ctx) for n, c in NODE_RPCS.items())), min_size=1, max_size=4))
    for _, req in reqs:  # never point our own volumes at the host's paths
        if getattr(req, "volume_id", None) in ctx.known_ids:
            for f in PATH_FIELDS:
                if hasattr(req, f):
                    assert _is_safe(world, getattr(req, f)), f"generator bug: {f}={getattr(req, f)!r}"
    run_example(world, reqs, restore_node)


# Valid requests on the fixtures, then a few fields swapped for generated values: these
# reach the services' deeper paths (idempotent re-stage, conflicting publish, expansion).


def _valid_controller(w: World) -> dict[str, Any]:
    name = next(iter(w.ctl_vols))
    c1, cap = w.ctl_vols[name], w.ctl_caps[name]
    return {
        "CreateVolume": csi.CreateVolumeRequest(name=f"vpfz-m-{uuid.uuid4().hex[:6]}", capacity_range=csi.CapacityRange(required_bytes=64 * MiB),
                                                volume_capabilities=[cap]),
        "CreateVolume/clone": csi.CreateVolumeRequest(name=f"vpfz-k-{uuid.uuid4().hex[:6]}", volume_capabilities=[cap],
                                                      volume_content_source=csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=w.snap_id))),
        "DeleteVolume": csi.DeleteVolumeRequest(volume_id=c1),
        "ControllerPublishVolume": csi.ControllerPublishVolumeRequest(volume_id=c1, node_id=w.stack.node_id, volume_capability=cap),
        "ControllerUnpublishVolume": csi.ControllerUnpublishVolumeRequest(volume_id=c1, node_id=w.stack.node_id),
        "ValidateVolumeCapabilities": csi.ValidateVolumeCapabilitiesRequest(volume_id=c1, volume_capabilities=[cap]),
        "ListVolumes": csi.ListVolumesRequest(max_entries=2),
        "GetCapacity": csi.GetCapacityRequest(volume_capabilities=[cap], accessible_topology=csi.Topology(segments={TOPOLOGY_KEY: w.stack.node_id})),
        "CreateSnapshot": csi.CreateSnapshotRequest(name=f"vpfz-t-{uuid.uuid4().hex[:6]}", source_volume_id=c1),
        "DeleteSnapshot": csi.DeleteSnapshotRequest(snapshot_id=w.snap_id),
        "ListSnapshots": csi.ListSnapshotsRequest(source_volume_id=c1, max_entries=1),
        "ControllerExpandVolume": csi.ControllerExpandVolumeRequest(volume_id=c1, capacity_range=csi.CapacityRange(required_bytes=128 * MiB), volume_capability=cap),
        "ControllerGetVolume": csi.ControllerGetVolumeRequest(volume_id=c1),
    }


def _valid_node(w: World, kind: str) -> dict[str, Any]:
    v = w.node_vols[kind]
    other = f"{w.root}/pods/{kind}2"
    return {
        "NodeStageVolume": csi.NodeStageVolumeRequest(volume_id=v["id"], staging_target_path=v["staging"], volume_capability=v["cap"], publish_context=v["ctx"]),
        "NodeUnstageVolume": csi.NodeUnstageVolumeRequest(volume_id=v["id"], staging_target_path=v["staging"]),
        "NodePublishVolume": csi.NodePublishVolumeRequest(volume_id=v["id"], staging_target_path=v["staging"], target_path=v["target"], volume_capability=v["cap"]),
        "NodePublishVolume/other": csi.NodePublishVolumeRequest(volume_id=v["id"], staging_target_path=v["staging"], target_path=other, volume_capability=v["cap"], readonly=True),
        "NodeUnpublishVolume": csi.NodeUnpublishVolumeRequest(volume_id=v["id"], target_path=v["target"]),
        "NodeUnpublishVolume/other": csi.NodeUnpublishVolumeRequest(volume_id=v["id"], target_path=other),
        "NodeGetVolumeStats": csi.NodeGetVolumeStatsRequest(volume_id=v["id"], volume_path=v["target"], staging_target_path=v["staging"]),
        "NodeExpandVolume": csi.NodeExpandVolumeRequest(volume_id=v["id"], volume_path=v["target"], staging_target_path=v["staging"],
                                                        capacity_range=csi.CapacityRange(required_bytes=64 * MiB), volume_capability=v["cap"]),
    }


@st.composite
def mutated(draw: Callable[..., Any], templates: dict[str, Any], ctx: Ctx) -> tuple[str, Any]:
    key = draw(st.sampled_from(sorted(templates)))
    rpc_name = key.split("/")[0]
    msg = type(templates[key])()
    msg.CopyFrom(templates[key])
    fields = [f for f in msg.DESCRIPTOR.fields]
    for f in draw(st.lists(st.sampled_from(fields), max_size=3, unique_by=lambda f: f.name)):
        if draw(st.booleans()):
            msg.ClearField(f.name)
            continue
        # One generated value in place of the valid one.
        ctx.known_volume = msg.volume_id in ctx.known_ids if hasattr(msg, "volume_id") else False
        one = type(msg)()
        _fill_field(draw, one, f, ctx)
        msg.ClearField(f.name)
        msg.MergeFrom(one)
    if hasattr(msg, "volume_id") and msg.volume_id in ctx.known_ids:
        for f in PATH_FIELDS:
            if hasattr(msg, f) and not _is_safe(ctx_world[0], getattr(msg, f)):
                msg.ClearField(f)
    return rpc_name, msg


ctx_world: list[World] = []


def _fill_field(draw: Callable[..., Any], msg: Any, f: FD, ctx: Ctx) -> None:
    name = f.name
    if _is_map(f):
        getattr(msg, name).update(draw(_map_for(name)))
    elif f.type == FD.TYPE_MESSAGE:
        if _is_repeated(f):
            if f.message_type.name == "VolumeCapability":
                getattr(msg, name).extend(draw(st.lists(capabilities(), max_size=3)))
            else:
                for _ in range(draw(st.integers(0, 3))):
                    fill(draw, getattr(msg, name).add(), ctx, 1)
        elif f.message_type.name == "VolumeCapability":
            getattr(msg, name).CopyFrom(draw(capabilities()))
        else:
            sub = getattr(msg, name)
            sub.SetInParent()
            fill(draw, sub, ctx, 1)
    elif _is_repeated(f):
        getattr(msg, name).extend(draw(st.lists(_scalar(f, ctx), max_size=4)))
    else:
        setattr(msg, name, draw(_scalar(f, ctx)))


@FUZZ
@given(data=st.data())
def test_controller_mutations(world: World, data: st.DataObject) -> None:
    ctx_world[:] = [world]
    ctx = controller_ctx(world)
    reqs = data.draw(st.lists(mutated(_valid_controller(world), ctx), min_size=1, max_size=4))
    run_example(world, reqs, restore_controller)


@FUZZ
@given(data=st.data())
def test_node_mutations(world: World, data: st.DataObject) -> None:
    ctx_world[:] = [world]
    ctx = node_ctx(world)
    kind = data.draw(st.sampled_from(sorted(world.node_vols)))
    reqs = data.draw(st.lists(mutated(_valid_node(world, kind), ctx), min_size=1, max_size=4))
    for _, req in reqs:
        if getattr(req, "volume_id", None) in ctx.known_ids:
            for f in PATH_FIELDS:
                if hasattr(req, f):
                    assert _is_safe(world, getattr(req, f)), f"generator bug: {f}={getattr(req, f)!r}"
    run_example(world, reqs, restore_node)


def test_zz_stack_survived_and_report(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Every process alive, Probe ready, nothing leaked; then the (RPC, code) table."""
    assert world.stack.dead() == []
    assert world.client.identity.Probe(csi.ProbeRequest(), timeout=10).ready.value
    leaked_vols = world.all_volumes() - world.volumes_before - set(world.ctl_vols.values()) - {v["id"] for v in world.node_vols.values()}
    leaked_snaps = world.all_snapshots() - world.snapshots_before - {world.snap_id}
    total = sum(COUNTS.values())
    with capsys.disabled():
        print(f"\n\nvolplane fuzz: {total} generated requests, max_examples={EXAMPLES} per test")
        print(f"{'RPC':<34}{'status':<22}{'count':>8}")
        for (name, code), n in sorted(COUNTS.items()):
            print(f"{name:<34}{code:<22}{n:>8}")
        print("mean latency of all calls (generated and cleanup), ms: " + ", ".join(
            f"{name} {1000 * TIMES[name] / max(1, CALLS[name]):.1f}" for name in sorted(TIMES)))
        for note in sorted(set(NOTES))[:20]:
            print(f"note: {note}")
    assert not leaked_vols and not leaked_snaps, f"left behind: volumes {sorted(leaked_vols)}, snapshots {sorted(leaked_snaps)}"
