"""CSI Node through the real socket: real images, loop devices, ext4 and mounts.

Every path lives under pytest's tmp_path. The ``node`` fixture records what a test
staged, published and created, and undoes it through the CSI API when the test ends;
then, as a backstop that does not trust the driver, it unmounts and detaches whatever
is left by hand and fails the test if it had to.

Images live in this node's pool (``run/pools/<node id>``) or in the shared pool
(``run/pools/shared``), wherever the provisioner put them.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import Csi, code_of, loops_backing, mount_cap, mount_options_at, mount_points, mounts_at, mounts_under, needs_root
from volplane.csi import csi_pb2 as csi
from volplane.launcher import Stack
from volplane.nodes import SHARED_POOL

pytestmark = needs_root

MiB = 2**20
TIMEOUT = 60
Mode = csi.VolumeCapability.AccessMode


def pools_root(stack: Stack) -> Path:
    return stack.run_dir / "pools"


def pool_dirs(stack: Stack) -> list[Path]:
    """This node's pool, then the shared pool."""
    local = stack.env.get("VOLPLANE_POOL_DIR") or pools_root(stack) / stack.node_id
    shared = stack.env.get("VOLPLANE_SHARED_POOL_DIR") or pools_root(stack) / SHARED_POOL
    return [Path(local), Path(shared)]










class Node:
    """CSI calls that remember what they did, so the fixture can undo it."""

    def __init__(self, client: Csi, stack: Stack, tmp_path: Path) -> None:
        self.client = client
        self.stack = stack
        self.tmp = tmp_path
        self.volumes: list[str] = []
        self.staged: list[tuple[str, Path]] = []
        self.published: list[tuple[str, Path]] = []

    def create(
        self, required: int = 64 * MiB, cap: csi.VolumeCapability | None = None, attach: bool = True, parameters: dict[str, str] | None = None
    ) -> csi.Volume:
        """A new volume, published to this node (ControllerPublishVolume) as a CO does before staging."""
        req = csi.CreateVolumeRequest(
            name=f"node-{uuid.uuid4().hex}",
            capacity_range=csi.CapacityRange(required_bytes=required),
            volume_capabilities=[cap or mount_cap()],
            parameters=parameters or {},
        )
        vol = self.client.controller.CreateVolume(req, timeout=TIMEOUT).volume
        self.volumes.append(vol.volume_id)
        if attach:
            self.attach(vol.volume_id, cap)
        return vol

    def attach(self, vid: str, cap: csi.VolumeCapability | None = None) -> None:
        req = csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=self.stack.node_id, volume_capability=cap or mount_cap())
        self.client.controller.ControllerPublishVolume(req, timeout=TIMEOUT)

    def detach(self, vid: str) -> None:
        req = csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=self.stack.node_id)
        self.client.controller.ControllerUnpublishVolume(req, timeout=TIMEOUT)

    def image(self, vol: csi.Volume) -> Path:
        """The volume's image, in whichever pool the provisioner put it."""
        candidates = [d / f"{vol.volume_id}.img" for d in pool_dirs(self.stack)]
        return next((c for c in candidates if c.exists()), candidates[0])

    def staging_dir(self, name: str = "staging") -> Path:
        path = self.tmp / name
        path.mkdir()
        return path

    def stage(self, vid: str, staging: Path, cap: csi.VolumeCapability | None = None, context: dict[str, str] | None = None) -> None:
        self.client.node.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=vid,
                staging_target_path=str(staging),
                volume_capability=cap or mount_cap(),
                volume_context=context or {},
            ),
            timeout=TIMEOUT,
        )
        # Recorded only on success: a refused stage must not be undone (that unstage would be refused in turn);
        # anything a failed call left on the host is found by the backstop in cleanup.
        if (vid, staging) not in self.staged:
            self.staged.append((vid, staging))

    def publish(self, vid: str, staging: Path, target: Path, readonly: bool = False, cap: csi.VolumeCapability | None = None) -> None:
        self.client.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=vid,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=cap or mount_cap(),
                readonly=readonly,
            ),
            timeout=TIMEOUT,
        )
        if (vid, target) not in self.published:
            self.published.append((vid, target))

    def unpublish(self, vid: str, target: Path) -> None:
        self.client.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(target)), timeout=TIMEOUT)

    def unstage(self, vid: str, staging: Path) -> None:
        self.client.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(staging)), timeout=TIMEOUT)

    def delete(self, vid: str) -> None:
        """ControllerUnpublish from this node, then DeleteVolume (which refuses a published volume)."""
        self.detach(vid)
        self.client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)

    def loops(self) -> list[str]:
        return [line for line in loops_backing(pools_root(self.stack)) if any(v in line for v in self.volumes)]

    def cleanup(self) -> list[str]:
        """Undo through CSI, then by hand; returns what the driver left behind."""
        problems: list[str] = []
        for step, items in ((self.unpublish, self.published), (self.unstage, self.staged)):
            for vid, path in reversed(items):
                try:
                    step(vid, path)
                except grpc.RpcError as exc:
                    problems.append(f"{step.__name__}({path}): {exc.code()} {exc.details()}")  # type: ignore[attr-defined]
        for vid in self.volumes:
            try:
                self.delete(vid)
            except grpc.RpcError as exc:
                problems.append(f"delete({vid}): {exc.code()} {exc.details()}")  # type: ignore[attr-defined]
        for point in reversed([p for p in mount_points() if p == str(self.tmp) or p.startswith(f"{self.tmp}/")]):
            problems.append(f"left mounted: {point}")
            subprocess.run(["umount", "-l", point], check=False)
        for line in self.loops():
            problems.append(f"left attached: {line}")
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        return problems


