"""Images between hosts over the bus (services/nodeagent/adapters/transfer.py), against a
real nats-server of this module's own: sparse round trips, a send killed midway and
resumed, a corrupted chunk, an unfinished transfer, discard, and the NATS rights a node
needs (docs/decisions.md, "Images across hosts").
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from devstack.embedded import EmbeddedServer, free_port
from services.nodeagent.adapters import transfer
from services.nodeagent.adapters.transfer import Transfer, discard, ensure_transfer_store, image_digest, receive, send
from volplane import subjects
from volplane.clients import connect_once
from volplane.errors import Internal, InvalidArgument, NotFound, Unavailable
from volplane.eventstore import EventStore

T = TypeVar("T")
KiB, MiB = 1024, 2**20
GRID = 64 * KiB  # small cells: many chunks from a small image


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedServer.nats(tmp_path_factory.mktemp("transfer") / "nats")
    server.start()
    try:
        asyncio.run(_with(server.url, lambda nc: ensure_transfer_store(nc.jetstream())))
        yield server.url
    finally:
        server.stop()


async def _with(url: str, scenario: Callable[[NATS], Awaitable[T]]) -> T:
    nc = await connect_once(url)
    try:
        return await scenario(nc)
    finally:
        await nc.close()


def run(url: str, scenario: Callable[[NATS], Awaitable[T]]) -> T:
    return asyncio.run(_with(url, scenario))


def make_image(path: Path, size: int, runs: list[tuple[int, bytes]], zeros: tuple[int, int] | None = None) -> None:
    """A sparse image of ``size`` bytes with ``runs`` written at their offsets, and
    ``zeros`` (offset, length) allocated but zero."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for offset, data in runs:
            os.pwrite(fd, data, offset)
        if zeros is not None:
            os.posix_fallocate(fd, *zeros)
            os.pwrite(fd, bytes(zeros[1]), zeros[0])
        os.fsync(fd)
    finally:
        os.close(fd)


def extents(path: Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size, out, pos = os.fstat(fd).st_size, [], 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, pos))
        return out
    finally:
        os.close(fd)


def sample(tmp_path: Path, name: str = "src.img") -> Path:
    """16 MiB with data at the start, a run across a grid line, a 4 KiB block alone, zeros
    that are allocated, and a hole to the end."""
    src = tmp_path / name
    make_image(
        src,
        16 * MiB,
        [(0, os.urandom(200 * KiB)), (GRID * 10 - 8 * KiB, os.urandom(24 * KiB)), (5 * MiB, os.urandom(4 * KiB)), (9 * MiB, os.urandom(3 * MiB))],
        zeros=(7 * MiB, MiB),
    )
    return src


async def stored(nc: NATS, subject_filter: str) -> set[str]:
    return await transfer._stored_subjects(nc, subject_filter)


def test_round_trip_keeps_the_data_and_the_holes(nats_url: str, tmp_path: Path) -> None:
    src = sample(tmp_path)
    target = tmp_path / "out" / "restored.img"
    target.parent.mkdir()

    async def scenario(nc: NATS) -> tuple[Transfer, Transfer]:
        sent = await send(nc, src, "host-2.snapshot.roundtrip", chunk_size=GRID)
        return sent, await receive(nc, "host-2.snapshot.roundtrip", target)

    sent, got = run(nats_url, scenario)
    assert target.read_bytes() == src.read_bytes()
    assert got.digest == sent.digest == image_digest(src, GRID)
    assert got.size == 16 * MiB and got.data_bytes == sent.data_bytes == (200 + 24 + 4 + 3 * 1024) * KiB
    # Holes stay holes, and the allocated zeros became one: only the data runs hold blocks.
    source_extents = [e for e in extents(src) if e != (7 * MiB, 8 * MiB)]
    assert extents(target) == source_extents
    assert target.stat().st_blocks * 512 <= sum(end - start for start, end in source_extents) + 64 * KiB
    assert [p.name for p in target.parent.iterdir()] == ["restored.img"]  # no temporary file left


def test_an_image_without_data_arrives_as_one_hole(nats_url: str, tmp_path: Path) -> None:
    src, target = tmp_path / "empty.img", tmp_path / "empty-out.img"
    make_image(src, 64 * MiB, [])

    async def scenario(nc: NATS) -> Transfer:
        await send(nc, src, "host-2.snapshot.empty")
        return await receive(nc, "host-2.snapshot.empty", target)

    got = run(nats_url, scenario)
    assert (got.chunks, got.data_bytes) == (0, 0)
    assert target.stat().st_size == 64 * MiB and target.stat().st_blocks == 0


