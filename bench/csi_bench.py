"""``make bench``: what the driver sustains through the CSI socket.

Starts its own stack (own nats-server and redis-server, temporary directory), then:

- controller: CreateVolume+DeleteVolume pairs, 1 and 16 concurrent clients, at least 300
  pairs each, first with no other volumes and then with 10,000 existing ones;
- node (root only): NodeStage+NodePublish+NodeUnpublish+NodeUnstage cycles on real loop
  devices and mounts, for filesystem and block volumes, 1 and 16 clients, with the CPU the
  node agent spent per cycle and its resident memory after the case;
- snapshot: CreateSnapshot+DeleteSnapshot pairs, 1 and 16 clients;
- with ``--hosts N`` (root; issue 12, item 10), afterwards: the controller pairs again on
  ``make run HOSTS=N``'s simulated machines (devstack/hosts.py), each volume in host 2's
  local pool — asked through the controller on host 1 (``run/csi.sock``), made and removed
  by host 2's node agent — with the ratio to the single-machine pairs with no volumes;

and prints operations/s and p50/p99 latency for each case; for the controller cases also
the CPU time every process of the stack (and the bench client) spent per pair, and each
process's resident memory once the 10,000 volumes exist. ``make bench`` runs this with
the other benches (``bench.all``) and prints one table; this module still runs alone.

    python -m bench.csi_bench                                  # everything
    python -m bench.csi_bench --suite node --cycles 100
    VOLPLANE_TLS=off python -m bench.csi_bench --suite controller --existing 0   # NATS without TLS, to compare
    python -m bench.csi_bench --suite controller --existing 0 --hosts 3         # and on three hosts, beside it
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench import procstats
from devstack.hosts import HostsError, HostsStack, require_hosts_support
from devstack.launcher import Stack
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc
from volplane.nodes import TOPOLOGY_KEY

CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(),
    access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)
SIZE = csi.CapacityRange(required_bytes=32 * 2**20)
T = TypeVar("T")
# The HOSTS case's placement: host 2's local pool, as a CO asks for a node's topology.
HOST = 2


def on_host(host: int) -> csi.TopologyRequirement:
    """Accessibility requirements that only host ``host`` satisfies (requisite and preferred)."""
    segment = csi.Topology(segments={TOPOLOGY_KEY: f"host-{host}"})
    return csi.TopologyRequirement(requisite=[segment], preferred=[segment])


def _create(name: str, topology: csi.TopologyRequirement | None) -> csi.CreateVolumeRequest:
    req = csi.CreateVolumeRequest(name=name, capacity_range=SIZE, volume_capabilities=[CAP])
    if topology is not None:
        req.accessibility_requirements.CopyFrom(topology)
    return req


# What a CO calls again, after a backoff, when a call answers it (the HOSTS case does so).
RETRIED = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def _call(call: Callable[[], Awaitable[T]], what: str, retries: Counter[str] | None) -> T:
    """``call()``; with ``retries``, again as a CO does on a retryable code (backoff from 5 ms,
    doubling to 1 s; at most 20 tries), each retry counted by call and code."""
    pause = 0.005
    for attempt in range(20):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if retries is None or exc.code() not in RETRIED or attempt == 19:
                raise
            retries[f"{what} {exc.code().name}"] += 1
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
    raise AssertionError("unreachable")


async def _pair(stub: rpc.ControllerStub, name: str, topology: csi.TopologyRequirement | None = None, timeout: float | None = None,
                retries: Counter[str] | None = None) -> float:
    t0 = time.perf_counter()
    vol = await _call(lambda: stub.CreateVolume(_create(name, topology), timeout=timeout), "CreateVolume", retries)
    await _call(lambda: stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume.volume_id), timeout=timeout), "DeleteVolume", retries)
    return time.perf_counter() - t0


async def run_case(endpoint: str, clients: int, pairs: int, topology: csi.TopologyRequirement | None = None,
                   timeout: float | None = None, retries: Counter[str] | None = None) -> tuple[float, list[float]]:
    """``clients`` concurrent callers share ``pairs`` pairs (each volume with ``topology``'s
    requirements, if given; retried as a CO does when ``retries`` is given, which counts them);
    returns (elapsed, latencies)."""
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(clients)]
    stubs = [rpc.ControllerStub(ch) for ch in channels]
    prefix = uuid.uuid4().hex[:8]
    for i, stub in enumerate(stubs):  # Warm each connection outside the timing.
        await _pair(stub, f"warm-{prefix}-{i}", topology, timeout, retries)
    remaining = iter(range(pairs))
    latencies: list[float] = []

    async def worker(stub: rpc.ControllerStub) -> None:
        for i in remaining:
            latencies.append(await _pair(stub, f"bench-{prefix}-{i}", topology, timeout, retries))

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


async def node_suite(stack: Stack, args: argparse.Namespace, root: Path, results: Results) -> None:
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
                results.node.append((kind, clients, len(lat) / elapsed, cpu_ms))
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


async def snapshot_suite(stack: Stack, args: argparse.Namespace, results: Results) -> None:
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
            results.snapshots.append((clients, len(lat) / elapsed))
            for vid in made:
                await ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))


@dataclass
class ControllerCase:
    """One controller case's runs: pairs/s, and CPU µs per pair by process (the bench client's too)."""

    existing: int
    clients: int
    rates: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_by_process(self) -> dict[str, float]:
        """Median µs per pair of each process over the runs."""
        names = {n for run in self.cpu for n in run}
        return {n: statistics.median(run.get(n, 0.0) for run in self.cpu) for n in names}

    @property
    def cpu_total(self) -> float:
        return statistics.median(sum(run.values()) for run in self.cpu)


@dataclass
class Results:
    """What ``run`` measured, for ``bench.all``'s table."""

    controller: list[ControllerCase] = field(default_factory=list)
    rss_at_existing: dict[str, float] = field(default_factory=dict)  # MiB per process with --existing volumes
    node: list[tuple[str, int, float, float]] = field(default_factory=list)  # (kind, clients, cycles/s, agent CPU ms/cycle)
    snapshots: list[tuple[int, float]] = field(default_factory=list)  # (clients, pairs/s)
    hosts: int = 0  # --hosts: the simulated machines of the HOSTS case (0: not run)
    hosts_controller: list[ControllerCase] = field(default_factory=list)  # its pairs, volumes in host 2's pool
    hosts_skipped: str = ""  # why the HOSTS case did not run, when it was asked for
    hosts_failed: str = ""  # what went wrong in it
    hosts_retries: Counter[str] = field(default_factory=Counter)  # "DeleteVolume ABORTED" → calls made again

    def single_rate(self, clients: int) -> float | None:
        """The single machine's pairs/s with no other volumes, for ``clients`` clients."""
        return next((c.rate for c in self.controller if c.existing == 0 and c.clients == clients), None)