@pytest.fixture
def node(client: Csi, stack: Stack, tmp_path: Path) -> Iterator[Node]:
    n = Node(client, stack, tmp_path)
    try:
        yield n
    finally:
        problems = n.cleanup()
    assert problems == [], "cleanup through CSI failed or left host state behind"


@pytest.fixture
def staged(node: Node) -> tuple[csi.Volume, Path]:
    """A created volume staged at tmp_path/staging."""
    vol = node.create()
    staging = node.staging_dir()
    node.stage(vol.volume_id, staging, context=dict(vol.volume_context))
    return vol, staging


# -- Node identity -------------------------------------------------------------


def test_node_info_is_the_node_of_the_stack(client: Csi, stack: Stack) -> None:
    assert client.node.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=TIMEOUT).node_id == stack.node_id


def test_node_capabilities_include_stage_unstage(client: Csi) -> None:
    resp = client.node.NodeGetCapabilities(csi.NodeGetCapabilitiesRequest(), timeout=TIMEOUT)
    assert csi.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME in {c.rpc.type for c in resp.capabilities}


# -- the whole life ------------------------------------------------------------


def test_whole_life_stores_the_written_file_in_the_image_and_leaves_nothing_behind(node: Node, stack: Stack, tmp_path: Path) -> None:
    vol = node.create()
    vid = vol.volume_id
    staging = node.staging_dir()
    target = tmp_path / "pod" / "volume"
    target.parent.mkdir()
    image = node.image(vol)
    payload = f"hello from {vid}\n"

    node.stage(vid, staging, context=dict(vol.volume_context))
    assert mounts_at(staging) == 1
    assert len(node.loops()) == 1

    node.publish(vid, staging, target)
    assert target.is_dir()
    assert mounts_at(target) == 1
    (target / "hello.txt").write_text(payload)
    assert (staging / "hello.txt").read_text() == payload

    node.unpublish(vid, target)
    assert not target.exists(), "the target directory the driver created is removed"
    assert mounts_at(target) == 0

    node.unstage(vid, staging)
    assert mounts_at(staging) == 0
    assert node.loops() == []
    assert not (staging / "hello.txt").exists()

    cat = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(image)], capture_output=True, text=True, check=True)
    assert cat.stdout == payload

    node.delete(vid)
    assert not image.exists()
    assert [line for line in loops_backing(pools_root(stack)) if vid in line] == []
    assert mounts_under(tmp_path) == []


