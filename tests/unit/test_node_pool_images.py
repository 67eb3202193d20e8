"""A node's image operations, asked again and again, give the same result (services/nodeagent/csi/pool.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.nodeagent.adapters.pool import ImagePool
from services.nodeagent.csi.pool import NodePools
from volplane.commands import GrowImage, ImageSource, MakeImage, RemoveImage, SnapshotImage, StatImage
from volplane.errors import FailedPrecondition, NotFound, Unavailable
from volplane.ids import volume_id_for

MiB = 2**20
VID, CLONE, SID = volume_id_for("a"), volume_id_for("b"), volume_id_for("snapshot:s")


@pytest.fixture
def pools(tmp_path: Path) -> NodePools:
    local = ImagePool(tmp_path / "node-1", "node-1", "local", 2**30, "node-1", tag="node-1")
    shared = ImagePool(tmp_path / "shared", "shared", "shared", 2**30, tag="node-1")
    return NodePools("node-1", [local, shared])


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]  # each test's one coroutine


def image(tmp_path: Path, pool: str, vid: str) -> Path:
    return tmp_path / pool / f"{vid}.img"


def test_make_twice_is_one_image_of_its_size(pools: NodePools, tmp_path: Path) -> None:
    for _ in range(2):
        run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    assert sorted(p.name for p in (tmp_path / "node-1").iterdir()) == [f"{VID}.img"]
    assert image(tmp_path, "node-1", VID).stat().st_size == 4 * MiB


def test_a_late_make_or_grow_never_shrinks_a_grown_image(pools: NodePools, tmp_path: Path) -> None:
    run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    run(pools.grow(GrowImage(pool="node-1", volume_id=VID, size=8 * MiB)))
    run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    run(pools.grow(GrowImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    assert image(tmp_path, "node-1", VID).stat().st_size == 8 * MiB


def test_a_copy_that_exists_is_not_made_again(pools: NodePools, tmp_path: Path) -> None:
    run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    image(tmp_path, "node-1", VID).write_bytes(b"first")
    source = ImageSource(kind="volume", id=VID, pool="node-1", node="node-1")
    run(pools.make(MakeImage(pool="shared", volume_id=CLONE, size=4 * MiB, source=source)))
    image(tmp_path, "node-1", VID).write_bytes(b"later")  # the clone is in use by now
    run(pools.make(MakeImage(pool="shared", volume_id=CLONE, size=4 * MiB, source=source)))
    clone = image(tmp_path, "shared", CLONE)
    assert clone.read_bytes()[:5] == b"first" and clone.stat().st_size == 4 * MiB
    assert not list((tmp_path / "shared").glob("*.tmp"))


def test_a_snapshot_is_taken_once_and_restores_in_the_same_node(pools: NodePools, tmp_path: Path) -> None:
    run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    image(tmp_path, "node-1", VID).write_bytes(b"snap me")
    for _ in range(2):
        run(pools.snapshot(SnapshotImage(pool="node-1", volume_id=VID, snapshot_id=SID)))
    source = ImageSource(kind="snapshot", id=SID, pool="node-1", node="node-1")
    run(pools.make(MakeImage(pool="node-1", volume_id=CLONE, size=8 * MiB, source=source)))
    assert image(tmp_path, "node-1", CLONE).read_bytes()[:7] == b"snap me"
    run(pools.remove(RemoveImage(pool="node-1", kind="snapshot", id=SID)))
    run(pools.remove(RemoveImage(pool="node-1", kind="snapshot", id=SID)))
    assert not (tmp_path / "node-1" / "snapshots" / f"{SID}.img").exists()


def test_concurrent_requests_for_one_copy_share_it(pools: NodePools, tmp_path: Path) -> None:
    run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=64 * MiB)))
    image(tmp_path, "node-1", VID).write_bytes(b"x" * MiB)
    source = ImageSource(kind="volume", id=VID, pool="node-1", node="node-1")

    async def both() -> list[object]:
        cmd = MakeImage(pool="node-1", volume_id=CLONE, size=64 * MiB, source=source)
        return list(await asyncio.gather(pools.make(cmd), pools.make(cmd)))

    first, second = run(both())  # type: ignore[misc]  # a list of two
    assert first == second
    assert sorted(p.name for p in (tmp_path / "node-1").iterdir() if p.is_file()) == sorted([f"{VID}.img", f"{CLONE}.img"])


def test_a_request_that_arrives_after_its_sender_gave_up_does_nothing(pools: NodePools, tmp_path: Path) -> None:
    run(pools.make(MakeImage(pool="node-1", volume_id=VID, size=4 * MiB)))
    with pytest.raises(Unavailable, match="after its sender stopped waiting"):
        run(pools.remove(RemoveImage(pool="node-1", kind="volume", id=VID, expires_at=time.time() - 1)))
    assert image(tmp_path, "node-1", VID).exists()
    run(pools.remove(RemoveImage(pool="node-1", kind="volume", id=VID, expires_at=time.time() + 10)))
    assert not image(tmp_path, "node-1", VID).exists()
    assert run(pools.stat(StatImage(pool="node-1", volume_id=VID))).exists is False  # type: ignore[attr-defined]  # an ImageInfo


def test_a_source_in_another_nodes_pool_needs_the_bus_copy(pools: NodePools, tmp_path: Path) -> None:
    source = ImageSource(kind="snapshot", id=SID, pool="node-2", node="node-2")
    with pytest.raises(FailedPrecondition, match=r"node node-2's pool node-2.*cross-host copy"):
        run(pools.make(MakeImage(pool="node-1", volume_id=CLONE, size=4 * MiB, source=source)))
    assert list((tmp_path / "node-1").iterdir()) == []


def test_a_missing_source_or_foreign_pool_is_an_error_and_leaves_nothing(pools: NodePools, tmp_path: Path) -> None:
    source = ImageSource(kind="volume", id=VID, pool="node-1", node="node-1")
    with pytest.raises(NotFound):
        run(pools.make(MakeImage(pool="node-1", volume_id=CLONE, size=4 * MiB, source=source)))
    with pytest.raises(FailedPrecondition, match="has no pool"):
        run(pools.make(MakeImage(pool="node-9", volume_id=CLONE, size=4 * MiB)))
    assert list((tmp_path / "node-1").iterdir()) == []


def test_sweep_removes_only_this_nodes_leftovers(pools: NodePools, tmp_path: Path) -> None:
    mine, theirs = tmp_path / "shared" / f"{VID}.img.node-1.0a0b0c0d.tmp", tmp_path / "shared" / f"{VID}.img.node-2.0a0b0c0d.tmp"
    mine.write_bytes(b"half")
    theirs.write_bytes(b"being written")
    assert pools.sweep() == 1
    assert not mine.exists() and theirs.exists()
