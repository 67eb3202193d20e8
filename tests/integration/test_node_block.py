"""Raw block volumes, pools and registration on a real nodeagent: real images, loop devices and binds.

The commands go over NATS straight to the nodeagent, on a stack of nats-server,
redis-server and the nodeagent alone, so that these tests see the nodeagent and nothing
else: images are written into the pool directories by hand, as the provisioner would, and
the nodeagent stages without asking the attacher (``test_csi_node.py`` covers the whole
path, ControllerPublishVolume included).

The ``agent`` fixture records what a test staged, published and created, and undoes it
through the nodeagent when the test ends; then, as a backstop that does not trust the
driver, it unmounts and detaches whatever is left by hand and fails the test if it had to.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from pydantic import BaseModel

from devstack.launcher import Stack
from tests.conftest import loops_backing, mount_options_at, mount_points, mounts_at, mounts_under, needs_root
from volplane import codec, subjects
from volplane.bus import Bus
from volplane.commands import (
    Capability,
    GetVolumeStats,
    NodeExpand,
    NodeExpanded,
    PublishVolume,
    StageVolume,
    UnpublishVolume,
    UnstageVolume,
    VolumeStats,
)
from volplane.errors import AlreadyExists, FailedPrecondition, NotFound, VolplaneError
from volplane.eventstore import EventStore
from volplane.nodes import SHARED_POOL, TOPOLOGY_KEY, NodeRegistered

pytestmark = needs_root

MiB = 2**20
BLOCK = Capability(access_type="block", access_mode=1)
EXT4 = Capability(access_type="mount", fs_type="ext4", access_mode=1)








def is_block_device(path: Path) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)


def write_at(path: Path, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: Path, size: int, offset: int = 0) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def device_bytes(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class NodeStack:
    """nats-server, redis-server and one nodeagent, plus a NATS connection driven from the tests."""

    def __init__(self, run_dir: Path) -> None:
        # No attacher runs here to ask.
        self.stack = Stack(run_dir, env={"VOLPLANE_REQUIRE_ATTACHMENT": "0"})
        self.loop = asyncio.new_event_loop()
        self.nc: Any = None

    @property
    def node(self) -> str:
        return self.stack.node_id

    @property
    def local_pool(self) -> Path:
        return self.stack.pool_dir(self.node)

    @property
    def shared_pool(self) -> Path:
        return self.stack.pool_dir(SHARED_POOL)

    def start(self) -> None:
        self.stack.start_servers()
        self.shared_pool.mkdir(parents=True, exist_ok=True)
        self.stack.start_service("nodeagent")
        self.stack.wait_healthy(["nodeagent"])
        self.nc = self.run(nats.connect(self.stack.env["NATS_URL"], tls=self.stack.client_tls()))

    def stop(self) -> None:
        if self.nc is not None:
            self.run(self.nc.close())
        self.loop.close()
        self.stack.stop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def request(self, verb: str, cmd: BaseModel) -> Any:
        return self.run(Bus(self.nc).request(subjects.node_command(self.node, verb), cmd, timeout=120))

    def events(self, volume_id: str) -> list[str]:
        """The types of the events on the volume's node aggregate, oldest first."""
        records = self.run(EventStore(self.nc.jetstream()).read(subjects.node_volume(self.node, volume_id)))
        return [r.type for r in records]


