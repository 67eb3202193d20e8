"""``make bench-controlplane``: claims and pods through the whole standalone pipeline.

Starts its own two-node stack, applies a StorageClass for volplane's CSI driver, then N
claims and N pods (each pod with its own claim; the scheduler picks the node) through the
resource API, and times each claim from its apply until its pod says its volume is
mounted (condition VolumesReady): the PV controller, the external provisioner
(CreateVolume: a sparse image), the scheduler, the AD controller and the external
attacher (ControllerPublish), and the volume manager (NodeStage: loop device, mkfs.ext4,
mount; NodePublish: bind mount). Prints throughput and p50/p99 claim-to-mounted, then
the time to tear everything down (pods, claims: unmount, detach, DeleteVolume), the CPU
seconds each process spent on the round, and each process's resident memory (VmRSS) with
every pod mounted and after the teardown.

    make bench-controlplane                                   # N = 100 and 1000
    make bench-controlplane BENCH_ARGS="--claims 50 --size 16Mi"
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
from typing import Any

import grpc

from bench.procstats import cpu_seconds, rss_mib
from devstack.launcher import Stack
from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "VolumesReady" and c.get("status") == "True" for c in conditions)


async def _apply(stub: resources_pb2_grpc.ResourcesStub, obj: dict[str, Any]) -> None:
    await stub.Apply(pb.ApplyRequest(json=json.dumps(obj).encode(), field_manager="bench"))


async def run(stack: Stack, n: int, size: str, concurrency: int) -> dict[str, float]:
    """One round of N; returns each process's resident memory (MiB) once every volume was mounted."""
    channel = grpc.aio.insecure_channel(stack.api_endpoint)
    stub = resources_pb2_grpc.ResourcesStub(channel)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    cls = ns
    await _apply(stub, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": cls}, "provisioner": "csi.volplane.io"})
    started: dict[str, float] = {}
    mounted: dict[str, float] = {}
    done = asyncio.Event()

    async def watch() -> None:
        stream = stub.Watch(pb.WatchRequest(kind="pods", namespace=ns))
        async for event in stream:
            pod = json.loads(event.object.json)
            name = pod["metadata"]["name"]
            if name not in mounted and _ready(pod):
                mounted[name] = time.perf_counter()
                if len(mounted) == n:
                    done.set()
                    stream.cancel()
                    return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            name = f"p{i:05d}"
            started[name] = time.perf_counter()
            claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"c{i:05d}", "namespace": ns},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": cls}}
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                   "spec": {"containers": [{"name": "app", "image": "nginx:alpine"}], "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": f"c{i:05d}"}}]}}
            await _apply(stub, claim)
            await _apply(stub, pod)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    applied = time.perf_counter() - t0
    try:
        await asyncio.wait_for(done.wait(), timeout=max(600.0, n * 1.0))
    except TimeoutError:
        print(f"  N={n}: only {len(mounted)}/{n} pods mounted before the timeout; some that were not:")
        for name in sorted(set(started) - set(mounted))[:5]:
            pod = json.loads((await stub.Get(pb.ObjectRef(kind="pod", namespace=ns, name=name))).json)
            claim = json.loads((await stub.Get(pb.ObjectRef(kind="pvc", namespace=ns, name="c" + name[1:]))).json)
            events = [json.loads(e.json) for e in (await stub.History(pb.ObjectRef(kind="pod", namespace=ns, name=name))).entries if e.type == "EventRecorded"]
            print(f"    {name}: node {pod['spec'].get('nodeName')}, status {pod.get('status')}, claim {(claim.get('status') or {}).get('phase')} {claim['spec'].get('volumeName')}, events {[(e['reason'], e['message'][:120]) for e in events[-3:]]}")
    watcher.cancel()
    rss = rss_mib(stack)
    elapsed = max(mounted.values(), default=t0) - t0
    lat = sorted(mounted[k] - started[k] for k in mounted)
    if lat:
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"  N={n:5d}  applied in {applied:6.1f}s  all mounted in {elapsed:6.1f}s  {len(lat) / elapsed:6.1f} pods/s"
              f"  claim→mounted p50 {statistics.median(lat):6.2f}s p99 {p99:6.2f}s")
    # Tear down: pods (unmount, detach), then claims (Delete: DeleteVolume, PV gone).
    t1 = time.perf_counter()
    for i in range(n):
        await stub.Delete(pb.ObjectRef(kind="pod", namespace=ns, name=f"p{i:05d}"))
    for i in range(n):
        await stub.Delete(pb.ObjectRef(kind="pvc", namespace=ns, name=f"c{i:05d}"))
    deadline = time.monotonic() + max(600.0, n * 1.0)
    while time.monotonic() < deadline:
        left = [p for p in (await stub.List(pb.ListRequest(kind="pv"))).items if json.loads(p.json)["spec"].get("storageClassName") == cls]
        if not left:
            break
        await asyncio.sleep(1.0)
    print(f"          torn down (unmounted, detached, deleted) in {time.perf_counter() - t1:6.1f}s")
    await channel.close()
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--size", default="32Mi")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("control-plane bench skipped: needs root for loop devices and mounts")
        return
    with tempfile.TemporaryDirectory(prefix="volplane-bench-") as tmp:
        stack = Stack(Path(tmp) / "run", env={"VOLPLANE_LOG_LEVEL": "WARNING", "VOLPLANE_SHARED_POOL_CAPACITY": "512Gi"}, nodes=args.nodes)
        stack.start()
        try:
            print(f"control plane: N claims + N pods ({args.size} ext4 volumes each, {args.nodes} nodes) → every pod's volume mounted")
            for n in args.claims:
                before = cpu_seconds(stack)
                rss = asyncio.run(run(stack, n, args.size, args.concurrency))
                used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(stack).items()}
                print("          CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1])))
                print("          RSS MiB with every pod mounted: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())))
                print("          RSS MiB after teardown: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss_mib(stack).items())), flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
