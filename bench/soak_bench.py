"""``make bench-soak``: does any process grow while the system works at a steady rate?

Starts its own one-node stack and, for ``--minutes`` (default 30), keeps it busy at a
steady rate: ``--pairs-per-s`` CreateVolume+DeleteVolume pairs a second through the CSI
socket (20 by default, paced by a clock, not as fast as it goes), and, as root, a claim and
a pod through the resource API every ``--pod-every`` seconds, each deleted again (pod,
then claim: unmount, detach, DeleteVolume) once ``--live`` newer ones exist. Every
``--sample`` seconds (30) it reads each process's resident memory (VmRSS: the services,
nats-server and redis-server) and prints a row; at the end, per process, the first, last
and largest figure and the slope of a least-squares line through the samples, over the
whole run and over its second half (the first half includes the warm-up: caches and
allocator arenas filling).

    make bench-soak                                       # 30 minutes
    make bench-soak BENCH_ARGS="--minutes 2 --sample 10"  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from bench.controlplane_bench import _apply, _ready
from bench.procstats import rss_mib
from devstack.launcher import Stack
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc
from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc

CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(),
    access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)
SIZE = csi.CapacityRange(required_bytes=16 * 2**20)


class Counts:
    def __init__(self) -> None:
        self.pairs = 0
        self.pair_errors = 0
        self.pods_mounted = 0
        self.pods_deleted = 0
        self.pod_errors = 0
        self.behind = 0  # ticks skipped because too many pairs were still in flight


async def pairs(endpoint: str, rate: float, until: float, counts: Counts, in_flight: int = 64) -> None:
    """CreateVolume+DeleteVolume pairs started at ``rate`` a second, by the clock."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = rpc.ControllerStub(ch)
        prefix = uuid.uuid4().hex[:6]
        slots = asyncio.Semaphore(in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def pair(i: int) -> None:
            try:
                vol = await stub.CreateVolume(csi.CreateVolumeRequest(name=f"soak-{prefix}-{i}", capacity_range=SIZE, volume_capabilities=[CAP]))
                await stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume.volume_id))
                counts.pairs += 1
            except grpc.aio.AioRpcError:
                counts.pair_errors += 1
            finally:
                slots.release()

        start = time.monotonic()
        i = 0
        while time.monotonic() < until:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if slots.locked():
                counts.behind += 1
            else:
                await slots.acquire()
                task = asyncio.create_task(pair(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)


async def pods(endpoint: str, every: float, live: int, until: float, counts: Counts) -> None:
    """A claim and a pod every ``every`` s; the oldest deleted once ``live`` newer ones exist."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = resources_pb2_grpc.ResourcesStub(ch)
        ns = f"soak-{uuid.uuid4().hex[:6]}"
        await _apply(stub, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": ns}, "provisioner": "csi.volplane.io"})
        made: list[int] = []
        waiting: set[asyncio.Task[None]] = set()

        async def mounted(name: str, deadline: float) -> None:
            while time.monotonic() < deadline:
                try:
                    pod = json.loads((await stub.Get(pb.ObjectRef(kind="pod", namespace=ns, name=name))).json)
                except grpc.aio.AioRpcError:
                    pod = {}
                if pod and _ready(pod):
                    counts.pods_mounted += 1
                    return
                await asyncio.sleep(0.5)
            counts.pod_errors += 1

        async def delete(i: int) -> None:
            for kind, name in (("pod", f"p{i:05d}"), ("pvc", f"c{i:05d}")):
                try:
                    await stub.Delete(pb.ObjectRef(kind=kind, namespace=ns, name=name))
                except grpc.aio.AioRpcError:
                    counts.pod_errors += 1
            counts.pods_deleted += 1

        i = 0
        while time.monotonic() < until:
            claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"c{i:05d}", "namespace": ns},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}, "storageClassName": ns}}
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i:05d}", "namespace": ns},
                   "spec": {"containers": [{"name": "app", "image": "nginx:alpine"}], "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": f"c{i:05d}"}}]}}
            await _apply(stub, claim)
            await _apply(stub, pod)
            task = asyncio.create_task(mounted(f"p{i:05d}", time.monotonic() + 120.0))
            waiting.add(task)
            task.add_done_callback(waiting.discard)
            made.append(i)
            while len(made) > live:
                await delete(made.pop(0))
            i += 1
            await asyncio.sleep(every)
        await asyncio.gather(*waiting)
        for j in made:
            await delete(j)
        # Wait until the last volumes are gone, so that the stack stops with nothing mounted.
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            left = [p for p in (await stub.List(pb.ListRequest(kind="pv"))).items if json.loads(p.json)["spec"].get("storageClassName") == ns]
            if not left:
                break
            await asyncio.sleep(1.0)


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


async def soak(stack: Stack, args: argparse.Namespace) -> None:
    counts = Counts()
    t0 = time.monotonic()
    until = t0 + args.minutes * 60
    work = [asyncio.create_task(pairs(stack.csi_endpoint, args.pairs_per_s, until, counts))]
    if os.geteuid() == 0 and args.pod_every > 0:
        work.append(asyncio.create_task(pods(stack.api_endpoint, args.pod_every, args.live, until, counts)))
    else:
        print("# claims and pods skipped: mounts need root")
    samples: dict[str, list[tuple[float, float]]] = {}
    names = sorted(rss_mib(stack))
    print(f"{'t s':>6}{'pairs':>8}{'pods':>6}{'errs':>6} " + "".join(f"{n[:14]:>15}" for n in names) + "   (RSS MiB)", flush=True)

    def sample() -> None:
        at = time.monotonic() - t0
        rss = rss_mib(stack)
        for name, mib in rss.items():
            samples.setdefault(name, []).append((at, mib))
        errors = counts.pair_errors + counts.pod_errors
        print(f"{at:>6.0f}{counts.pairs:>8}{counts.pods_mounted:>6}{errors:>6} " + "".join(f"{rss.get(n, 0.0):>15.1f}" for n in names), flush=True)

    sample()
    while time.monotonic() < until:
        await asyncio.sleep(min(args.sample, max(0.0, until - time.monotonic())))
        sample()
    await asyncio.gather(*work)
    sample()
    elapsed = time.monotonic() - t0
    print(f"\n{counts.pairs} pairs ({counts.pairs / elapsed:.1f}/s, {counts.pair_errors} failed, {counts.behind} ticks skipped: behind),"
          f" {counts.pods_mounted} pods mounted, {counts.pods_deleted} deleted, {counts.pod_errors} pod errors, in {elapsed / 60:.1f} min")
    print(f"\n{'process':<22}{'first':>8}{'last':>8}{'max':>8}{'slope MiB/h':>13}{'2nd half MiB/h':>16}")
    for name in names:
        points = samples.get(name, [])
        if not points:
            continue
        half = [p for p in points if p[0] >= elapsed / 2]
        print(f"{name:<22}{points[0][1]:>8.1f}{points[-1][1]:>8.1f}{max(p[1] for p in points):>8.1f}"
              f"{_slope_per_hour(points):>13.1f}{_slope_per_hour(half):>16.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--pairs-per-s", type=float, default=20.0)
    parser.add_argument("--pod-every", type=float, default=10.0, help="seconds between claim+pod applies (0: none)")
    parser.add_argument("--live", type=int, default=3, help="pods kept before the oldest is deleted")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volplane-soak-") as tmp:
        stack = Stack(Path(tmp) / "run", env={"VOLPLANE_LOG_LEVEL": "WARNING", "VOLPLANE_POOL_CAPACITY": "1Pi", "VOLPLANE_SHARED_POOL_CAPACITY": "1Pi"})
        stack.start()
        try:
            print(f"soak: {args.pairs_per_s:g} CreateVolume+DeleteVolume pairs/s and a claim+pod every {args.pod_every:g}s"
                  f" ({args.live} kept) for {args.minutes:g} min; RSS of every process every {args.sample:g}s")
            asyncio.run(soak(stack, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