def test_restaged_volume_keeps_its_data(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    vid = vol.volume_id
    staging = node.staging_dir()
    target = tmp_path / "target"
    node.stage(vid, staging)
    node.publish(vid, staging, target)
    (target / "kept").write_text("still here")
    node.unpublish(vid, target)
    node.unstage(vid, staging)

    node.stage(vid, staging)
    node.publish(vid, staging, target)

    assert (target / "kept").read_text() == "still here"


def test_stage_mounts_ext4_with_the_requested_flags(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    again = node.staging_dir("flagged")
    other = node.create()

    node.stage(other.volume_id, again, cap=mount_cap(flags=("noatime", "nodev")))

    assert {"noatime", "nodev"} <= mount_options_at(again)
    with open("/proc/self/mountinfo") as f:
        fs_types = {line.split(" - ")[1].split(" ")[0] for line in f if line.split(" ")[4] in (str(staging), str(again))}
    assert fs_types == {"ext4"}


def test_stage_as_another_fs_than_the_volume_holds_is_refused_and_keeps_the_data(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    staging = node.staging_dir()
    node.stage(vol.volume_id, staging)
    (staging / "f").write_text("ext4 data")
    node.unstage(vol.volume_id, staging)

    code = code_of(lambda: node.stage(vol.volume_id, staging, cap=mount_cap(fs_type="xfs")))

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert mounts_at(staging) == 0 and node.loops() == []
    node.stage(vol.volume_id, staging, cap=mount_cap(fs_type="ext4"))
    assert (staging / "f").read_text() == "ext4 data"


# -- idempotency ---------------------------------------------------------------


def test_stage_repeated_ten_times_is_ok_and_mounts_once(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    for _ in range(10):
        node.stage(vol.volume_id, staging, context=dict(vol.volume_context))
    assert mounts_at(staging) == 1
    assert len(node.loops()) == 1


def test_stage_repeated_with_a_trailing_slash_is_the_same_stage(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    node.client.node.NodeStageVolume(
        csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=f"{staging}/", volume_capability=mount_cap()),
        timeout=TIMEOUT,
    )
    assert mounts_at(staging) == 1


def test_publish_repeated_ten_times_is_ok_and_binds_once(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "target"
    for _ in range(10):
        node.publish(vol.volume_id, staging, target)
    assert mounts_at(target) == 1
    assert mounts_at(staging) == 1


def test_unpublish_and_unstage_repeated_are_ok(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target)

    for _ in range(10):
        node.unpublish(vol.volume_id, target)
    assert mounts_at(target) == 0 and not target.exists()
    for _ in range(10):
        node.unstage(vol.volume_id, staging)
    assert mounts_at(staging) == 0
    assert node.loops() == []


def test_unpublish_and_unstage_of_a_volume_never_staged_are_ok(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    node.unpublish(vol.volume_id, tmp_path / "never-published")
    node.unstage(vol.volume_id, tmp_path / "never-staged")
    assert mounts_under(tmp_path) == []


def test_unpublish_leaves_a_target_it_did_not_publish_alone(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, _ = staged
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep").write_text("x")

    node.unpublish(vol.volume_id, foreign)

    assert (foreign / "keep").read_text() == "x"


# -- two targets, read-only ----------------------------------------------------


def test_two_targets_are_one_staging_mount_and_two_binds_sharing_files(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    first, second = tmp_path / "pod-a", tmp_path / "pod-b"
    node.publish(vol.volume_id, staging, first)
    node.publish(vol.volume_id, staging, second)

    (first / "shared").write_text("written in a")

    assert (second / "shared").read_text() == "written in a"
    assert (mounts_at(staging), mounts_at(first), mounts_at(second)) == (1, 1, 1)
    assert len(node.loops()) == 1

    node.unpublish(vol.volume_id, first)
    assert (second / "shared").read_text() == "written in a", "the other target stays published"


def test_readonly_publish_refuses_writes(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    (staging / "existing").write_text("data")
    target = tmp_path / "ro"

    node.publish(vol.volume_id, staging, target, readonly=True)

    assert (target / "existing").read_text() == "data"
    assert "ro" in mount_options_at(target)
    with pytest.raises(OSError) as info:
        (target / "new").write_text("x")
    assert info.value.errno == errno.EROFS
    (staging / "still-writable").write_text("y")  # only the bind is read-only


def test_reader_only_access_mode_publishes_read_only(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "reader"

    node.publish(vol.volume_id, staging, target, cap=mount_cap(mode=Mode.SINGLE_NODE_READER_ONLY))

    with pytest.raises(OSError) as info:
        (target / "new").write_text("x")
    assert info.value.errno == errno.EROFS


def test_publish_with_other_readonly_at_the_same_target_already_exists(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target, readonly=False)

    assert code_of(lambda: node.publish(vol.volume_id, staging, target, readonly=True)) == grpc.StatusCode.ALREADY_EXISTS
    assert mounts_at(target) == 1


# -- preconditions -------------------------------------------------------------


def test_publish_without_a_staging_path_is_a_failed_precondition(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    target = tmp_path / "target"
    req = csi.NodePublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target), volume_capability=mount_cap())

    assert code_of(lambda: node.client.node.NodePublishVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.FAILED_PRECONDITION
    assert not target.exists()


def test_publish_when_not_staged_is_a_failed_precondition(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    staging = node.staging_dir()
    target = tmp_path / "target"

    assert code_of(lambda: node.publish(vol.volume_id, staging, target)) == grpc.StatusCode.FAILED_PRECONDITION
    assert not target.exists()
    assert mounts_under(tmp_path) == []


def test_publish_from_another_staging_path_is_a_failed_precondition(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, _ = staged
    elsewhere = node.staging_dir("elsewhere")

    assert code_of(lambda: node.publish(vol.volume_id, elsewhere, tmp_path / "target")) == grpc.StatusCode.FAILED_PRECONDITION
    assert not (tmp_path / "target").exists()


def test_unstage_while_published_is_a_failed_precondition_and_changes_nothing(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target)
    (target / "f").write_text("x")

    assert code_of(lambda: node.unstage(vol.volume_id, staging)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (mounts_at(staging), mounts_at(target)) == (1, 1)
    assert (target / "f").read_text() == "x"


def test_stage_at_a_second_path_is_a_failed_precondition(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    second = node.staging_dir("second")

    assert code_of(lambda: node.stage(vol.volume_id, second)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (mounts_at(staging), mounts_at(second)) == (1, 0)


def test_stage_of_a_volume_never_created_is_not_found(node: Node, tmp_path: Path) -> None:
    vid = uuid.uuid4().hex
    staging = tmp_path / "staging"

    assert code_of(lambda: node.stage(vid, staging)) == grpc.StatusCode.NOT_FOUND
    assert not staging.exists()
    assert mounts_under(tmp_path) == []
    assert [line for line in loops_backing(pools_root(node.stack)) if vid in line] == []


def test_stage_of_a_deleted_volume_is_not_found(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    node.delete(vol.volume_id)

    assert code_of(lambda: node.stage(vol.volume_id, tmp_path / "staging")) == grpc.StatusCode.NOT_FOUND
    assert mounts_under(tmp_path) == []


# -- bad arguments -------------------------------------------------------------

VID = "0123456789abcdef0123456789abcdef"


def _bad_requests(tmp: Path) -> list[tuple[str, object]]:
    s, t, cap = str(tmp / "staging"), str(tmp / "target"), mount_cap()
    no_type = csi.VolumeCapability(access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    no_mode = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume())
    return [
        ("NodeStageVolume", csi.NodeStageVolumeRequest(staging_target_path=s, volume_capability=cap)),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(volume_id=VID, volume_capability=cap)),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(volume_id=VID, staging_target_path=s)),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(volume_id=VID, staging_target_path=s, volume_capability=no_type)),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(volume_id=VID, staging_target_path=s, volume_capability=no_mode)),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(staging_target_path=s, target_path=t, volume_capability=cap)),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(volume_id=VID, staging_target_path=s, volume_capability=cap)),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(volume_id=VID, staging_target_path=s, target_path=t)),
        ("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(staging_target_path=s)),
        ("NodeUnstageVolume", csi.NodeUnstageVolumeRequest(volume_id=VID)),
        ("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(target_path=t)),
        ("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(volume_id=VID)),
    ]


MISSING = [
    "stage-no-id", "stage-no-staging", "stage-no-capability", "stage-no-access-type", "stage-no-access-mode",
    "publish-no-id", "publish-no-target", "publish-no-capability",
    "unstage-no-id", "unstage-no-staging", "unpublish-no-id", "unpublish-no-target",
]


@pytest.mark.parametrize("case", range(len(MISSING)), ids=MISSING)
def test_request_with_a_missing_field_is_an_invalid_argument(node: Node, tmp_path: Path, case: int) -> None:
    method, request = _bad_requests(tmp_path)[case]
    call = getattr(node.client.node, method)
    assert code_of(lambda: call(request, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(tmp_path.iterdir()) == []


BAD_PATHS = {
    "relative": lambda tmp: "relative/staging",
    "dotdot": lambda tmp: f"{tmp}/a/../staging",
    "dotdot-escape": lambda tmp: f"{tmp}/../../../etc/volplane-escape",
    "nul": lambda tmp: f"{tmp}/sta\x00ging",
    "root": lambda tmp: "/",
}


@pytest.mark.parametrize("kind", list(BAD_PATHS))
@pytest.mark.parametrize("field", ["staging", "target"])
def test_bad_path_is_an_invalid_argument(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path, kind: str, field: str) -> None:
    vol, staging = staged
    bad = BAD_PATHS[kind](tmp_path)
    before = mount_points()
    if field == "staging":
        other = node.create()
        call: Callable[[], object] = lambda: node.client.node.NodeStageVolume(  # noqa: E731
            csi.NodeStageVolumeRequest(volume_id=other.volume_id, staging_target_path=bad, volume_capability=mount_cap()), timeout=TIMEOUT
        )
    else:
        call = lambda: node.client.node.NodePublishVolume(  # noqa: E731
            csi.NodePublishVolumeRequest(
                volume_id=vol.volume_id, staging_target_path=str(staging), target_path=bad, volume_capability=mount_cap()
            ),
            timeout=TIMEOUT,
        )

    assert code_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert mount_points() == before
    assert not Path("/etc/volplane-escape").exists()


@pytest.mark.parametrize("kind", ["relative", "dotdot", "nul"])
def test_bad_path_to_unpublish_or_unstage_is_an_invalid_argument(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path, kind: str) -> None:
    vol, staging = staged
    bad = BAD_PATHS[kind](tmp_path)

    assert code_of(lambda: node.client.node.NodeUnpublishVolume(
        csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=bad), timeout=TIMEOUT
    )) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: node.client.node.NodeUnstageVolume(
        csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=bad), timeout=TIMEOUT
    )) == grpc.StatusCode.INVALID_ARGUMENT
    assert mounts_at(staging) == 1


def test_target_whose_parent_is_a_symlink_is_an_invalid_argument(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    before = mount_points()

    assert code_of(lambda: node.publish(vol.volume_id, staging, tmp_path / "link" / "target")) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(real.iterdir()) == []
    assert mount_points() == before


def test_staging_whose_parent_is_a_symlink_is_an_invalid_argument(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)

    assert code_of(lambda: node.stage(vol.volume_id, tmp_path / "link" / "staging")) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(real.iterdir()) == []
    assert mounts_under(tmp_path) == []


def test_target_that_is_a_symlink_is_an_invalid_argument_and_nothing_is_mounted_where_it_points(
    node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path
) -> None:
    vol, staging = staged
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "target").symlink_to(victim)

    assert code_of(lambda: node.publish(vol.volume_id, staging, tmp_path / "target")) == grpc.StatusCode.INVALID_ARGUMENT
    assert mounts_at(victim) == 0
    assert (tmp_path / "target").is_symlink()


def test_staging_path_that_is_a_symlink_is_an_invalid_argument_and_nothing_is_mounted_where_it_points(node: Node, tmp_path: Path) -> None:
    vol = node.create()
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "staging").symlink_to(victim)

    assert code_of(lambda: node.stage(vol.volume_id, tmp_path / "staging")) == grpc.StatusCode.INVALID_ARGUMENT
    assert mounts_under(tmp_path) == []
    assert node.loops() == []


def test_target_whose_parent_does_not_exist_is_refused_and_not_created(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "missing" / "target"

    code = code_of(lambda: node.publish(vol.volume_id, staging, target))

    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert not target.parent.exists()


@pytest.mark.parametrize(
    "vid",
    ["../../etc", "..", "../" * 40, "/etc/passwd", "a/../../b", "..%2f..%2fetc", f"{VID}/../../x", VID.upper()],
    ids=["dotdot-etc", "dotdot", "deep", "absolute", "mixed", "encoded", "hex-prefix", "uppercase-hex"],
)
def test_volume_id_that_is_a_path_is_refused_and_creates_nothing(node: Node, stack: Stack, tmp_path: Path, vid: str) -> None:
    watched = [pools_root(stack), *pool_dirs(stack), stack.run_dir]
    before_entries = {p: sorted(os.listdir(p)) for p in watched if p.is_dir()}
    before_mounts = mount_points()
    staging = node.staging_dir()
    target = tmp_path / "target"

    stage_code = code_of(lambda: node.stage(vid, staging))
    publish_code = code_of(lambda: node.publish(vid, staging, target))

    assert stage_code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert publish_code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert {p: sorted(os.listdir(p)) for p in before_entries} == before_entries
    assert mount_points() == before_mounts
    assert list(staging.iterdir()) == [] and not target.exists()


@pytest.mark.parametrize("flag", ["bind", "remount", "x-mount.mkdir", "uid=0", "noatime,bind", "suid"])
def test_disallowed_mount_flag_is_an_invalid_argument(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path, flag: str) -> None:
    vol, staging = staged
    other = node.create()
    second = node.staging_dir("second")
    cap = mount_cap(flags=("noatime", flag))
    before = mount_points()

    assert code_of(lambda: node.stage(other.volume_id, second, cap=cap)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: node.publish(vol.volume_id, staging, tmp_path / "target", cap=cap)) == grpc.StatusCode.INVALID_ARGUMENT
    assert mount_points() == before


@pytest.mark.parametrize("fs", ["btrfs", "vfat", "proc"])
def test_unsupported_fs_type_is_an_invalid_argument(node: Node, tmp_path: Path, fs: str) -> None:
    vol = node.create()
    staging = node.staging_dir()

    assert code_of(lambda: node.stage(vol.volume_id, staging, cap=mount_cap(fs_type=fs))) == grpc.StatusCode.INVALID_ARGUMENT
    assert mounts_under(tmp_path) == []


def test_block_volume_through_csi_is_a_device_at_the_target_and_leaves_nothing_behind(node: Node, tmp_path: Path) -> None:
    block = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    vol = node.create(cap=block)
    staging = node.staging_dir()
    (tmp_path / "pod").mkdir()
    target = tmp_path / "pod" / "dev"

    node.stage(vol.volume_id, staging, cap=block)
    node.publish(vol.volume_id, staging, target, cap=block)

    assert mounts_at(staging) == 0 and mounts_at(target) == 1
    assert stat.S_ISBLK(os.stat(target).st_mode)
    assert code_of(lambda: node.publish(vol.volume_id, staging, tmp_path / "fs", cap=mount_cap())) == grpc.StatusCode.FAILED_PRECONDITION
    node.unpublish(vol.volume_id, target)
    node.unstage(vol.volume_id, staging)
    assert not target.exists() and node.loops() == []
    assert mounts_under(tmp_path) == []


# -- failures leave the volume usable --------------------------------------------


def test_publish_at_a_regular_file_is_refused_and_the_volume_stays_usable(
    node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path
) -> None:
    vol, staging = staged
    target = tmp_path / "a-file"
    target.write_text("not a directory")

    assert code_of(lambda: node.publish(vol.volume_id, staging, target)) == grpc.StatusCode.FAILED_PRECONDITION

    assert target.read_text() == "not a directory"
    node.unpublish(vol.volume_id, target)
    node.unstage(vol.volume_id, staging)
    node.staged.clear()
    assert mounts_under(tmp_path) == []


# -- the host, not the record, is the truth ----------------------------------------


def test_stage_again_after_the_staging_mount_vanished_mounts_it_again(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    (staging / "f").write_text("x")
    subprocess.run(["umount", str(staging)], check=True)  # as after a node reboot

    node.stage(vol.volume_id, staging)

    assert mounts_at(staging) == 1
    assert (staging / "f").read_text() == "x"


def test_publish_again_after_the_bind_vanished_binds_it_again(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    (staging / "f").write_text("x")
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target)
    subprocess.run(["umount", str(target)], check=True)

    node.publish(vol.volume_id, staging, target)

    assert (target / "f").read_text() == "x"


def test_second_volume_published_at_a_taken_target_is_refused(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    (staging / "owner").write_text("a")
    other = node.create()
    other_staging = node.staging_dir("other")
    node.stage(other.volume_id, other_staging)
    (other_staging / "owner").write_text("b")
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target)

    assert code_of(lambda: node.publish(other.volume_id, other_staging, target)) == grpc.StatusCode.FAILED_PRECONDITION

    assert mounts_at(target) == 1
    assert (target / "owner").read_text() == "a"


def test_second_volume_staged_at_a_taken_staging_path_is_refused(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    (staging / "owner").write_text("a")
    other = node.create()

    assert code_of(lambda: node.stage(other.volume_id, staging)) == grpc.StatusCode.FAILED_PRECONDITION

    node.unstage(other.volume_id, staging)  # nothing of the other volume is staged: OK, and A stays
    assert mounts_at(staging) == 1
    assert (staging / "owner").read_text() == "a"


def test_delete_of_a_staged_volume_still_releases_its_loop_device_at_unstage(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged

    node.delete(vol.volume_id)  # a misbehaving CO: delete before unstage
    node.unstage(vol.volume_id, staging)
    node.staged.clear()

    assert node.loops() == []
    assert mounts_at(staging) == 0


# -- attachment required ---------------------------------------------------------------


def test_stage_of_a_volume_not_published_to_this_node_is_a_failed_precondition(node: Node, tmp_path: Path) -> None:
    vol = node.create(attach=False)
    staging = node.staging_dir()

    with pytest.raises(grpc.RpcError) as info:
        node.stage(vol.volume_id, staging)

    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "ControllerPublishVolume" in info.value.details()  # type: ignore[attr-defined]
    assert mounts_under(tmp_path) == [] and node.loops() == []


def test_stage_after_controller_publish_goes_ahead(node: Node) -> None:
    vol = node.create(attach=False)
    staging = node.staging_dir()
    node.attach(vol.volume_id)

    node.stage(vol.volume_id, staging)

    assert mounts_at(staging) == 1


def test_staged_volume_restaged_does_not_ask_the_attacher_again(node: Node, staged: tuple[csi.Volume, Path]) -> None:
    vol, staging = staged
    node.detach(vol.volume_id)  # the controller side forgot it; the node still holds it

    node.stage(vol.volume_id, staging)

    assert mounts_at(staging) == 1


# -- volume stats and expansion through CSI ------------------------------------------------

Unit = csi.VolumeUsage.Unit


def stats_of(node: Node, vid: str, path: Path | str) -> csi.NodeGetVolumeStatsResponse:
    return node.client.node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=str(path)), timeout=TIMEOUT)


def test_volume_stats_through_csi_are_the_mounted_filesystem_and_healthy(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target)
    fs = os.statvfs(target)

    resp = stats_of(node, vol.volume_id, target)

    usage = {u.unit: u for u in resp.usage}
    assert usage[Unit.BYTES].total == fs.f_blocks * fs.f_frsize
    assert usage[Unit.INODES].total == fs.f_files
    assert not resp.volume_condition.abnormal


def test_volume_stats_through_csi_turn_abnormal_when_the_image_is_gone(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path) -> None:
    vol, staging = staged
    target = tmp_path / "target"
    node.publish(vol.volume_id, staging, target)
    node.image(vol).unlink()

    resp = stats_of(node, vol.volume_id, target)

    assert resp.volume_condition.abnormal
    assert "gone" in resp.volume_condition.message


@pytest.mark.parametrize("where", ["some/path", "elsewhere"])
def test_volume_stats_and_expansion_where_the_volume_is_not_are_not_found(node: Node, staged: tuple[csi.Volume, Path], tmp_path: Path, where: str) -> None:
    vol, _ = staged
    path = where if where == "some/path" else str(tmp_path / where)

    assert code_of(lambda: stats_of(node, vol.volume_id, path)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: node.client.node.NodeExpandVolume(
        csi.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=path), timeout=TIMEOUT
    )) == grpc.StatusCode.NOT_FOUND


def test_controller_then_node_expansion_grows_a_published_xfs_volume(node: Node, tmp_path: Path) -> None:
    cap = mount_cap(fs_type="xfs")
    vol = node.create(required=320 * MiB, cap=cap)
    staging = node.staging_dir()
    target = tmp_path / "target"
    node.stage(vol.volume_id, staging, cap=cap)
    node.publish(vol.volume_id, staging, target, cap=cap)
    (target / "kept").write_text("data")
    before = os.statvfs(target)

    grown = node.client.controller.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=640 * MiB)), timeout=TIMEOUT
    )
    resp = node.client.node.NodeExpandVolume(
        csi.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=str(target), capacity_range=csi.CapacityRange(required_bytes=640 * MiB)),
        timeout=TIMEOUT,
    )

    after = os.statvfs(target)
    assert grown.node_expansion_required and resp.capacity_bytes == grown.capacity_bytes >= 640 * MiB
    assert after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize + 250 * MiB
    assert (target / "kept").read_text() == "data"


# -- concurrency --------------------------------------------------------------------


def test_concurrent_stage_and_publish_of_one_volume_are_ok_or_aborted_and_make_one_mount_each(node: Node, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    vol = node.create()
    staging = node.staging_dir()
    target = tmp_path / "target"

    def outcome(call: Callable[[], None]) -> grpc.StatusCode:
        try:
            call()
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(8) as pool:
        stages = set(pool.map(lambda _: outcome(lambda: node.stage(vol.volume_id, staging)), range(8)))
        node.stage(vol.volume_id, staging)  # a CO retries an ABORTED call
        publishes = set(pool.map(lambda _: outcome(lambda: node.publish(vol.volume_id, staging, target)), range(8)))
        node.publish(vol.volume_id, staging, target)

    # The spec's answer to an operation already pending on the volume is ABORTED; nothing else may come back.
    assert stages | publishes <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    assert grpc.StatusCode.OK in stages and grpc.StatusCode.OK in publishes
    assert (mounts_at(staging), mounts_at(target)) == (1, 1)
    assert len(node.loops()) == 1
