"""Images across hosts: how fast ``send`` and ``receive`` (services/nodeagent/adapters/transfer.py)
move a sparse image through a nats-server on loopback.

Starts its own nats-server in a temporary directory, makes a 1 GiB image with ``--data`` MiB
of random data in 1 MiB runs spread over it (the rest holes), and times, ``--runs`` times,
a send, a receive and the discard; for comparison, the local sparse copy a snapshot makes
(``copy_file_range`` of the data extents). Prints each run and the medians, in MB/s of data
(holes are not counted: they cost nothing), and the CPU seconds the client and the
nats-server spent per GiB of data — a figure a busy shared machine disturbs less than time.

    .venv/bin/python -m bench.transfer_bench
    .venv/bin/python -m bench.transfer_bench --data 512 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from devstack.embedded import EmbeddedServer
from services.nodeagent.adapters.transfer import discard, ensure_transfer_store, receive, send
from volplane.clients import connect_once

MiB = 2**20


def make_image(path: Path, size: int, data_mib: int) -> None:
    stride = size // data_mib
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for i in range(data_mib):
            os.pwrite(fd, os.urandom(MiB), i * stride)
        os.fsync(fd)
    finally:
        os.close(fd)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_copy(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        size, pos = os.fstat(src.fileno()).st_size, 0
        while pos < size:
            try:
                start = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            offset = start
            while offset < end:
                offset += os.copy_file_range(src.fileno(), dst.fileno(), end - offset, offset, offset)
            pos = end
        os.ftruncate(dst.fileno(), size)
        os.fsync(dst.fileno())


async def bench(root: Path, size: int, data_mib: int, runs: int) -> None:
    server = EmbeddedServer.nats(root / "nats")
    server.start()
    try:
        nc = await connect_once(server.url)
        await ensure_transfer_store(nc.jetstream())
        source = root / "source.img"
        make_image(source, size, data_mib)
        mb = data_mib * MiB / 1e6
        rows: dict[str, list[float]] = {"send": [], "receive": [], "send+receive": [], "local copy": []}
        cpu: list[float] = []
        assert server.proc is not None
        for run in range(runs):
            key = f"host-2.bench.r{run}"
            target = root / f"target-{run}.img"
            cpu_started = time.process_time() + cpu_seconds(server.proc.pid)
            started = time.perf_counter()
            sent = await send(nc, source, key)
            sent_at = time.perf_counter()
            await receive(nc, key, target)
            done = time.perf_counter()
            cpu.append((time.process_time() + cpu_seconds(server.proc.pid) - cpu_started) / (data_mib / 1024))
            await discard(nc, key)
            target.unlink()
            copy_started = time.perf_counter()
            local_copy(source, target)
            copied = time.perf_counter()
            target.unlink()
            for name, seconds in (("send", sent_at - started), ("receive", done - sent_at), ("send+receive", done - started), ("local copy", copied - copy_started)):
                rows[name].append(mb / seconds)
            print(f"run {run + 1}: " + ", ".join(f"{name} {values[-1]:.0f} MB/s" for name, values in rows.items()) + f", {cpu[-1]:.1f} CPU s/GiB ({sent.chunks} chunks)")
        print(f"median of {runs}, {data_mib} MiB of data in a {size // MiB} MiB image: " + ", ".join(f"{name} {statistics.median(v):.0f} MB/s" for name, v in rows.items())
              + f", {statistics.median(cpu):.1f} CPU s/GiB (client + server, send and receive)")
        await nc.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024, help="image size in MiB")
    parser.add_argument("--data", type=int, default=256, help="MiB of data in it")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--asyncio", action="store_true", help="the standard event loop, not uvloop (which the services run on)")
    args = parser.parse_args()
    if not args.asyncio:
        import uvloop

        uvloop.install()
    with tempfile.TemporaryDirectory(prefix="vp-transfer-bench-") as tmp:
        asyncio.run(bench(Path(tmp), args.size * MiB, args.data, args.runs))


if __name__ == "__main__":
    main()
