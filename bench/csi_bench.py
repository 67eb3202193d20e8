"""``make bench``: CreateVolume+DeleteVolume pairs through the CSI socket.

Starts its own stack (own nats-server and redis-server, temporary directory), then for
1 and 16 concurrent clients runs at least 300 pairs, first with no other volumes and
then with 10,000 existing ones, and prints pairs/s and p50/p99 pair latency.

    make bench                       # the full run
    make bench BENCH_ARGS="--pairs 100 --existing 1000"
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc
from volplane.launcher import Stack

CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(),
    access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)
SIZE = csi.CapacityRange(required_bytes=32 * 2**20)


async def _pair(stub: rpc.ControllerStub, name: str) -> float:
    t0 = time.perf_counter()
    vol = await stub.CreateVolume(csi.CreateVolumeRequest(name=name, capacity_range=SIZE, volume_capabilities=[CAP]))
    await stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume.volume_id))
    return time.perf_counter() - t0


async def run_case(endpoint: str, clients: int, pairs: int) -> tuple[float, list[float]]:
    """``clients`` concurrent callers share ``pairs`` pairs; returns (elapsed, latencies)."""
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(clients)]
    stubs = [rpc.ControllerStub(ch) for ch in channels]
    prefix = uuid.uuid4().hex[:8]
    for i, stub in enumerate(stubs):  # Warm each connection outside the timing.
        await _pair(stub, f"warm-{prefix}-{i}")
    remaining = iter(range(pairs))
    latencies: list[float] = []

    async def worker(stub: rpc.ControllerStub) -> None:
        for i in remaining:
            latencies.append(await _pair(stub, f"bench-{prefix}-{i}"))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in stubs))
    elapsed = time.perf_counter() - t0
    for ch in channels:
        await ch.close()
    return elapsed, latencies


async def preload(endpoint: str, count: int, concurrency: int = 32) -> None:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = rpc.ControllerStub(ch)
        names = iter(range(count))

        async def worker() -> None:
            for i in names:
                await stub.CreateVolume(csi.CreateVolumeRequest(name=f"existing-{i}", capacity_range=SIZE, volume_capabilities=[CAP]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _row(label: str, clients: int, elapsed: float, lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return f"{label:<18}{clients:>8}{len(lat):>8}{len(lat) / elapsed:>10.0f}{q[49] * 1000:>10.2f}{q[98] * 1000:>10.2f}"


async def main_async(args: argparse.Namespace, endpoint: str) -> list[tuple[str, int, float]]:
    print(f"{'volumes existing':<18}{'clients':>8}{'pairs':>8}{'pairs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    results = []
    for label, existing in (("0", 0), (f"{args.existing:,}", args.existing)):
        if existing:
            t0 = time.perf_counter()
            await preload(endpoint, existing)
            print(f"# preloaded {existing:,} volumes in {time.perf_counter() - t0:.1f}s", flush=True)
        for clients in args.clients:
            rates = []
            for _ in range(args.repeat):
                elapsed, lat = await run_case(endpoint, clients, args.pairs)
                print(_row(label, clients, elapsed, lat), flush=True)
                rates.append(len(lat) / elapsed)
            results.append((label, clients, statistics.median(rates)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--existing", type=int, default=10_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the summary gives the median")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volplane-bench-") as tmp:
        stack = Stack(Path(tmp), env={"VOLPLANE_POOL_CAPACITY": "1Pi", "VOLPLANE_SHARED_POOL_CAPACITY": "1Pi", "VOLPLANE_LOG_LEVEL": "WARNING"})
        stack.start()
        try:
            results = asyncio.run(main_async(args, stack.csi_endpoint))
        finally:
            stack.stop()
    print("\nmedian pairs/s:")
    base = {c: r for label, c, r in results if label == "0"}
    for label, clients, rate in results:
        ratio = f"  ({base[clients] / rate:.2f}x the empty case's time)" if label != "0" else ""
        print(f"  {label:>7} existing, {clients:>2} clients: {rate:7.0f}{ratio}")


if __name__ == "__main__":
    main()