def test_a_send_killed_midway_is_finished_by_the_next_sending_only_the_rest(nats_url: str, tmp_path: Path) -> None:
    src = tmp_path / "big.img"
    make_image(src, 64 * MiB, [(i * 2 * MiB, os.urandom(MiB)) for i in range(32)])  # 512 chunks of 64 KiB
    key = "host-2.snapshot.resumed"

    async def scenario(nc: NATS) -> Transfer:
        seen = 0
        task = asyncio.create_task(send(nc, src, key, chunk_size=GRID))

        async def on_chunk(msg: Msg) -> None:
            nonlocal seen
            seen += 1
            if seen == 40:
                task.cancel()  # the sender dies with chunks in flight

        sub = await nc.subscribe(f"vp.xfer.c.{key}.>", cb=on_chunk)
        with pytest.raises(asyncio.CancelledError):
            await task
        await sub.unsubscribe()
        # What it published before it died reaches the store (the server takes a stream's
        # messages in on its own queue); the transfer is not complete.
        for _ in range(2000):  # 20 s at most
            if len(await stored(nc, transfer.chunk_subjects(key))) >= 40:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="not complete"):
            await receive(nc, key, tmp_path / "early.img")
        return await send(nc, src, key, chunk_size=GRID)

    again = run(nats_url, scenario)
    assert again.chunks == 512 and again.skipped >= 40 and again.transferred > 0
    assert again.skipped + again.transferred == 512
    run(nats_url, lambda nc: receive(nc, key, tmp_path / "done.img"))
    assert (tmp_path / "done.img").read_bytes() == src.read_bytes()
    assert not (tmp_path / "early.img").exists() and not list(tmp_path.glob("*.tmp"))


def test_a_send_repeated_after_completion_sends_nothing(nats_url: str, tmp_path: Path) -> None:
    src = sample(tmp_path)

    async def scenario(nc: NATS) -> tuple[Transfer, Transfer]:
        return await send(nc, src, "host-2.snapshot.twice", chunk_size=GRID), await send(nc, src, "host-2.snapshot.twice", chunk_size=GRID)

    first, second = run(nats_url, scenario)
    assert first.transferred == first.chunks > 0 and first.skipped == 0
    assert second.transferred == 0 and second.skipped == first.chunks and second.digest == first.digest


def test_a_corrupted_chunk_fails_the_receive_and_a_new_send_repairs_it(nats_url: str, tmp_path: Path) -> None:
    src = sample(tmp_path)
    key = "host-2.snapshot.corrupt"
    target = tmp_path / "restored.img"

    async def scenario(nc: NATS) -> Transfer:
        await send(nc, src, key, chunk_size=GRID)
        victim = sorted(await stored(nc, transfer.chunk_subjects(key)))[3]
        length = int(victim.split(".")[-2], 16)
        await nc.jetstream().publish(victim, os.urandom(length), stream=transfer.STREAM)  # replaces the stored chunk
        with pytest.raises(Internal, match="does not match its checksum"):
            await receive(nc, key, target)
        assert not target.exists() and not list(tmp_path.glob("*.tmp"))
        assert victim not in await stored(nc, transfer.chunk_subjects(key))  # removed, so that a send replaces it
        with pytest.raises(Unavailable, match="gone"):
            await receive(nc, key, target)
        return await send(nc, src, key, chunk_size=GRID)

    repaired = run(nats_url, scenario)
    assert repaired.transferred == 1
    run(nats_url, lambda nc: receive(nc, key, target))
    assert target.read_bytes() == src.read_bytes()


def test_a_receive_crashed_midway_starts_over_cleanly(nats_url: str, tmp_path: Path) -> None:
    src = sample(tmp_path)
    target = tmp_path / "restored.img"
    # What a receiver killed mid-write leaves: its temporary file, half written.
    stale = target.with_name("restored.img.xfer.tmp")
    make_image(stale, 32 * MiB, [(0, os.urandom(MiB)), (20 * MiB, os.urandom(MiB))])

    async def scenario(nc: NATS) -> Transfer:
        await send(nc, src, "host-2.snapshot.crashed", chunk_size=GRID)
        return await receive(nc, "host-2.snapshot.crashed", target)

    run(nats_url, scenario)
    assert target.read_bytes() == src.read_bytes()
    assert not stale.exists()


def test_a_receive_killed_midway_leaves_nothing_and_the_next_one_succeeds(nats_url: str, tmp_path: Path) -> None:
    src = tmp_path / "big.img"
    make_image(src, 64 * MiB, [(i * 2 * MiB, os.urandom(MiB)) for i in range(32)])
    key = "host-2.snapshot.receive-killed"
    target = tmp_path / "out" / "restored.img"
    target.parent.mkdir()
    tmp = target.with_name("restored.img.xfer.tmp")

    async def scenario(nc: NATS) -> None:
        await send(nc, src, key, chunk_size=GRID)
        task = asyncio.create_task(receive(nc, key, target))
        for _ in range(4000):  # 20 s at most: until the first chunks are on disk
            if tmp.exists() and tmp.stat().st_blocks > 0:
                break
            assert not task.done()
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not list(target.parent.iterdir())  # neither the target nor the half-written copy
        await receive(nc, key, target)

    run(nats_url, scenario)
    assert target.read_bytes() == src.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["restored.img"]


