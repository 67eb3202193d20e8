"""The parts of the node's system-call layer that need no root: mount(8)'s option reading and
the superblock recognition (``services/nodeagent/adapters/syscalls.py``); the calls themselves
run against real loop devices and mounts in tests/integration/test_host_storage.py."""

from __future__ import annotations

import pytest

from services.nodeagent.adapters import syscalls
from services.nodeagent.adapters.syscalls import MS_NOATIME, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_RELATIME, MS_STRICTATIME, MS_SYNCHRONOUS, Superblock
from services.nodeagent.domain.volume import MOUNT_FLAGS


def test_every_mount_flag_a_capability_may_carry_is_translated() -> None:
    for flag in MOUNT_FLAGS:
        syscalls.mount_options([flag])


def test_flags_combine_and_a_later_option_undoes_an_earlier_one() -> None:
    assert syscalls.mount_options(["ro", "nosuid", "nodev", "noatime"]) == (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOATIME, "")
    assert syscalls.mount_options(["ro", "rw"]) == (0, "")
    assert syscalls.mount_options(["sync", "async"]) == (0, "")
    assert syscalls.mount_options(["strictatime", "relatime"]) == (MS_STRICTATIME | MS_RELATIME, "")
    assert syscalls.mount_options(["sync"]) == (MS_SYNCHRONOUS, "")


def test_filesystem_options_go_to_the_filesystem_in_order() -> None:
    assert syscalls.mount_options(["discard", "noatime", "nobarrier"]) == (MS_NOATIME, "discard,nobarrier")


@pytest.mark.parametrize("option", ["vers=4.1", "nfsvers=3", "x-systemd.automount", "bind", "remount", "loop"])
def test_an_option_not_translated_is_refused_so_that_mount8_reads_it(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        syscalls.mount_options(["noatime", option])


def _ext(compat: int = 0, incompat: int = 0, ro_compat: int = 0, blocks: int = 16384, log_block: int = 2) -> bytes:
    sb = bytearray(1024)
    sb[0x04:0x08] = blocks.to_bytes(4, "little")
    sb[0x18:0x1C] = log_block.to_bytes(4, "little")
    sb[0x38:0x3A] = (0xEF53).to_bytes(2, "little")
    sb[0x5C:0x60] = compat.to_bytes(4, "little")
    sb[0x60:0x64] = incompat.to_bytes(4, "little")
    sb[0x64:0x68] = ro_compat.to_bytes(4, "little")
    return bytes(1024) + bytes(sb) + bytes(2048)


def _xfs(block_size: int = 4096, blocks: int = 81920) -> bytes:
    return b"XFSB" + block_size.to_bytes(4, "big") + blocks.to_bytes(8, "big") + bytes(4096 - 16)


@pytest.mark.parametrize(
    ("head", "fs_type"),
    [
        (_ext(compat=0x4, incompat=0x2 | 0x40 | 0x80 | 0x200, ro_compat=0x1 | 0x2 | 0x8 | 0x400), "ext4"),  # mkfs.ext4's defaults
        (_ext(compat=0x4, incompat=0x2, ro_compat=0x1 | 0x2), "ext3"),
        (_ext(incompat=0x2, ro_compat=0x1), "ext2"),
        (_ext(incompat=0x8), "jbd"),
        (_xfs(), "xfs"),
    ],
)
def test_the_superblock_names_ext_and_xfs_as_blkid_does(head: bytes, fs_type: str) -> None:
    assert Superblock(head).fs_type == fs_type


def test_the_superblock_gives_the_filesystems_size() -> None:
    assert Superblock(_ext(blocks=16384, log_block=2)).fs_bytes == 16384 * 4096
    assert Superblock(_xfs(4096, 81920)).fs_bytes == 81920 * 4096


def test_a_64bit_ext4_counts_the_high_half_of_its_blocks() -> None:
    head = bytearray(_ext(incompat=0x80, blocks=1, log_block=2))
    head[1024 + 0x150 : 1024 + 0x154] = (1).to_bytes(4, "little")
    assert Superblock(bytes(head)).fs_bytes == ((1 << 32) + 1) * 4096


@pytest.mark.parametrize("head", [bytes(4096), b"", b"\x00" * 100, b"LUKS\xba\xbe" + bytes(4090)], ids=["zeros", "empty", "short", "luks"])
def test_a_device_with_neither_signature_is_left_unnamed(head: bytes) -> None:
    sb = Superblock(head)
    assert (sb.fs_type, sb.fs_bytes) == (None, 0)


def test_a_device_with_both_signatures_is_left_for_blkid_to_judge() -> None:
    both = bytearray(_ext(incompat=0x40))
    both[:16] = _xfs()[:16]
    sb = Superblock(bytes(both))
    assert (sb.fs_type, sb.signatures) == (None, 2)
