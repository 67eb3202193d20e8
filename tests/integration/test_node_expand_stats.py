"""NodeExpandVolume and NodeGetVolumeStats on a real nodeagent: ext4, xfs and block volumes.

The same nodeagent-only stack and ``agent`` fixture as ``test_node_block.py``; commands go
over NATS. ControllerExpandVolume is simulated by growing the image with ``os.truncate``.
xfs needs images of at least 300 MiB, so filesystem tests use 320 MiB ones (sparse).

ext4 grows a mounted filesystem only for a process holding CAP_SYS_RESOURCE. Where the
nodeagent lacks it (some sandboxes drop it even for root) an ext4 volume grows unmounted,
which the node allows only while the volume is published nowhere; both cases are tested,
each where it applies.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from services.nodeagent.domain.events import VolumeExpandingOnNode
from tests.conftest import needs_root
from tests.integration.test_node_block import (  # noqa: F401 - fixtures are used by name
    BLOCK,
    Agent,
    MiB,
    NodeStack,
    agent,
    device_bytes,
    mounts_at,
    node_stack,
)
from volplane import subjects
from volplane.commands import Capability
from volplane.errors import FailedPrecondition, NotFound, OutOfRange
from volplane.eventstore import EventStore

pytestmark = needs_root

SIZE = 320 * MiB
GROWN = 640 * MiB
# Filesystem metadata takes its share; a grown filesystem gains at least this much.
GAIN = 250 * MiB


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


EXT4_ONLINE = _has_cap_sys_resource()
needs_ext4_online = pytest.mark.skipif(not EXT4_ONLINE, reason="ext4 grows online only with CAP_SYS_RESOURCE, which this host lacks")
needs_ext4_offline = pytest.mark.skipif(EXT4_ONLINE, reason="this host grows ext4 online; the unmounted path is not taken")


def fs_cap(fs: str) -> Capability:
    return Capability(access_type="mount", fs_type=fs, access_mode=1)


def fs_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def df_bytes(path: Path) -> int:
    out = subprocess.run(["df", "-B1", "--output=size", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[1])


def staged_and_published(agent: Agent, fs: str, size: int = SIZE) -> tuple[str, Path, Path]:
    vid = agent.image(size)
    staging = agent.staging_dir()
    target = agent.tmp / "pod"
    cap = BLOCK if fs == "block" else fs_cap(fs)
    if fs == "block":
        target = agent.target("pod")
    agent.stage(vid, staging, cap)
    agent.publish(vid, staging, target, cap)
    return vid, staging, target


# -- NodeExpandVolume ------------------------------------------------------------------


@pytest.mark.parametrize("fs", [pytest.param("ext4", marks=needs_ext4_online), "xfs"])
def test_published_filesystem_grows_online_to_the_grown_image(agent: Agent, fs: str) -> None:
    vid, staging, target = staged_and_published(agent, fs)
    (target / "kept").write_text("data")
    before = fs_bytes(target)
    os.truncate(agent.images[vid], GROWN)

    capacity = agent.expand(vid, target, required=GROWN)

    assert capacity == GROWN
    assert df_bytes(target) == fs_bytes(target) > before + GAIN
    assert fs_bytes(staging) == fs_bytes(target)
    assert (target / "kept").read_text() == "data"
    assert mounts_at(target) == 1


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_staged_filesystem_grows_before_it_is_published(agent: Agent, fs: str) -> None:
    vid = agent.image(SIZE)
    staging = agent.staging_dir()
    agent.stage(vid, staging, fs_cap(fs))
    (staging / "kept").write_text("data")
    before = fs_bytes(staging)
    os.truncate(agent.images[vid], GROWN)

    assert agent.expand(vid, staging, required=GROWN) == GROWN

    target = agent.tmp / "pod"
    agent.publish(vid, staging, target, fs_cap(fs))
    assert df_bytes(target) > before + GAIN
    assert (target / "kept").read_text() == "data"
    assert mounts_at(staging) == 1


@needs_ext4_offline
def test_published_ext4_that_cannot_grow_online_is_a_failed_precondition_and_stays_usable(agent: Agent) -> None:
    vid, staging, target = staged_and_published(agent, "ext4")
    (target / "kept").write_text("data")
    before = fs_bytes(target)
    os.truncate(agent.images[vid], GROWN)

    with pytest.raises(FailedPrecondition, match="CAP_SYS_RESOURCE"):
        agent.expand(vid, target, required=GROWN)

    assert fs_bytes(target) == before
    assert (target / "kept").read_text() == "data"
    agent.unpublish(vid, target)
    assert agent.expand(vid, staging, required=GROWN) == GROWN
    assert fs_bytes(staging) > before + GAIN


def test_block_volume_grows_at_every_target_including_readonly_ones(agent: Agent) -> None:
    vid, staging, target = staged_and_published(agent, "block", 64 * MiB)
    reader = agent.target("reader")
    agent.publish(vid, staging, reader, readonly=True)
    os.truncate(agent.images[vid], 128 * MiB)

    assert agent.expand(vid, target, required=128 * MiB) == 128 * MiB

    assert device_bytes(target) == device_bytes(reader) == 128 * MiB


def test_repeated_expand_returns_the_same_capacity_and_records_nothing_more(agent: Agent) -> None:
    vid, _, target = staged_and_published(agent, "block", 64 * MiB)
    os.truncate(agent.images[vid], 96 * MiB)
    agent.expand(vid, target)
    events = agent.ns.events(vid)

    assert [agent.expand(vid, target, required=96 * MiB) for _ in range(3)] == [96 * MiB] * 3
    assert agent.ns.events(vid) == events
    assert events[-2:] == ["VolumeExpandingOnNode", "VolumeExpandedOnNode"]


def test_expand_beyond_what_the_image_holds_is_out_of_range(agent: Agent) -> None:
    vid, _, target = staged_and_published(agent, "block", 64 * MiB)

    with pytest.raises(OutOfRange):
        agent.expand(vid, target, required=128 * MiB)
    assert device_bytes(target) == 64 * MiB


def test_expand_where_the_volume_is_not_is_not_found(agent: Agent) -> None:
    vid, _, _ = staged_and_published(agent, "block", 64 * MiB)
    never_staged = agent.image()

    for volume, path in [(vid, agent.tmp / "elsewhere"), (vid, Path("some/path")), (never_staged, agent.tmp), ("0" * 32, agent.tmp), ("../x", agent.tmp)]:
        with pytest.raises(NotFound):
            agent.expand(volume, path)


def test_expansion_a_crash_left_pending_is_finished_when_the_nodeagent_starts(agent: Agent, node_stack: NodeStack) -> None:
    vid = agent.image(SIZE)
    staging = agent.staging_dir()
    agent.stage(vid, staging, fs_cap("xfs"))
    before = fs_bytes(staging)
    os.truncate(agent.images[vid], GROWN)
    node_stack.stack.stop_service("nodeagent")
    subject = subjects.node_volume(node_stack.node, vid)
    store = EventStore(node_stack.nc.jetstream())
    last = node_stack.run(store.read(subject))[-1].seq
    node_stack.run(store.append(subject, VolumeExpandingOnNode(volume_id=vid, capacity_bytes=GROWN), expected=last))

    node_stack.stack.start_service("nodeagent")
    node_stack.stack.wait_healthy(["nodeagent"])

    assert agent.ns.events(vid)[-1] == "VolumeExpandedOnNode"
    assert fs_bytes(staging) > before + GAIN
    assert agent.expand(vid, staging) == GROWN


# -- NodeGetVolumeStats -----------------------------------------------------------------


def test_filesystem_stats_move_after_writing_a_file(agent: Agent) -> None:
    vid, staging, target = staged_and_published(agent, "ext4", 64 * MiB)
    before = agent.stats(vid, target)
    with open(target / "blob", "wb") as f:
        f.write(os.urandom(8 * MiB))
        os.fsync(f.fileno())

    after = agent.stats(vid, target)

    assert (before.block, before.abnormal, before.condition) == (False, False, "")
    assert after.total_bytes == before.total_bytes == fs_bytes(target)
    assert after.used_bytes >= before.used_bytes + 8 * MiB
    assert after.available_bytes <= before.available_bytes - 8 * MiB
    assert after.used_inodes == before.used_inodes + 1
    assert after.total_inodes == before.total_inodes > 0
    assert agent.stats(vid, staging).used_bytes == after.used_bytes


def test_block_stats_are_the_device_size(agent: Agent) -> None:
    vid, staging, target = staged_and_published(agent, "block", 64 * MiB)

    for path in (target, staging):
        stats = agent.stats(vid, path)
        assert (stats.block, stats.total_bytes, stats.used_bytes, stats.available_bytes) == (True, 64 * MiB, 0, 0)
        assert not stats.abnormal


def test_stats_after_the_image_is_removed_are_abnormal_not_an_error(agent: Agent) -> None:
    vid, _, target = staged_and_published(agent, "ext4", 64 * MiB)
    agent.images[vid].unlink()

    stats = agent.stats(vid, target)

    assert stats.abnormal and "gone" in stats.condition
    assert stats.total_bytes > 0, "the filesystem is still mounted and measured"


def test_stats_after_a_lazy_unmount_are_abnormal_and_unpublish_still_cleans_up(agent: Agent) -> None:
    vid, _, target = staged_and_published(agent, "ext4", 64 * MiB)
    subprocess.run(["umount", "-l", str(target)], check=True)

    stats = agent.stats(vid, target)

    assert stats.abnormal and "not mounted" in stats.condition
    agent.unpublish(vid, target)
    assert not target.exists()


def test_block_stats_after_the_bind_is_gone_are_abnormal(agent: Agent) -> None:
    vid, _, target = staged_and_published(agent, "block", 64 * MiB)
    subprocess.run(["umount", "-l", str(target)], check=True)

    stats = agent.stats(vid, target)

    assert stats.abnormal and "not bound" in stats.condition


def test_block_stats_after_the_loop_device_is_detached_are_abnormal(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)
    subprocess.run(["losetup", "-d", agent.loops()[0].split(":", 1)[0]], check=True)

    stats = agent.stats(vid, staging)

    assert stats.abnormal and "no longer backs" in stats.condition


def test_stats_where_the_volume_is_not_are_not_found(agent: Agent) -> None:
    vid, _, _ = staged_and_published(agent, "block", 64 * MiB)

    for volume, path in [(vid, agent.tmp / "elsewhere"), (vid, "some/path"), (agent.image(), agent.tmp), ("0" * 32, "some/path")]:
        with pytest.raises(NotFound):
            agent.stats(volume, path)