@pytest.fixture(scope="module")
def node_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStack]:
    s = NodeStack(tmp_path_factory.mktemp("nodeagent"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


class Agent:
    """Node commands that remember what they did, so the fixture can undo it."""

    def __init__(self, ns: NodeStack, tmp_path: Path) -> None:
        self.ns = ns
        self.tmp = tmp_path
        self.images: dict[str, Path] = {}
        self.staged: list[tuple[str, Path]] = []
        self.published: list[tuple[str, Path]] = []

    def image(self, size: int = 64 * MiB, pool: Path | None = None, vid: str | None = None) -> str:
        """A sparse image in a pool (this node's by default), as the provisioner makes it."""
        vid = vid or uuid.uuid4().hex
        path = (pool or self.ns.local_pool) / f"{vid}.img"
        with open(path, "wb") as f:
            f.truncate(size)
        self.images.setdefault(vid, path)
        return vid

    def staging_dir(self, name: str = "staging") -> Path:
        path = self.tmp / name
        path.mkdir()
        return path

    def target(self, name: str) -> Path:
        """A target path whose parent exists, as the CO leaves it."""
        parent = self.tmp / name
        parent.mkdir()
        return parent / "dev"

    def stage(self, vid: str, staging: Path, cap: Capability = BLOCK) -> None:
        self.ns.request(subjects.NODE_STAGE, StageVolume(volume_id=vid, staging_path=str(staging), capability=cap))
        if (vid, staging) not in self.staged:
            self.staged.append((vid, staging))

    def publish(self, vid: str, staging: Path, target: Path, cap: Capability = BLOCK, readonly: bool = False) -> None:
        cmd = PublishVolume(volume_id=vid, staging_path=str(staging), target_path=str(target), capability=cap, readonly=readonly)
        self.ns.request(subjects.NODE_PUBLISH, cmd)
        if (vid, target) not in self.published:
            self.published.append((vid, target))

    def unpublish(self, vid: str, target: Path) -> None:
        self.ns.request(subjects.NODE_UNPUBLISH, UnpublishVolume(volume_id=vid, target_path=str(target)))

    def unstage(self, vid: str, staging: Path) -> None:
        self.ns.request(subjects.NODE_UNSTAGE, UnstageVolume(volume_id=vid, staging_path=str(staging)))

    def expand(self, vid: str, path: Path, required: int = 0, limit: int = 0) -> int:
        cmd = NodeExpand(volume_id=vid, volume_path=str(path), required_bytes=required, limit_bytes=limit)
        return NodeExpanded.model_validate(self.ns.request(subjects.NODE_EXPAND, cmd)).capacity_bytes

    def stats(self, vid: str, path: Path | str) -> VolumeStats:
        return VolumeStats.model_validate(self.ns.request(subjects.NODE_STATS, GetVolumeStats(volume_id=vid, volume_path=str(path))))

    def loops(self) -> list[str]:
        pools = self.ns.stack.run_dir / "pools"
        return [line for line in loops_backing(pools) if any(v in line for v in self.images)]

    def cleanup(self) -> list[str]:
        """Undo through the nodeagent, then by hand; returns what the driver left behind."""
        problems: list[str] = []
        for step, items in ((self.unpublish, self.published), (self.unstage, self.staged)):
            for vid, path in reversed(items):
                try:
                    step(vid, path)
                except VolplaneError as exc:
                    problems.append(f"{step.__name__}({path}): {type(exc).__name__} {exc.message}")
        for point in reversed([p for p in mount_points() if p == str(self.tmp) or p.startswith(f"{self.tmp}/")]):
            problems.append(f"left mounted: {point}")
            subprocess.run(["umount", "-l", point], check=False)
        for line in self.loops():
            problems.append(f"left attached: {line}")
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        for vid in self.images:
            for pool in (self.ns.local_pool, self.ns.shared_pool):
                (pool / f"{vid}.img").unlink(missing_ok=True)
        return problems


@pytest.fixture
def agent(node_stack: NodeStack, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(node_stack, tmp_path)
    try:
        yield a
    finally:
        problems = a.cleanup()
    assert problems == [], "cleanup through the nodeagent failed or left host state behind"


# -- block volumes: the whole life ---------------------------------------------


def test_block_volume_at_two_targets_is_one_device_written_through_one_and_read_through_the_other(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    first, second = agent.target("pod-a"), agent.target("pod-b")
    payload = os.urandom(4096)

    agent.stage(vid, staging)
    assert mounts_at(staging) == 0, "a block volume mounts nothing at the staging path"
    assert len(agent.loops()) == 1

    agent.publish(vid, staging, first)
    agent.publish(vid, staging, second)
    assert is_block_device(first) and is_block_device(second)
    assert os.stat(first).st_rdev == os.stat(second).st_rdev
    assert (mounts_at(first), mounts_at(second)) == (1, 1)

    write_at(first, payload, offset=MiB)
    assert read_at(second, len(payload), offset=MiB) == payload
    assert read_at(agent.images[vid], len(payload), offset=MiB) == payload, "the bytes land in the image"

    agent.unpublish(vid, first)
    agent.unpublish(vid, second)
    assert not first.exists() and not second.exists(), "the target files the driver created are removed"
    assert first.parent.is_dir(), "the CO's directory stays"
    agent.unstage(vid, staging)
    assert agent.loops() == []
    assert mounts_under(agent.tmp) == []


def test_readonly_block_publication_refuses_writes_and_reads_what_was_written(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    writer, reader = agent.target("writer"), agent.target("reader")
    payload = os.urandom(4096)
    agent.stage(vid, staging)
    agent.publish(vid, staging, writer)
    write_at(writer, payload)

    agent.publish(vid, staging, reader, readonly=True)

    assert "ro" in mount_options_at(reader)
    with pytest.raises(OSError):
        write_at(reader, b"x" * 4096)
    assert read_at(reader, len(payload)) == payload
    assert read_at(writer, len(payload)) == payload, "the refused write changed nothing"
    assert len(agent.loops()) == 2, "the read-only target is a read-only device of the same image"

    agent.unpublish(vid, reader)
    assert len(agent.loops()) == 1, "the read-only device goes with its last target"
    assert not reader.exists()


def test_block_stage_and_publish_repeated_attach_and_bind_once(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    target = agent.target("pod")

    for _ in range(3):
        agent.stage(vid, staging)
    for _ in range(3):
        agent.publish(vid, staging, target)

    assert len(agent.loops()) == 1
    assert mounts_at(target) == 1


def test_block_unpublish_and_unstage_repeated_are_ok(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    target = agent.target("pod")
    agent.stage(vid, staging)
    agent.publish(vid, staging, target)

    for _ in range(3):
        agent.unpublish(vid, target)
    for _ in range(3):
        agent.unstage(vid, staging)

    assert not target.exists() and mounts_at(target) == 0
    assert agent.loops() == []


def test_block_publish_again_after_the_bind_vanished_binds_it_again(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    target = agent.target("pod")
    agent.stage(vid, staging)
    agent.publish(vid, staging, target)
    write_at(target, b"k" * 512)
    subprocess.run(["umount", str(target)], check=True)

    agent.publish(vid, staging, target)

    assert mounts_at(target) == 1 and is_block_device(target)
    assert read_at(target, 512) == b"k" * 512


def test_block_stage_again_after_the_loop_device_vanished_attaches_it_again(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)
    device = agent.loops()[0].split(":", 1)[0]
    subprocess.run(["losetup", "-d", device], check=True)  # as after a node reboot

    agent.stage(vid, staging)

    assert len(agent.loops()) == 1


# -- block and filesystem do not mix -----------------------------------------------


def test_block_volume_published_as_a_filesystem_is_a_failed_precondition(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)
    target = agent.tmp / "fs-target"

    with pytest.raises(FailedPrecondition, match="block"):
        agent.publish(vid, staging, target, cap=EXT4)
    assert not target.exists()


def test_block_volume_staged_again_as_a_filesystem_already_exists(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)

    with pytest.raises(AlreadyExists):
        agent.stage(vid, staging, cap=EXT4)
    assert mounts_at(staging) == 0


def test_filesystem_volume_published_as_block_is_a_failed_precondition(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging, cap=EXT4)
    target = agent.target("pod")

    with pytest.raises(FailedPrecondition, match="mount"):
        agent.publish(vid, staging, target, cap=BLOCK)
    assert not target.exists()


def test_block_publish_at_a_directory_is_refused_and_mounts_nothing(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)
    target = agent.staging_dir("a-directory")

    with pytest.raises(FailedPrecondition, match="regular file"):
        agent.publish(vid, staging, target)
    assert mounts_at(target) == 0 and target.is_dir()


def test_block_publish_whose_parent_is_missing_is_not_found_and_creates_nothing(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)
    target = agent.tmp / "missing" / "dev"

    with pytest.raises(NotFound):
        agent.publish(vid, staging, target)
    assert not target.parent.exists()


def test_block_unpublish_leaves_a_file_it_did_not_bind_alone(agent: Agent) -> None:
    vid = agent.image()
    staging = agent.staging_dir()
    agent.stage(vid, staging)
    foreign = agent.tmp / "foreign"
    foreign.write_text("keep")

    agent.unpublish(vid, foreign)

    assert foreign.read_text() == "keep"


# -- pools ------------------------------------------------------------------------


def test_image_in_the_shared_pool_is_staged_from_there(agent: Agent) -> None:
    vid = agent.image(pool=agent.ns.shared_pool)
    staging = agent.staging_dir()

    agent.stage(vid, staging, cap=EXT4)

    assert mounts_at(staging) == 1
    assert [line for line in loops_backing(agent.ns.shared_pool) if vid in line] != []


def test_image_in_this_nodes_pool_is_preferred_to_one_in_the_shared_pool(agent: Agent) -> None:
    vid = agent.image()
    agent.image(pool=agent.ns.shared_pool, vid=vid)

    agent.stage(vid, agent.staging_dir())

    assert [line for line in loops_backing(agent.ns.local_pool) if vid in line] != []
    assert [line for line in loops_backing(agent.ns.shared_pool) if vid in line] == []


def test_volume_with_an_image_in_neither_pool_is_not_found(agent: Agent, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        agent.stage(uuid.uuid4().hex, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_a_staged_volume_keeps_the_image_it_was_staged_from(agent: Agent) -> None:
    vid = agent.image(pool=agent.ns.shared_pool)
    staging = agent.staging_dir()
    agent.stage(vid, staging, cap=EXT4)
    agent.image(vid=vid)  # a same-named image appears in the local pool

    agent.stage(vid, staging, cap=EXT4)
    agent.unstage(vid, staging)

    assert agent.loops() == [], "the shared image's device was found and detached"
    assert mounts_at(staging) == 0


def test_node_is_registered_with_its_topology_and_both_pools(node_stack: NodeStack) -> None:
    records = node_stack.run(EventStore(node_stack.nc.jetstream()).read(subjects.node_info(node_stack.node)))
    event = NodeRegistered.model_validate(codec.unpack(records[-1].data))

    assert event.topology == {TOPOLOGY_KEY: node_stack.node}
    assert {(p.name, p.kind, p.directory) for p in event.pools} == {
        (node_stack.node, "local", str(node_stack.local_pool)),
        (SHARED_POOL, "shared", str(node_stack.shared_pool)),
    }
    assert node_stack.local_pool.is_dir()
