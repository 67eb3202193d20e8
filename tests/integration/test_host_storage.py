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


def test_failed_mount_raises_storage_error_with_the_errno(image: Path, tmp_path: Path) -> None:
    target = _mkdir(tmp_path / "target")
    with pytest.raises(StorageError) as caught:
        asyncio.run(HostStorage().mount(str(tmp_path / "no-such-device"), target, "ext4", []))
    assert caught.value.errno == errno.ENOENT and caught.value.exit_code is None
    assert caught.value.command[0] == "mount" and caught.value.stderr == "No such file or directory (ENOENT)"
    assert str(caught.value).startswith(f"mount({tmp_path / 'no-such-device'}, {target}, ext4) failed")


def test_failed_command_raises_storage_error_with_details() -> None:
    with pytest.raises(StorageError) as caught:
        asyncio.run(HostStorage()._run("losetup", "--detach", "/dev/no-such-loop"))
    assert caught.value.exit_code not in (0, None) and caught.value.errno is None
    assert caught.value.command[0] == "losetup" and caught.value.stderr
    assert "`losetup --detach /dev/no-such-loop` failed (exit code" in str(caught.value)


def test_slow_command_is_killed_after_the_timeout() -> None:
    # No public operation can be made slow on purpose, so the private runner is driven with sleep.
    with pytest.raises(StorageError, match=r"killed after 0\.2 s") as caught:
        asyncio.run(HostStorage(timeout=0.2)._run("sleep", "30"))
    assert caught.value.exit_code is None


def test_attaches_racing_from_two_processes_share_one_device(image: Path) -> None:
    # Two HostStorage objects share no lock in memory, as two nodeagents on one kernel do not:
    # the image's own lock is what keeps them to one device (losetup --nooverlap's job).
    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(HostStorage().attach(image) for _ in range(4))))

    devices = asyncio.run(scenario())
    assert len(set(devices)) == 1
    assert _loop_devices_for(image) == devices[:1]
    asyncio.run(HostStorage().detach(image))


def test_a_device_mapping_part_of_the_image_is_not_reused(image: Path) -> None:
    partial = subprocess.run(["losetup", "--find", "--show", "--offset", "1048576", str(image)], capture_output=True, text=True, check=True).stdout.strip()
    with pytest.raises(StorageError, match="overlapping") as caught:
        asyncio.run(HostStorage().attach(image))
    assert caught.value.errno == errno.EBUSY
    assert _loop_devices_for(image) == [partial]


def test_read_only_attach_is_a_second_device_the_kernel_refuses_to_write(image: Path) -> None:
    async def scenario() -> None:
        storage = HostStorage()
        writable = await storage.attach(image)
        readonly = await storage.attach(image, readonly=True)
        assert readonly != writable and await storage.attach(image, readonly=True) == readonly
        assert (storage.is_readonly(writable), storage.is_readonly(readonly)) == (False, True)
        fd = os.open(readonly, os.O_WRONLY)
        try:
            with pytest.raises(OSError) as caught:
                os.write(fd, b"x" * 4096)
            assert caught.value.errno == errno.EPERM
        finally:
            os.close(fd)
        await storage.detach(image, readonly_only=True)
        assert await storage.loop_devices_for(image) == [writable]
        await storage.detach(image)

    asyncio.run(scenario())


def test_detach_leaves_a_device_rebound_to_another_file_alone(image: Path, tmp_path: Path) -> None:
    from services.nodeagent.adapters import syscalls

    other = tmp_path / "other.img"
    other.touch()
    os.truncate(other, IMAGE_SIZE)
    device = asyncio.run(HostStorage().attach(other))
    try:
        assert syscalls.detach_loop(device, {str(image)}) is False
        assert _loop_devices_for(other) == [device]
        assert Path(device).name in syscalls.bound_loops()
    finally:
        asyncio.run(HostStorage().detach(other))
    assert Path(device).name not in syscalls.bound_loops()


def test_a_device_rebound_to_another_file_names_the_new_file(image: Path, tmp_path: Path) -> None:
    """The backing file is read through a kept descriptor: once the device is detached and
    bound again (here by losetup, to another image), it names the new image, never the old."""
    from services.nodeagent.adapters import syscalls

    other = tmp_path / "other.img"
    other.touch()
    os.truncate(other, IMAGE_SIZE)
    device = asyncio.run(HostStorage().attach(image))
    name = Path(device).name
    assert syscalls.loop_backing(name) == str(image)  # read once: its descriptor is kept
    subprocess.run(["losetup", "-d", device], check=True)
    subprocess.run(["losetup", device, str(other)], check=True)
    try:
        assert syscalls.loop_backing(name) == str(other)
        assert asyncio.run(HostStorage().attach(image)) != device  # not taken for the old image's
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
    assert syscalls.loop_backing(name) is None


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_the_superblock_names_the_filesystem_and_its_size_without_blkid(image: Path, fs_type: str) -> None:
    if fs_type == "xfs":
        os.truncate(image, 320 << 20)  # mkfs.xfs's smallest filesystem is 300 MiB.

    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        await storage.format(device, fs_type)
        runs: list[tuple[str, ...]] = []
        real_run = storage._run

        async def counted(*command: str) -> str:
            runs.append(command)
            return await real_run(*command)

        storage._run = counted  # type: ignore[method-assign]  # counts the commands the probe starts
        assert await storage.filesystem_of(device) == fs_type
        assert runs == []
        assert storage.filesystem_bytes(device, fs_type) == image.stat().st_size
        assert storage.filesystem_bytes(device, "xfs" if fs_type == "ext4" else "ext4") == 0
        await storage.detach(image)

    asyncio.run(scenario())