def _cpu_now(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of every stack process and of this one (the bench client)."""
    return {**procstats.cpu_seconds(stack), "bench client": _cpu_seconds(os.getpid())}


async def controller_suite(args: argparse.Namespace, stack: Stack, results: Results) -> None:
    endpoint = stack.csi_endpoint
    print(f"{'volumes existing':<18}{'clients':>8}{'pairs':>8}{'pairs/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU µs/pair':>13}")
    for label, existing in [("0", 0)] + ([(f"{args.existing:,}", args.existing)] if args.existing else []):
        if existing:
            t0 = time.perf_counter()
            await preload(endpoint, existing)
            print(f"# preloaded {existing:,} volumes in {time.perf_counter() - t0:.1f}s", flush=True)
            # Let the servers finish what the burst left them (JetStream block flushes, Redis'
            # AOF rewrite) so that the timed runs measure steady state, not the aftermath.
            await asyncio.sleep(args.settle)
            results.rss_at_existing = procstats.rss_mib(stack)
            print(procstats.rss_line(stack, f"# RSS MiB with {existing:,} volumes"), flush=True)
        for clients in args.clients:
            case = ControllerCase(existing, clients)
            for _ in range(args.repeat):
                before = _cpu_now(stack)
                elapsed, lat = await run_case(endpoint, clients, args.pairs)
                after = _cpu_now(stack)
                case.rates.append(len(lat) / elapsed)
                case.cpu.append({n: (after[n] - before.get(n, 0.0)) * 1e6 / len(lat) for n in after})
                print(f"{_row(label, clients, elapsed, lat)}{sum(case.cpu[-1].values()):>13.0f}", flush=True)
            results.controller.append(case)


def print_controller_summary(results: Results) -> None:
    print("\nmedian pairs/s, and CPU µs per pair by process (median of the runs):")
    base = {c.clients: c.rate for c in results.controller if c.existing == 0}
    names = sorted({n for c in results.controller for n in c.cpu_by_process}, key=lambda n: -max(c.cpu_by_process.get(n, 0.0) for c in results.controller))
    names = [n for n in names if max(c.cpu_by_process.get(n, 0.0) for c in results.controller) >= 10]
    print(f"  {'existing':>8} {'clients':>7} {'pairs/s':>8} {'ratio':>6} {'CPU µs':>7}  " + " ".join(f"{n:>12}" for n in names))
    for c in results.controller:
        ratio = f"{c.rate / base[c.clients]:.2f}x" if c.existing and c.clients in base else ""
        print(f"  {c.existing:>8,} {c.clients:>7} {c.rate:>8.0f} {ratio:>6} {c.cpu_total:>7.0f}  "
              + " ".join(f"{c.cpu_by_process.get(n, 0.0):>12.0f}" for n in names))


def _pool_listing(stack: HostsStack, host: int, pool: str) -> str:
    """What host ``host`` sees in ``pool``'s directory (nothing where it has none of it)."""
    return stack.exec_in(host, ["sh", "-c", f"ls -A {stack.pool_dir(pool)} 2>/dev/null"]).stdout


async def check_placement(stack: HostsStack, host: int) -> str:
    """One volume asked for on ``host`` through the controller: its image is in that host's
    pool only — no other host sees it in any pool, nor does the root namespace — and goes
    with DeleteVolume. Raises RuntimeError otherwise; returns the volume id."""
    pool = f"host-{host}"
    async with grpc.aio.insecure_channel(stack.csi_endpoint) as ch:
        stub = rpc.ControllerStub(ch)
        vol = (await stub.CreateVolume(_create(f"placement-{uuid.uuid4().hex[:8]}", on_host(host)), timeout=120)).volume
        vid = vol.volume_id
        if vol.volume_context.get("pool") != pool:
            raise RuntimeError(f"volume {vid} asked for on {pool} was placed in pool {vol.volume_context.get('pool')!r}")
        seen = {k: [p for p in (f"host-{j}" for j in range(1, stack.hosts + 1)) if vid in _pool_listing(stack, k, p)]
                for k in range(1, stack.hosts + 1)}
        if seen[host] != [pool] or any(seen[k] for k in seen if k != host):
            raise RuntimeError(f"volume {vid}'s image should be seen in {pool}'s pool by host-{host} only; seen: {seen}")
        if any(vid in p.name for p in stack.pool_dir(pool).iterdir()):
            raise RuntimeError(f"volume {vid}'s image shows in the root namespace")
        await stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=120)
        if vid in _pool_listing(stack, host, pool):
            raise RuntimeError(f"volume {vid}'s image is still in {pool}'s pool after DeleteVolume")
    return vid


