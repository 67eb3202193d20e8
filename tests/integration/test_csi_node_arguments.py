"""CSI Node with bad arguments: missing fields, paths that escape, symlinks, ids that are paths,
flags and filesystems not allowed — each refused with the spec's code and nothing touched."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import code_of, mount_cap, mount_points, mounts_at, mounts_under, needs_root
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
