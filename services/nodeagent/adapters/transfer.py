"""Images between hosts over the bus: a sparse, checksummed, resumable copy through a
JetStream stream of its own (``VOLPLANE_TRANSFER``), never the event log.

    await ensure_transfer_store(nc.jetstream(), replicas=3)      # the install step, as admin
    sent = await send(nc, Path("/pool/snapshots/<sid>.img"), "host-2.snapshot.<sid>")   # on the host that has it
    got = await receive(nc, "host-2.snapshot.<sid>", Path("/pool/<vid>.img"))           # on the host that wants it
    assert got.digest == sent.digest
    await discard(nc, "host-2.snapshot.<sid>")                    # once the receiver has recorded it

Layout (docs/decisions.md, "Images across hosts"). The image is cut on a grid of
``chunk_size`` cells (a power of two below the server's max_payload: 512 KiB under the
default 1 MiB); each cell's data runs (``SEEK_DATA``/``SEEK_HOLE``; holes and all-zero runs
are not sent) are one chunk each, stored on a subject that names it whole —
``vp.xfer.c.<key>.<offset>.<length>.<sha256>`` (hex) — with the raw bytes as the payload. The chunk
list is stored in parts (``vp.xfer.p.<key>.<sha256 of the part>``), and last of all the
manifest on ``vp.xfer.m.<key>``: the image's size, the grid, the parts' digests and the
whole-image digest. A transfer is complete exactly when its manifest exists; everything the
manifest names is content-addressed, so a reader never mixes two sends of one key.

Resuming. ``send`` lists the chunk and part subjects the stream already holds for the key
and publishes only what is missing: a send killed midway is finished by the next one, which
reads and hashes the image again but sends only the rest. ``receive`` writes into
``<target>.xfer.tmp`` beside the target (the pool's sweep of ``*.tmp`` removes one a crash
left; the next receive truncates and rewrites it), checks every chunk and the whole digest,
fsyncs and renames it into place.

The caller gives a consistent image: a snapshot is immutable; a volume being cloned must be
flushed or frozen first, as for a local copy.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import BaseModel, ConfigDict, ValidationError

from volplane import codec
from volplane.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable

__all__ = [
    "MANIFEST_VERSION",
    "STREAM",
    "SUBJECTS",
    "Manifest",
    "Transfer",
    "chunk_size_for",
    "chunk_subjects",
    "discard",
    "ensure_transfer_store",
    "image_digest",
    "manifest_of",
    "manifest_subject",
    "part_subjects",
    "plan",
    "receive",
    "send",
]

# The stream and its subjects. (They belong beside the others in volplane/subjects.py; kept
# here until that module's owner takes them, so that this module stays self-contained.)
STREAM = "VOLPLANE_TRANSFER"
SUBJECTS = "vp.xfer.>"
_PREFIX = "vp.xfer"

MANIFEST_VERSION = 1
# A transfer left behind (a receiver that never came, a discard that never ran) is dropped
# after a day: long enough for the largest image over a slow link, short enough that the
# store does not hold images no one will read.
MAX_AGE = 24 * 3600.0
# Room for the subject and the headers JetStream adds, within the server's max_payload.
_HEADROOM = 16 * 1024
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 4 * 2**20
_BLOCK = 4096
# Requests in flight per transfer: enough to keep loopback and a LAN busy, few enough that a
# slow server is not buried (each is up to one chunk in memory).
WINDOW = 8
TIMEOUT = 20.0

T = TypeVar("T")

_TOKEN = re.compile(r"^[A-Za-z0-9_~-]{1,128}$")
_MAX_KEY = 256


class Manifest(BaseModel):
    """What a complete transfer is: stored last, on ``vp.xfer.m.<key>``."""

    model_config = ConfigDict(frozen=True)

    version: int
    size: int  # the image's length in bytes (its holes included)
    chunk_size: int  # the grid the chunks were cut on
    chunks: int  # how many chunks the parts list
    data_bytes: int  # the bytes the chunks carry
    parts: tuple[bytes, ...]  # sha256 of each part, in offset order
    digest: bytes  # image_digest of the image sent


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    length: int
    sha256: bytes

    def entry(self) -> list[Any]:
        return [self.offset, self.length, self.sha256]


@dataclass(frozen=True, slots=True)
class Transfer:
    """What ``send`` or ``receive`` did: the image's size and digest, the data in it, and
    how many chunks went over the wire this time (``skipped``: a send's chunks already
    stored by an earlier, interrupted one)."""

    key: str
    size: int
    digest: bytes
    chunks: int
    data_bytes: int
    transferred: int = 0
    skipped: int = 0


# -- subjects ------------------------------------------------------------------------------


def _check_key(key: str) -> str:
    """A key is one or more subject tokens (``host-2.snapshot.<id>``); the first names the
    sending node by convention, so that a node's NATS user may publish its own keys only."""
    if not isinstance(key, str) or len(key) > _MAX_KEY or not all(_TOKEN.match(t) for t in key.split(".")):
        raise InvalidArgument(f"transfer key {str(key)[:64]!r}: dot-separated tokens of letters, digits, '_', '~' or '-', at most {_MAX_KEY} characters")
    return key