async def hosts_controller_suite(args: argparse.Namespace, stack: HostsStack, results: Results) -> None:
    vid = await check_placement(stack, HOST)
    print(f"# placement checked: volume {vid} had its image in host-{HOST}'s pool only, and none after DeleteVolume", flush=True)
    print(f"{'HOSTS=' + str(stack.hosts):<18}{'clients':>8}{'pairs':>8}{'pairs/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU µs/pair':>13}")
    for clients in args.clients:
        case = ControllerCase(0, clients)
        for _ in range(args.hosts_repeat):
            retries: Counter[str] = Counter()
            before = _cpu_now(stack)
            elapsed, lat = await run_case(stack.csi_endpoint, clients, args.hosts_pairs, on_host(HOST), timeout=120, retries=retries)
            after = _cpu_now(stack)
            case.rates.append(len(lat) / elapsed)
            case.cpu.append({n: (after[n] - before.get(n, 0.0)) * 1e6 / len(lat) for n in after})
            results.hosts_retries.update(retries)
            again = ", ".join(f"{n} {k}" for k, n in sorted(retries.items())) or "none"
            print(f"{_row(f'host-{HOST} pool', clients, elapsed, lat)}{sum(case.cpu[-1].values()):>13.0f}  retries: {again}", flush=True)
        results.hosts_controller.append(case)


def hosts_skip_reason() -> str:
    """Why this machine cannot simulate hosts ("" when it can)."""
    try:
        require_hosts_support()
    except HostsError as exc:
        return str(exc).replace("make run HOSTS=N", "the HOSTS case")
    if not Path("/dev/loop-control").exists():
        return "the HOSTS case needs /dev/loop-control for loop devices"
    return ""


def run_hosts(args: argparse.Namespace, results: Results) -> None:
    """The HOSTS case on a ``HostsStack`` of its own (an instance no one else holds), then
    its summary beside the single machine's figures."""
    results.hosts = args.hosts
    results.hosts_skipped = hosts_skip_reason()
    if results.hosts_skipped:
        print(f"\nHOSTS={args.hosts} case skipped: {results.hosts_skipped}")
        return
    print(f"\n# HOSTS={args.hosts}: starting {args.hosts} simulated hosts (network and mount namespaces)", flush=True)
    with tempfile.TemporaryDirectory(prefix="volplane-bench-hosts-") as tmp:
        stack = HostsStack(Path(tmp) / "run", hosts=args.hosts, instance=None,
                           env={"VOLPLANE_POOL_CAPACITY": "1Pi", "VOLPLANE_SHARED_POOL_CAPACITY": "1Pi", "VOLPLANE_LOG_LEVEL": "WARNING"})
        t0 = time.perf_counter()
        try:
            stack.start()  # stops what it made if it fails
            try:
                print(f"# started in {time.perf_counter() - t0:.1f}s (instance {stack.instance}, event log at R{stack.replicas})", flush=True)
                _run(hosts_controller_suite(args, stack, results))
            finally:
                stack.stop()
        except (HostsError, RuntimeError, grpc.RpcError, TimeoutError, OSError) as exc:
            # The single machine's figures stand; the caller reports the failure.
            results.hosts_failed = f"{type(exc).__name__}: {exc}"
            print(f"\nHOSTS={args.hosts} case failed: {results.hosts_failed}", flush=True)
            # The run directory goes with this block: show the end of the logs it names now.
            for named in re.findall(r"(/\S+\.log)", str(exc)):
                if Path(named).is_file():
                    print(f"--- the end of {named}:\n" + "\n".join(Path(named).read_text(errors="replace").splitlines()[-20:]), flush=True)
            return
    print_hosts_summary(results)