def test_an_ext2_filesystem_is_named_ext2_not_ext4(image: Path) -> None:
    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        await real_command("mkfs.ext2", "-q", "-F", device)
        assert await storage.filesystem_of(device) == "ext2"
        await storage.detach(image)

    asyncio.run(scenario())


def test_a_device_neither_ext_nor_xfs_is_left_to_blkid(image: Path) -> None:
    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        assert await storage.filesystem_of(device) is None  # blank: blkid finds no signature
        await real_command("mkswap", device)
        assert await storage.filesystem_of(device) == "swap"
        await storage.detach(image)

    asyncio.run(scenario())


def test_read_only_bind_keeps_the_source_mounts_flags(image: Path, tmp_path: Path) -> None:
    staging, publish = _mkdir(tmp_path / "staging"), _mkdir(tmp_path / "publish")

    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        await storage.format(device, "ext4")
        await storage.mount(device, staging, "ext4", ["nosuid", "nodev", "noexec", "noatime", "discard"])
        entry = storage.mount_point(staging)
        assert entry is not None and "discard" in entry.super_options
        await storage.bind(staging, publish, readonly=True)
        bound = storage.mount_point(publish)
        assert bound is not None and {"ro", "nosuid", "nodev", "noexec", "noatime"} <= set(bound.options)
        await storage.unmount(publish)
        await storage.unmount(staging)
        await storage.detach(image)

    asyncio.run(scenario())


def test_mount_options_are_read_as_mount_does_and_later_ones_win(image: Path, tmp_path: Path) -> None:
    staging = _mkdir(tmp_path / "staging")

    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        await storage.format(device, "ext4")
        await storage.mount(device, staging, "ext4", ["ro", "sync", "rw", "lazytime", "nolazytime"])
        entry = storage.mount_point(staging)
        assert entry is not None and "rw" in entry.options
        assert "sync" in entry.super_options and "lazytime" not in entry.super_options
        await storage.unmount(staging)
        await storage.detach(image)

    asyncio.run(scenario())


def test_thaw_of_a_filesystem_not_frozen_is_a_no_op_and_freeze_holds_writes_until_thawed(image: Path, tmp_path: Path) -> None:
    staging = _mkdir(tmp_path / "staging")

    async def scenario() -> None:
        storage = HostStorage()
        device = await storage.attach(image)
        await storage.format(device, "ext4")
        await storage.mount(device, staging, "ext4", [])
        await storage.thaw(staging)
        await storage.freeze(staging)
        with pytest.raises(StorageError) as twice:
            await storage.freeze(staging)
        assert twice.value.errno == errno.EBUSY  # frozen already
        await storage.thaw(staging)
        (staging / "after.txt").write_text("x")
        await storage.unmount(staging)
        await storage.detach(image)

    asyncio.run(scenario())


async def real_command(*command: str) -> None:
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)


def test_mount_point_sees_binds_on_the_same_filesystem_and_nothing_elsewhere(tmp_path: Path) -> None:
    # statx's mount-root bit answers the common "nothing mounted here" without mountinfo;
    # a bind of a directory or a file of the same filesystem is a mount all the same.
    host = HostStorage()
    (tmp_path / "src").mkdir()
    (tmp_path / "dir").mkdir()
    (tmp_path / "file-src").touch()
    (tmp_path / "file").touch()
    assert host.mount_point(tmp_path / "dir") is None
    assert host.mount_point(tmp_path / "missing") is None
    subprocess.run(["mount", "--bind", str(tmp_path / "src"), str(tmp_path / "dir")], check=True)
    subprocess.run(["mount", "--bind", str(tmp_path / "file-src"), str(tmp_path / "file")], check=True)
    try:
        for path in (tmp_path / "dir", tmp_path / "file"):
            top = host.mount_point(path)
            assert top is not None and top.mount_point == path
        assert host.mount_point(tmp_path / "src") is None
    finally:
        subprocess.run(["umount", str(tmp_path / "dir")], check=True)
        subprocess.run(["umount", str(tmp_path / "file")], check=True)
    assert host.mount_point(tmp_path / "dir") is None
