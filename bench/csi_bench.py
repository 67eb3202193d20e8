"""``make bench``: what the driver sustains through the CSI socket.

Starts its own stack (own nats-server and redis-server, temporary directory), then:

- controller: CreateVolume+DeleteVolume pairs, 1 and 16 concurrent clients, at least 300
  pairs each, first with no other volumes and then with 10,000 existing ones;
- node (root only): NodeStage+NodePublish+NodeUnpublish+NodeUnstage cycles on real loop
  devices and mounts, for filesystem and block volumes, 1 and 16 clients, with the CPU the
  node agent spent per cycle and its resident memory after the case;
- snapshot: CreateSnapshot+DeleteSnapshot pairs, 1 and 16 clients;

and prints operations/s and p50/p99 latency for each case.

    make bench                                        # everything
    make bench BENCH_ARGS="--suite node --cycles 100"
    VOLPLANE_TLS=off make bench BENCH_ARGS="--suite controller --existing 0"   # NATS without TLS, to compare
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from devstack.launcher import Stack
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

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


async def _parallel(clients: int, total: int, make_worker_state, step, started=None) -> tuple[float, list[float]]:
    """Run ``total`` steps over ``clients`` workers, each with its own state; time each step.
    ``started`` is called when the timing starts (after the workers are made and warm)."""
    states = [await make_worker_state(i) for i in range(clients)]
    for st in states:  # Warm each worker outside the timing.
        await step(st, -1)
    if started is not None:
        started()
    remaining = iter(range(total))
    latencies: list[float] = []

    async def worker(st) -> None:
        for i in remaining:
            t0 = time.perf_counter()
            await step(st, i)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(st) for st in states))
    return time.perf_counter() - t0, latencies


async def node_suite(stack: Stack, args: argparse.Namespace, root: Path) -> None:
    """Stage/publish/unpublish/unstage cycles on volumes published to the stack's node."""
    print(f"\n{'node cycles':<18}{'clients':>8}{'cycles':>8}{'cycles/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'agent CPU ms':>14}{'agent RSS MiB':>15}")
    agent = stack.procs["nodeagent"].pid
    async with grpc.aio.insecure_channel(stack.csi_endpoint) as ch:
        ctl, node = rpc.ControllerStub(ch), rpc.NodeStub(ch)
        node_id = (await node.NodeGetInfo(csi.NodeGetInfoRequest())).node_id
        for kind in ("filesystem", "block"):
            cap = CAP if kind == "filesystem" else csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=CAP.access_mode)
            for clients in args.clients:
                made: list[str] = []

                async def prepare(i: int, kind: str = kind, cap: csi.VolumeCapability = cap, clients: int = clients, made: list[str] = made) -> dict[str, object]:
                    name = f"node-{kind}-{clients}-{i}-{uuid.uuid4().hex[:6]}"
                    vol = (await ctl.CreateVolume(csi.CreateVolumeRequest(name=name, capacity_range=SIZE, volume_capabilities=[cap]))).volume
                    made.append(vol.volume_id)
                    pub = await ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=node_id, volume_capability=cap))
                    staging = root / name / "staging"
                    staging.mkdir(parents=True)
                    return {"vol": vol.volume_id, "cap": cap, "ctx": pub.publish_context, "staging": str(staging), "target": str(root / name / "target")}

                async def cycle(st: dict, _: int) -> None:
                    vid, cap_, ctx, staging, target = st["vol"], st["cap"], st["ctx"], st["staging"], st["target"]
                    await node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging, volume_capability=cap_, publish_context=ctx))
                    await node.NodePublishVolume(
                        csi.NodePublishVolumeRequest(volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap_, publish_context=ctx)
                    )
                    await node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
                    await node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))

                cpu_at_start: list[float] = []
                elapsed, lat = await _parallel(clients, args.cycles, prepare, cycle, lambda at=cpu_at_start: at.append(_cpu_seconds(agent)))
                cpu_ms = (_cpu_seconds(agent) - cpu_at_start[0]) * 1000 / len(lat)
                print(f"{_row(kind, clients, elapsed, lat)}{cpu_ms:>14.1f}{_rss_bytes(agent) / 2**20:>15.0f}", flush=True)
                for vid in made:
                    await ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id))
                    await ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, its children's included (mkfs,
    blkid): ``/proc/<pid>/stat`` fields 14–17."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def snapshot_suite(stack: Stack, args: argparse.Namespace) -> None:
    print(f"\n{'snapshots':<18}{'clients':>8}{'pairs':>8}{'pairs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    async with grpc.aio.insecure_channel(stack.csi_endpoint) as ch:
        ctl = rpc.ControllerStub(ch)
        for clients in args.clients:
            made: list[str] = []

            async def prepare(i: int, clients: int = clients, made: list[str] = made) -> str:
                vol = (await ctl.CreateVolume(csi.CreateVolumeRequest(name=f"snapsrc-{clients}-{i}-{uuid.uuid4().hex[:6]}", capacity_range=SIZE, volume_capabilities=[CAP]))).volume
                made.append(vol.volume_id)
                return vol.volume_id

            async def pair(source: str, i: int) -> None:
                snap = (await ctl.CreateSnapshot(csi.CreateSnapshotRequest(name=f"snap-{source}-{i}", source_volume_id=source))).snapshot
                await ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))

            elapsed, lat = await _parallel(clients, args.snapshots, prepare, pair)
            print(_row("create+delete", clients, elapsed, lat), flush=True)
            for vid in made:
                await ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))


async def controller_suite(args: argparse.Namespace, endpoint: str) -> list[tuple[str, int, float]]:
    print(f"{'volumes existing':<18}{'clients':>8}{'pairs':>8}{'pairs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    results = []
    for label, existing in (("0", 0), (f"{args.existing:,}", args.existing)):
        if existing:
            t0 = time.perf_counter()
            await preload(endpoint, existing)
            print(f"# preloaded {existing:,} volumes in {time.perf_counter() - t0:.1f}s", flush=True)
            # Let the servers finish what the burst left them (JetStream block flushes, Redis'
            # AOF rewrite) so that the timed runs measure steady state, not the aftermath.
            await asyncio.sleep(args.settle)
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
    parser.add_argument("--repeat", type=int, default=3, help="runs per controller case; the summary gives the median")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after preloading")
    parser.add_argument("--cycles", type=int, default=200, help="node cycles per case")
    parser.add_argument("--snapshots", type=int, default=200, help="snapshot pairs per case")
    parser.add_argument("--suite", choices=["all", "controller", "node", "snapshot"], default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volplane-bench-") as tmp:
        stack = Stack(Path(tmp), env={"VOLPLANE_POOL_CAPACITY": "1Pi", "VOLPLANE_SHARED_POOL_CAPACITY": "1Pi", "VOLPLANE_LOG_LEVEL": "WARNING"})
        stack.start()
        try:
            if args.suite in ("all", "node"):
                if os.geteuid() == 0:
                    asyncio.run(node_suite(stack, args, Path(tmp) / "mnt"))
                else:
                    print("node suite skipped: needs root for loop devices and mounts")
            if args.suite in ("all", "snapshot"):
                asyncio.run(snapshot_suite(stack, args))
            if args.suite in ("all", "controller"):
                print()
                results = asyncio.run(controller_suite(args, stack.csi_endpoint))
                print("\nmedian pairs/s:")
                base = {c: r for label, c, r in results if label == "0"}
                for label, clients, rate in results:
                    ratio = f"  ({rate / base[clients]:.2f}x the empty case's rate)" if label != "0" else ""
                    print(f"  {label:>7} existing, {clients:>2} clients: {rate:7.0f}{ratio}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