def print_hosts_summary(results: Results) -> None:
    print(f"\nmedian pairs/s, HOSTS={results.hosts} (volumes in host-{HOST}'s pool) beside one machine (no other volumes):")
    print(f"  {'clients':>7} {'1 machine':>10} {'HOSTS=' + str(results.hosts):>10} {'ratio':>6} {'CPU µs/pair: 1 machine':>23} {'HOSTS':>7}")
    for c in results.hosts_controller:
        single = results.single_rate(c.clients)
        one = next((s for s in results.controller if s.existing == 0 and s.clients == c.clients and s.cpu), None)
        print(f"  {c.clients:>7} {'-' if single is None else f'{single:.0f}':>10} {c.rate:>10.0f} {'' if single is None else f'{c.rate / single:.2f}x':>6}"
              f" {'-' if one is None else f'{one.cpu_total:.0f}':>23} {c.cpu_total:>7.0f}")
    if results.hosts_controller and results.hosts_controller[-1].cpu:
        by = sorted(results.hosts_controller[-1].cpu_by_process.items(), key=lambda kv: -kv[1])
        print("  HOSTS CPU µs/pair by process (the last case): " + ", ".join(f"{n} {v:.0f}" for n, v in by if v >= 50))
    again = ", ".join(f"{n} {k}" for k, n in sorted(results.hosts_retries.items())) or "none"
    print(f"  calls made again after a retryable code (as a CO does): {again}")


def run(args: argparse.Namespace) -> Results:
    """Start a stack, run the chosen suites, stop it; then the HOSTS case if asked for;
    prints as it goes."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="volplane-bench-") as tmp:
        stack = Stack(Path(tmp), env={"VOLPLANE_POOL_CAPACITY": "1Pi", "VOLPLANE_SHARED_POOL_CAPACITY": "1Pi", "VOLPLANE_LOG_LEVEL": "WARNING"})
        stack.start()
        try:
            if args.suite in ("all", "node"):
                if os.geteuid() == 0:
                    _run(node_suite(stack, args, Path(tmp) / "mnt", results))
                else:
                    print("node suite skipped: needs root for loop devices and mounts")
            if args.suite in ("all", "snapshot"):
                _run(snapshot_suite(stack, args, results))
            if args.suite in ("all", "controller"):
                print()
                _run(controller_suite(args, stack, results))
                print_controller_summary(results)
        finally:
            stack.stop()
    if args.hosts:
        run_hosts(args, results)
    return results


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """The bench client's own loop: uvloop, as the services use (the client's CPU comes out
    of the same two cores as the stack's), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)
        return
    uvloop.run(coro)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=600)
    p.add_argument("--existing", type=int, default=10_000)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeat", type=int, default=3, help="runs per controller case; the summary gives the median")
    p.add_argument("--settle", type=float, default=10.0, help="seconds to wait after preloading")
    p.add_argument("--cycles", type=int, default=200, help="node cycles per case")
    p.add_argument("--snapshots", type=int, default=200, help="snapshot pairs per case")
    p.add_argument("--suite", choices=["all", "controller", "node", "snapshot"], default="all")
    p.add_argument("--hosts", type=int, default=0, metavar="N",
                   help="then controller pairs on N simulated hosts (root), volumes in host 2's pool; 0: one machine only")
    p.add_argument("--hosts-pairs", type=int, default=600, help="pairs per run of the HOSTS case")
    p.add_argument("--hosts-repeat", type=int, default=3, help="runs per HOSTS case; the summary gives the median")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``parser()``'s arguments, checked (exits with a usage error as argparse does)."""
    p = parser()
    args = p.parse_args(argv)
    if args.hosts and args.hosts < HOST:
        p.error(f"--hosts {args.hosts}: the HOSTS case places volumes on host {HOST}, so it needs 2 hosts or more (0: none)")
    if min(args.hosts_pairs, args.hosts_repeat, *args.clients) < 1:
        p.error("--hosts-pairs, --hosts-repeat and --clients must be 1 or more")
    return args


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    main()