def manifest_subject(key: str) -> str:
    return f"{_PREFIX}.m.{_check_key(key)}"


def chunk_subjects(key: str) -> str:
    """Every chunk of ``key`` and no other key's (a fixed number of tokens after it)."""
    return f"{_PREFIX}.c.{_check_key(key)}.*.*.*"


def part_subjects(key: str) -> str:
    return f"{_PREFIX}.p.{_check_key(key)}.*"


def _chunk_subject(key: str, chunk: Chunk) -> str:
    return f"{_PREFIX}.c.{key}.{chunk.offset:x}.{chunk.length:x}.{chunk.sha256.hex()}"


def _part_subject(key: str, digest: bytes) -> str:
    return f"{_PREFIX}.p.{key}.{digest.hex()}"


# -- the stream ----------------------------------------------------------------------------


async def ensure_transfer_store(js: JetStreamContext, replicas: int = 1, max_age: float = MAX_AGE) -> None:
    """Create the transfer stream if it is missing, or bring the settings this module relies
    on up to date — an administrator's step, like the event log's (no node may create or
    reconfigure streams).

    File storage (a transfer outlives a server restart, so a send resumes after one), one
    message per subject (a chunk sent twice is stored once), direct gets (the receiver reads
    chunks by subject), and ``max_age`` as the backstop for transfers never discarded.
    """
    wanted: dict[str, Any] = {"subjects": [SUBJECTS], "allow_direct": True, "max_msgs_per_subject": 1, "max_age": max_age}
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            name=STREAM,
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            num_replicas=replicas,
            duplicate_window=min(120.0, max_age),
            **wanted,
        )
        return
    config = info.config
    if any(getattr(config, name) != value for name, value in wanted.items()):
        await js.update_stream(config.evolve(**wanted))


# -- the image -----------------------------------------------------------------------------