def test_an_unknown_transfer_is_unavailable_and_a_bad_key_invalid(nats_url: str, tmp_path: Path) -> None:
    async def scenario(nc: NATS) -> None:
        with pytest.raises(Unavailable, match="not complete"):
            await receive(nc, "host-2.snapshot.never", tmp_path / "x.img")
        for bad in ("", "a..b", "a.*", "a.>", "a b", "x" * 300):
            with pytest.raises(InvalidArgument):
                await receive(nc, bad, tmp_path / "x.img")
        with pytest.raises(NotFound):
            await send(nc, tmp_path / "missing.img", "host-2.snapshot.missing")

    run(nats_url, scenario)
    assert not list(tmp_path.iterdir())


def test_discard_removes_the_transfer_and_only_it(nats_url: str, tmp_path: Path) -> None:
    src = sample(tmp_path)
    # A key that extends the discarded one must survive it.
    keys = ("host-2.snapshot.d", "host-2.snapshot.d.longer")

    async def scenario(nc: NATS) -> None:
        for key in keys:
            await send(nc, src, key, chunk_size=GRID)
        await discard(nc, keys[0])
        await discard(nc, keys[0])  # idempotent
        for pattern in (transfer.chunk_subjects(keys[0]), transfer.part_subjects(keys[0]), transfer.manifest_subject(keys[0])):
            assert not await stored(nc, pattern)
        with pytest.raises(Unavailable):
            await receive(nc, keys[0], tmp_path / "gone.img")
        await receive(nc, keys[1], tmp_path / "kept.img")
        await discard(nc, keys[1])
        assert not await stored(nc, "vp.xfer.*.host-2.snapshot.d.>")

    run(nats_url, scenario)
    assert (tmp_path / "kept.img").read_bytes() == src.read_bytes()


def test_the_event_log_gets_no_image_data_and_the_store_setup_is_idempotent(nats_url: str, tmp_path: Path) -> None:
    src = sample(tmp_path)

    async def scenario(nc: NATS) -> tuple[int, dict[str, object]]:
        js = nc.jetstream()
        await EventStore(js).ensure_stream()
        await ensure_transfer_store(js)
        await send(nc, src, "host-2.snapshot.log", chunk_size=GRID)
        config = (await js.stream_info(transfer.STREAM)).config
        return (await js.stream_info(subjects.STREAM)).state.messages, {"subjects": config.subjects, "per_subject": config.max_msgs_per_subject, "max_age": config.max_age}

    log_messages, config = run(nats_url, scenario)
    assert log_messages == 0
    assert config == {"subjects": ["vp.xfer.>"], "per_subject": 1, "max_age": transfer.MAX_AGE}


def node_rights(node: str) -> list[str]:
    """What docs/decisions.md ("Images across hosts") says a node's NATS user needs."""
    return [
        f"vp.xfer.*.{node}.>",
        f"$JS.API.STREAM.INFO.{transfer.STREAM}",
        f"$JS.API.DIRECT.GET.{transfer.STREAM}.>",
        f"$JS.API.CONSUMER.CREATE.{transfer.STREAM}",
        f"$JS.FC.{transfer.STREAM}.>",
        f"$JS.API.STREAM.PURGE.{transfer.STREAM}",
        "_INBOX.>",
    ]


def test_two_nodes_with_only_the_documented_rights_move_an_image(tmp_path: Path) -> None:
    port = free_port()
    users: list[dict[str, object]] = [{"user": "admin", "password": "admin-pw"}]
    for node in ("host-2", "host-3"):
        users.append({"user": node, "password": f"{node}-pw", "permissions": {"publish": node_rights(node), "subscribe": [f"_INBOX.{node}.>"]}})
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\nauthorization {{ users: {json.dumps(users)} }}\n')
    server = EmbeddedServer.nats_with_config(conf, port, f"nats://admin:admin-pw@127.0.0.1:{port}")
    server.start()
    src = sample(tmp_path)
    target = tmp_path / "restored.img"
    key = "host-2.snapshot.rights"
    try:
        run(server.url, lambda nc: ensure_transfer_store(nc.jetstream()))
        sent = run(f"nats://host-2:host-2-pw@127.0.0.1:{port}", lambda nc: send(nc, src, key, chunk_size=GRID))

        async def on_host_3(nc: NATS) -> Transfer:
            got = await receive(nc, key, target)
            await discard(nc, key)
            return got

        got = run(f"nats://host-3:host-3-pw@127.0.0.1:{port}", on_host_3)
        assert got.digest == sent.digest and target.read_bytes() == src.read_bytes()
        assert not run(server.url, lambda nc: stored(nc, "vp.xfer.>"))
    finally:
        server.stop()
