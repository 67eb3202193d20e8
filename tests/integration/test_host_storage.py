"""HostStorage against real loop devices and mounts under pytest's tmp_path.

Run as root:

    PYTHONPATH=/work/main python -m pytest tests/integration/test_host_storage.py -q
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.nodeagent.adapters.storage import HostStorage, StorageError

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
    reason="needs root and /dev/loop-control to create real loop devices and mounts",
)

IMAGE_SIZE = 64 << 20


def _mount_points_under(root: Path) -> list[str]:
    """Mount points below ``root``, newest first: ``_mount_points_under(tmp_path) == ["/tmp/.../mnt"]``."""
    # The cleanup parses mountinfo on its own so that a bug in the adapter cannot hide a leftover mount.
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
        if point == str(root) or point.startswith(f"{root}/"):
            found.append(point)
    return found[::-1]


def _loop_devices_for(image: Path) -> list[str]:
    """Loop devices that losetup reports for ``image``: ``_loop_devices_for(img) == ["/dev/loop0"]``."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout
    return [line.split(":", 1)[0] for line in out.splitlines()]


@pytest.fixture
def image(tmp_path: Path) -> Iterator[Path]:
    """A sparse 64 MiB image; whatever the test leaves mounted or attached is removed, then asserted gone."""
    path = tmp_path / "volume.img"
    path.touch()
    os.truncate(path, IMAGE_SIZE)
    try:
        yield path
    finally:
        # Unmounting newest first peels stacked mounts, and devices are detached only after their mounts are gone.
        for point in _mount_points_under(tmp_path):
            subprocess.run(["umount", point], check=False)
        for device in _loop_devices_for(path):
            subprocess.run(["losetup", "-d", device], check=False)
        assert _mount_points_under(tmp_path) == []
        assert _loop_devices_for(path) == []


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


async def _attach_and_mount(storage: HostStorage, image: Path, target: Path, *, fresh: bool) -> str:
    device = await storage.attach(image)
    if fresh:
        await storage.format(device, "ext4")
    await storage.mount(device, target, "ext4", ["noatime"])
    return device


def test_attach_is_idempotent_and_detach_releases_the_device(image: Path) -> None:
    async def scenario() -> None:
        storage = HostStorage()
        first = await storage.attach(image)
        second = await storage.attach(image)
        assert first == second
        assert first.startswith("/dev/loop")
        assert await storage.loop_devices_for(image) == [first]
        assert _loop_devices_for(image) == [first]
        await storage.detach(image)
        assert await storage.loop_devices_for(image) == []
        assert _loop_devices_for(image) == []
        # A second detach finds nothing and must not fail.
        await storage.detach(image)

    asyncio.run(scenario())


def test_new_image_is_blank_until_formatted(image: Path) -> None:
    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        assert await storage.filesystem_of(device) is None
        await storage.format(device, "ext4")
        assert await storage.filesystem_of(device) == "ext4"
        await storage.detach(image)

    asyncio.run(scenario())


def test_format_rejects_unsupported_filesystems() -> None:
    with pytest.raises(ValueError, match="btrfs"):
        asyncio.run(HostStorage().format("/dev/null", "btrfs"))


def test_data_written_through_a_bind_survives_reattach(image: Path, tmp_path: Path) -> None:
    staging, publish = _mkdir(tmp_path / "staging"), _mkdir(tmp_path / "publish")

    async def scenario() -> None:
        storage = HostStorage()
        device = await _attach_and_mount(storage, image, staging, fresh=True)
        await storage.bind(staging, publish, readonly=False)
        entry = storage.mount_point(publish)
        assert entry is not None and entry.source == device and "rw" in entry.options
        (publish / "hello.txt").write_text("persisted")
        await storage.unmount(publish)
        await storage.unmount(staging)
        assert storage.mount_point(publish) is None and storage.mount_point(staging) is None
        await storage.detach(image)
        assert await storage.loop_devices_for(image) == []

        await _attach_and_mount(storage, image, staging, fresh=False)
        assert (staging / "hello.txt").read_text() == "persisted"
        await storage.unmount(staging)
        await storage.detach(image)

    asyncio.run(scenario())