def chunk_size_for(max_payload: int) -> int:
    """The largest power of two that fits in a message with its subject and headers."""
    size = MIN_CHUNK
    while size * 2 <= min(MAX_CHUNK, max_payload - _HEADROOM):
        size *= 2
    if size > max_payload - _HEADROOM:
        raise FailedPrecondition(f"the NATS server's max_payload ({max_payload} bytes) is too small for image transfers")
    return size


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The data runs of an open file, as (offset, end)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # only a hole remains
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def _cells(extents: Iterable[tuple[int, int]], chunk_size: int) -> Iterator[tuple[int, int]]:
    """Data runs cut on the grid: every run lies inside one cell."""
    for start, end in extents:
        while start < end:
            stop = min(end, (start // chunk_size + 1) * chunk_size)
            yield start, stop - start
            start = stop


def _read_chunk(fd: int, offset: int, length: int) -> tuple[bytes, bytes] | None:
    """The run's bytes and their sha256; None for a run of zeros (sent as a hole)."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise Internal(f"image shrank while it was read: {length} bytes wanted at {offset}, {len(data)} read")
    if data[0] == 0 and data == bytes(length):  # the first byte turns most data away at once
        return None
    return data, hashlib.sha256(data).digest()


def _digest(size: int, chunks: Iterable[Chunk]) -> bytes:
    """The whole image's digest: sha256 over its size and, in offset order, each data
    chunk's offset, length and sha256 — a hash list, so no hole is hashed and the sender's
    chunks can be hashed in any order. Layout-independent for a given grid: a run of zeros
    counts as a hole whether or not it is allocated."""
    h = hashlib.sha256(b"volplane-image-v1\0")
    h.update(size.to_bytes(8, "big"))
    for c in chunks:
        h.update(c.offset.to_bytes(8, "big") + c.length.to_bytes(8, "big") + c.sha256)
    return h.digest()


def plan(path: Path, chunk_size: int) -> tuple[int, list[tuple[int, int]]]:
    """The image's size and its data runs cut on the grid (before zero runs are dropped)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return size, list(_cells(_extents(fd, size), chunk_size))
    finally:
        os.close(fd)


def image_digest(path: Path, chunk_size: int) -> bytes:
    """The digest ``send`` records for ``path`` on a ``chunk_size`` grid (Manifest.digest)."""
    size, runs = plan(path, chunk_size)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        for offset, length in runs:
            read = _read_chunk(fd, offset, length)
            if read is not None:
                chunks.append(Chunk(offset, length, read[1]))
        return _digest(size, chunks)
    finally:
        os.close(fd)


class _Files:
    """The threads that read or write one open file. A task cancelled while its thread is in
    ``pread``/``pwrite`` leaves the thread running; ``close`` waits for every thread, and
    only then is the file closed — so no thread ever uses a descriptor number that the
    process has meanwhile given to another file."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WINDOW, thread_name_prefix="vp-transfer")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # at most one chunk's read or write per thread


# -- bus helpers ---------------------------------------------------------------------------


async def _stored_subjects(nc: NATS, subject_filter: str) -> set[str]:
    """The subjects the stream holds under ``subject_filter``, page by page."""
    found: set[str] = set()
    offset = 0
    while True:
        request = json.dumps({"subjects_filter": subject_filter, "offset": offset}).encode()
        try:
            msg = await nc.request(f"$JS.API.STREAM.INFO.{STREAM}", request, timeout=TIMEOUT)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError) as exc:
            raise Unavailable(f"the transfer store did not answer: {type(exc).__name__}") from exc
        reply = _json(msg.data)
        if "error" in reply:
            raise _api_error(reply["error"], "listing a transfer")
        subjects = (reply.get("state") or {}).get("subjects") or {}
        found.update(subjects)
        total = int(reply.get("total") or 0)
        if not subjects or len(found) >= total:
            return found
        offset = len(found)


def _json(data: bytes) -> dict[str, Any]:
    """A JetStream API answer (the API speaks JSON, not our msgpack)."""
    value = json.loads(data)
    return value if isinstance(value, dict) else {}


def _api_error(error: dict[str, Any], what: str) -> Exception:
    code = int(error.get("code") or 0)
    description = error.get("description", "")
    if code == 404:
        return Unavailable(f"{what}: no transfer store (stream {STREAM}); the install step creates it: {description}")
    return Unavailable(f"{what}: the transfer store refused: {description} ({code})")


async def _publish(js: JetStreamContext, subject: str, payload: bytes) -> None:
    try:
        await js.publish(subject, payload, timeout=TIMEOUT, stream=STREAM)
    except nats.js.errors.APIError as exc:
        raise Unavailable(f"the transfer store refused {subject.split('.')[2]}: {exc}") from exc
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
        raise Unavailable(f"the transfer store did not acknowledge: {type(exc).__name__}") from exc


async def _get(js: JetStreamContext, subject: str) -> bytes | None:
    """The stored message on ``subject``, None when there is none."""
    try:
        msg = await js.get_msg(STREAM, subject=subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None
    except nats.js.errors.APIError as exc:
        raise Unavailable(f"the transfer store refused a read: {exc}") from exc
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError) as exc:
        raise Unavailable(f"the transfer store did not answer a read: {type(exc).__name__}") from exc
    return msg.data or b""


async def _purge(js: JetStreamContext, subject_filter: str) -> None:
    try:
        await js.purge_stream(STREAM, subject=subject_filter)
    except nats.js.errors.NotFoundError:
        return  # no store, nothing to remove
    except nats.js.errors.APIError as exc:
        raise Unavailable(f"the transfer store refused a purge: {exc}") from exc
    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError) as exc:
        raise Unavailable(f"the transfer store did not answer a purge: {type(exc).__name__}") from exc


async def _pipeline(items: Iterable[Any] | AsyncIterable[Any], work: Callable[[Any], Coroutine[Any, Any, None]], window: int = WINDOW) -> None:
    """``work`` on every item, ``window`` at a time; the first failure cancels the rest."""
    pending: set[asyncio.Task[None]] = set()

    async def each() -> AsyncGenerator[Any, None]:
        if isinstance(items, AsyncIterable):
            async for item in items:
                yield item
        else:
            for item in items:
                yield item

    source = each()
    try:
        async for item in source:
            if len(pending) >= window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(work(item)))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await source.aclose()


def _parts(chunks: list[Chunk], max_payload: int) -> list[bytes]:
    """The chunk list, msgpack-encoded in pieces that each fit in one message."""
    per_part = max(1, (max_payload - _HEADROOM) // 64)  # an entry packs to about 50 bytes
    return [codec.pack([c.entry() for c in chunks[i : i + per_part]]) for i in range(0, len(chunks), per_part)] or [codec.pack([])]


# -- send ----------------------------------------------------------------------------------


async def send(nc: NATS, path: Path, key: str, *, chunk_size: int | None = None) -> Transfer:
    """Publish the image at ``path`` under ``key``; returns what it sent.

    Idempotent and resumable: chunks and parts already stored for the key are not sent again,
    and the manifest goes last, so an interrupted send is never taken for a complete one.
    Raises NotFound when ``path`` does not exist, Unavailable when the store does not answer.
    """
    _check_key(key)
    js = nc.jetstream(timeout=TIMEOUT)
    grid = chunk_size or chunk_size_for(nc.max_payload)
    if grid % _BLOCK or not MIN_CHUNK <= grid <= nc.max_payload - _HEADROOM:
        raise InvalidArgument(f"chunk size {grid}: a multiple of {_BLOCK} between {MIN_CHUNK} and the server's max_payload less {_HEADROOM}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"image {path.name} does not exist") from exc
    files = _Files()
    try:
        size = os.fstat(fd).st_size
        runs = await files.run(lambda: list(_cells(_extents(fd, size), grid)))
        stored = await _stored_subjects(nc, chunk_subjects(key))
        chunks: dict[int, Chunk] = {}
        counts = {"sent": 0, "skipped": 0}

        async def one(run: tuple[int, int]) -> None:
            read = await files.run(_read_chunk, fd, *run)
            if read is None:
                return
            data, sha = read
            chunk = chunks[run[0]] = Chunk(run[0], run[1], sha)
            subject = _chunk_subject(key, chunk)
            if subject in stored:
                counts["skipped"] += 1
                return
            await _publish(js, subject, data)
            counts["sent"] += 1

        await _pipeline(runs, one)
    except OSError as exc:
        raise Internal(f"cannot read image {path.name}: {exc.strerror}") from exc
    finally:
        files.close()
        os.close(fd)
    ordered = [chunks[o] for o in sorted(chunks)]
    parts = _parts(ordered, nc.max_payload)
    part_digests = [hashlib.sha256(p).digest() for p in parts]
    stored_parts = await _stored_subjects(nc, part_subjects(key))
    for body, digest in zip(parts, part_digests, strict=True):
        if _part_subject(key, digest) not in stored_parts:
            await _publish(js, _part_subject(key, digest), body)
    manifest = Manifest(
        version=MANIFEST_VERSION, size=size, chunk_size=grid, chunks=len(ordered),
        data_bytes=sum(c.length for c in ordered), parts=tuple(part_digests), digest=_digest(size, ordered),
    )
    await _publish(js, manifest_subject(key), codec.encode(manifest))
    return Transfer(key, size, manifest.digest, manifest.chunks, manifest.data_bytes, counts["sent"], counts["skipped"])


# -- receive -------------------------------------------------------------------------------


async def manifest_of(nc: NATS, key: str) -> Manifest | None:
    """The manifest of a complete transfer; None while the sender has not finished."""
    data = await _get(nc.jetstream(timeout=TIMEOUT), manifest_subject(key))
    if data is None:
        return None
    try:
        manifest = Manifest.model_validate(codec.unpack(data))
    except (ValidationError, ValueError) as exc:
        raise Internal(f"transfer {key}: the manifest does not decode: {exc}") from exc
    if manifest.version != MANIFEST_VERSION:
        raise Internal(f"transfer {key}: manifest version {manifest.version}, this node reads {MANIFEST_VERSION}")
    return manifest


async def receive(nc: NATS, key: str, target: Path) -> Transfer:
    """Write the image sent under ``key`` to ``target``, atomically: either the whole image,
    checked chunk by chunk and as a whole, is renamed into place, or ``target`` is untouched.

    Raises Unavailable while the transfer is incomplete (no manifest yet, or data discarded or
    expired: the sender sends again) or the store does not answer; Internal when a chunk or
    the whole does not match its digest — the bad chunk is removed from the store, so that a
    new send replaces it.
    """
    _check_key(key)
    js = nc.jetstream(timeout=TIMEOUT)
    manifest = await manifest_of(nc, key)
    if manifest is None:
        raise Unavailable(f"transfer {key} is not complete: the sender has not finished")
    chunks: list[Chunk] = []
    for index, part_digest in enumerate(manifest.parts):
        body = await _get(js, _part_subject(key, part_digest))
        if body is None:
            raise Unavailable(f"transfer {key}: part {index} of the chunk list is gone (discarded or expired); send it again")
        if hashlib.sha256(body).digest() != part_digest:
            raise Internal(f"transfer {key}: part {index} of the chunk list does not match its digest")
        chunks.extend(Chunk(int(o), int(n), bytes(s)) for o, n, s in codec.unpack(body))
    if len(chunks) != manifest.chunks or _digest(manifest.size, chunks) != manifest.digest:
        raise Internal(f"transfer {key}: the chunk list does not match the image's digest")
    for c in chunks:
        if c.offset < 0 or c.length <= 0 or c.offset + c.length > manifest.size:
            raise Internal(f"transfer {key}: a chunk at {c.offset} lies outside the image")

    wanted = {_chunk_subject(key, c): c for c in chunks}
    missing = wanted.keys() - await _stored_subjects(nc, chunk_subjects(key))
    if missing:
        raise Unavailable(f"transfer {key}: {len(missing)} of {len(wanted)} chunks are gone (discarded or expired); send it again")

    tmp = target.with_name(f"{target.name}.xfer.tmp")
    try:
        # Truncated: what a crashed receive left is rewritten from the start.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except FileNotFoundError as exc:
        raise NotFound(f"directory {target.parent} does not exist") from exc
    done = False
    files = _Files()
    try:
        os.ftruncate(fd, manifest.size)
        async with _Reader(js, key) as reader:
            await _pipeline(reader.chunks(wanted), lambda item: _write(js, files, key, fd, *item))
        await files.run(os.fsync, fd)
        files.close()
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        done = True
    except OSError as exc:
        raise Internal(f"transfer {key}: cannot write {tmp.name}: {exc.strerror}") from exc
    finally:
        if fd >= 0:
            files.close()
            os.close(fd)
        if not done:
            tmp.unlink(missing_ok=True)
    return Transfer(key, manifest.size, manifest.digest, manifest.chunks, manifest.data_bytes, len(chunks), 0)


class _Reader:
    """An ordered consumer of one key's chunks: the stream pushes them in order, with flow
    control — several times faster than a read per chunk. Deliveries go through a short
    queue, so a slow writer holds the consumer back rather than buffering the image; and
    they are awaited with ``asyncio.timeout``, not nats-py's ``next_msg``, whose
    ``asyncio.wait_for`` can swallow a cancellation on Python 3.11 when a message arrives at
    the same moment (a receive being stopped would run on to the end)."""

    def __init__(self, js: JetStreamContext, key: str) -> None:
        self._js = js
        self._key = key
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=WINDOW)
        self._sub: Any = None

    async def __aenter__(self) -> _Reader:
        try:
            self._sub = await self._js.subscribe(
                chunk_subjects(self._key), stream=STREAM, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL, cb=self._queue.put,
            )
        except nats.js.errors.APIError as exc:
            raise Unavailable(f"transfer {self._key}: the transfer store refused a reader: {exc}") from exc
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"transfer {self._key}: the transfer store did not answer: {type(exc).__name__}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error:
            pass

    async def chunks(self, wanted: dict[str, Chunk]) -> AsyncIterator[tuple[Chunk, str, bytes]]:
        """Every wanted chunk with its subject and bytes, as they come. Chunks of another send
        of the same key, not named by this manifest, are passed over."""
        left = dict(wanted)
        while left:
            try:
                async with asyncio.timeout(TIMEOUT):
                    msg = await self._queue.get()
            except TimeoutError as exc:
                raise Unavailable(f"transfer {self._key}: no chunk came for {TIMEOUT:.0f}s with {len(left)} still to come") from exc
            chunk = left.pop(msg.subject, None)
            if chunk is not None:
                yield chunk, msg.subject, msg.data
            if left and msg.metadata.num_pending == 0:
                raise Unavailable(f"transfer {self._key}: {len(left)} chunks are gone (discarded or expired); send it again")


async def _write(js: JetStreamContext, files: _Files, key: str, fd: int, chunk: Chunk, subject: str, data: bytes) -> None:
    if len(data) != chunk.length or not await files.run(_write_checked, fd, chunk, data):
        await _purge(js, subject)
        raise Internal(f"transfer {key}: the chunk at {chunk.offset} ({chunk.length} bytes) does not match its checksum; removed, send again")


def _write_checked(fd: int, chunk: Chunk, data: bytes) -> bool:
    if hashlib.sha256(data).digest() != chunk.sha256:
        return False
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(fd, view[written:], chunk.offset + written)
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- discard -------------------------------------------------------------------------------


async def discard(nc: NATS, key: str) -> None:
    """Remove everything stored for ``key``; idempotent. The manifest goes first, so a
    transfer half discarded is incomplete, never complete with data missing."""
    js = nc.jetstream(timeout=TIMEOUT)
    await _purge(js, manifest_subject(key))
    await _purge(js, part_subjects(key))
    await _purge(js, chunk_subjects(key))
