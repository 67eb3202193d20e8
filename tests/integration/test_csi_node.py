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
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import Csi, code_of, loops_backing, mount_cap, mount_options_at, mounts_at, mounts_under, needs_root
from tests.integration.node_helpers import (  # noqa: F401 - fixtures are used by name
    TIMEOUT,
    MiB,
    Mode,
    Node,
    node,
    pool_dirs,
    pools_root,
    staged,
)
from volplane.csi import csi_pb2 as csi

pytestmark = needs_root


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
    _vol, staging = staged
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
    _vol, staging = staged
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

    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ControllerPublishVolume" in info.value.details()
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


@pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="mkfs.xfs (xfsprogs) is not installed")
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
            return exc.code()
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