def test_readonly_bind_refuses_writes(image: Path, tmp_path: Path) -> None:
    staging, publish = _mkdir(tmp_path / "staging"), _mkdir(tmp_path / "publish")

    async def scenario() -> None:
        storage = HostStorage()
        await _attach_and_mount(storage, image, staging, fresh=True)
        await storage.bind(staging, publish, readonly=True)
        entry = storage.mount_point(publish)
        assert entry is not None and "ro" in entry.options
        with pytest.raises(OSError) as caught:
            (publish / "nope.txt").write_text("x")
        assert caught.value.errno == errno.EROFS
        # The read-only flag is per mount, so the staging mount underneath stays writable.
        (staging / "ok.txt").write_text("x")

    asyncio.run(scenario())


def test_unmount_of_an_unmounted_path_is_a_no_op(image: Path, tmp_path: Path) -> None:
    plain = _mkdir(tmp_path / "plain")
    storage = HostStorage()
    assert storage.mount_point(plain) is None
    asyncio.run(storage.unmount(plain))
    asyncio.run(storage.unmount(tmp_path / "missing"))


def test_mountinfo_decodes_a_mount_point_with_a_space(image: Path, tmp_path: Path) -> None:
    target = _mkdir(tmp_path / "with space\tand tab")

    async def scenario() -> None:
        storage = HostStorage()
        device = await _attach_and_mount(storage, image, target, fresh=True)
        entry = storage.mount_point(target)
        assert entry is not None
        assert entry.mount_point == target
        assert (entry.fs_type, entry.source, entry.root) == ("ext4", device, "/")
        assert "noatime" in entry.options and entry.mount_id > 0 and ":" in entry.major_minor
        await storage.unmount(target)
        assert storage.mount_point(target) is None

    asyncio.run(scenario())


def test_unmount_removes_stacked_mounts(image: Path, tmp_path: Path) -> None:
    target, other = _mkdir(tmp_path / "target"), _mkdir(tmp_path / "other")

    async def scenario() -> None:
        storage = HostStorage()
        await _attach_and_mount(storage, image, target, fresh=True)
        bottom = storage.mount_point(target)
        await storage.bind(other, target, readonly=False)
        top = storage.mount_point(target)
        assert bottom is not None and top is not None
        assert top.mount_id != bottom.mount_id and top.parent_id == bottom.mount_id
        await storage.unmount(target)
        assert storage.mount_point(target) is None

    asyncio.run(scenario())


def test_refresh_shows_a_grown_image(image: Path) -> None:
    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        sectors = Path(f"/sys/block/{Path(device).name}/size")
        assert int(sectors.read_text()) * 512 == IMAGE_SIZE
        os.truncate(image, 2 * IMAGE_SIZE)
        await storage.refresh(device)
        assert int(sectors.read_text()) * 512 == 2 * IMAGE_SIZE
        await storage.detach(image)

    asyncio.run(scenario())


def test_failed_command_raises_storage_error_with_details(image: Path, tmp_path: Path) -> None:
    target = _mkdir(tmp_path / "target")
    with pytest.raises(StorageError) as caught:
        asyncio.run(HostStorage().mount(str(tmp_path / "no-such-device"), target, "ext4", []))
    assert caught.value.exit_code not in (0, None)
    assert caught.value.command[0] == "mount" and caught.value.stderr
    assert "mount -t ext4" in str(caught.value)


def test_slow_command_is_killed_after_the_timeout() -> None:
    # No public operation can be made slow on purpose, so the private runner is driven with sleep.
    with pytest.raises(StorageError, match=r"killed after 0\.2 s") as caught:
        asyncio.run(HostStorage(timeout=0.2)._run("sleep", "30"))
    assert caught.value.exit_code is None
