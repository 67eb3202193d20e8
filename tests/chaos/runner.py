"""``make chaos``: kill -9 at randomized points of every step of a volume's life, in every
process the step runs through, and check that each volume ends where the step said.

Two suites on one stack. CSI (this module): create, publish, stage, mount, unmount,
unstage, unpublish, delete, one CSI call each; victims per step are the service that
owns it (provisioner, attacher or nodeagent), apigw (the CSI server), nats-server and
redis-server. A trial brings ``--inflight`` volumes to the state before the step, fires
the step's call for all of them at once, kills the victim with SIGKILL after a random
delay inside the step's measured duration, restarts it, and then retries each call as a
container orchestrator would until it succeeds. It then checks every volume (its image,
its loop device and mounts, what ListVolumes reports) and, after tearing them down, that
nothing leaked: no image, loop device or mount that no volume accounts for. The control
plane (``controlplane.py``): claim → bind → attach → mount → teardown → detach →
reclaim, driven by the loops instead of a caller; same victims, same checks, plus the
objects.

    make chaos                                          # 2 kills per step × victim: 112
    python -m tests.chaos.runner --suite cp --steps bind --trials 1

Prints a table per suite: for each step and victim, volumes converged / volumes, and
how many were still in the step when the victim died ("hit"); exits 1 if any volume
did not converge or anything leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devstack.hosts import HostsError, HostsStack, require_hosts_support
from devstack.launcher import Stack
from tests.chaos import controlplane
from tests.chaos.common import RETRY, Cell, kill, leaked_loops, loops_of, restart
from tests.conftest import mounts_at
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc

STEPS = ("create", "publish", "stage", "mount", "unmount", "unstage", "unpublish", "delete")
OWNER = {"create": "provisioner", "delete": "provisioner", "publish": "attacher", "unpublish": "attacher"}
SERVERS = ("nats-server", "redis-server")
CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)
SIZE = 16 * 2**20


SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-restart")


def victims(step: str) -> tuple[str, ...]:
    return (OWNER.get(step, "nodeagent"), "apigw", *SERVERS)


@dataclass
class Vol:
    name: str
    id: str = ""
    problems: list[str] = field(default_factory=list)


class Lab:
    """One stack, a CSI client, and the checks."""

    def __init__(self, stack: Stack, work: Path) -> None:
        self.stack = stack
        self.work = work
        self.node = stack.node_id
        # The CO makes the parents of staging and target paths (the kubelet's directories).
        (work / "staging").mkdir(parents=True, exist_ok=True)
        (work / "target").mkdir(parents=True, exist_ok=True)
        self.channel = grpc.aio.insecure_channel(stack.csi_endpoint)
        self.ctl = rpc.ControllerStub(self.channel)
        self.nodes = rpc.NodeStub(self.channel)

    def create_request(self, v: Vol) -> csi.CreateVolumeRequest:
        return csi.CreateVolumeRequest(name=v.name, capacity_range=csi.CapacityRange(required_bytes=SIZE), volume_capabilities=[CAP])

    def images(self, volume_id: str) -> list[Path]:
        """The volume's image files, in every pool this lab's node sees."""
        return list(self.stack.pool_dir("shared").glob(f"{volume_id}.img")) + list(self.stack.pool_dir(self.node).glob(f"{volume_id}.img"))

    def mounts_at(self, path: Path) -> int:
        return mounts_at(path)

    def leftover_images(self) -> list[str]:
        return [p.name for pool in ("shared", self.node) for p in self.stack.pool_dir(pool).glob("*.img")]

    def leftover_mounts(self) -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line.split(" ")[4] for line in f if str(self.work) in line.split(" ")[4]]

    def kill(self, victim: str) -> None:
        kill(self.stack, victim)

    def restart(self, victim: str) -> None:
        restart(self.stack, victim)

    async def close(self) -> None:
        await self.channel.close()

    def staging(self, v: Vol) -> Path:
        return self.work / "staging" / v.name

    def target(self, v: Vol) -> Path:
        return self.work / "target" / v.name

    async def call(self, v: Vol, step: str) -> None:
        t = 20.0
        if step == "create":
            reply = await self.ctl.CreateVolume(self.create_request(v), timeout=t)
            v.id = reply.volume.volume_id
        elif step == "publish":
            await self.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=v.id, node_id=self.node, volume_capability=CAP), timeout=t)
        elif step == "stage":
            await self.nodes.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=v.id, staging_target_path=str(self.staging(v)), volume_capability=CAP), timeout=t)
        elif step == "mount":
            await self.nodes.NodePublishVolume(csi.NodePublishVolumeRequest(volume_id=v.id, staging_target_path=str(self.staging(v)), target_path=str(self.target(v)), volume_capability=CAP), timeout=t)
        elif step == "unmount":
            await self.nodes.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=v.id, target_path=str(self.target(v))), timeout=t)
        elif step == "unstage":
            await self.nodes.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=v.id, staging_target_path=str(self.staging(v))), timeout=t)
        elif step == "unpublish":
            await self.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=v.id, node_id=self.node), timeout=t)
        elif step == "delete":
            await self.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=v.id), timeout=t)

    async def until_done(self, v: Vol, step: str, first: asyncio.Task[None] | None, deadline: float) -> None:
        """The call's own outcome, or retries until it succeeds (as a CO does)."""
        error: grpc.aio.AioRpcError | None = None
        if first is not None:
            try:
                await first
                return
            except grpc.aio.AioRpcError as exc:
                error = exc
        while time.monotonic() < deadline:
            if error is not None and error.code() not in RETRY and error.code() != grpc.StatusCode.INTERNAL:
                v.problems.append(f"{step}: {error.code().name}: {error.details()}")
                return
            try:
                await self.call(v, step)
                return
            except grpc.aio.AioRpcError as exc:
                error = exc
                await asyncio.sleep(0.2)
        v.problems.append(f"{step}: did not succeed within the deadline (last: {error.code().name if error else '-'})")

    async def check(self, v: Vol, step: str) -> None:
        """The volume is exactly where the step leaves it."""
        done = STEPS.index(step)
        exists = "create" in STEPS[: done + 1] and step != "delete"
        listed = await self.listed()
        if listed is None:
            v.problems.append(f"after {step}: ListVolumes kept failing")
            return
        if exists != (v.id in listed):
            v.problems.append(f"after {step}: ListVolumes {'lacks' if exists else 'still has'} the volume")
        images = self.images(v.id)
        if exists != (len(images) == 1) or len(images) > 1:
            v.problems.append(f"after {step}: {len(images)} image file(s)")
        staged = STEPS.index("stage") <= done < STEPS.index("unstage")
        mounted = STEPS.index("mount") <= done < STEPS.index("unmount")
        if (n := self.mounts_at(self.staging(v))) != (1 if staged else 0):
            v.problems.append(f"after {step}: staging path mounted {n} times")
        if (n := self.mounts_at(self.target(v))) != (1 if mounted else 0):
            v.problems.append(f"after {step}: target path mounted {n} times")
        loops = loops_of(v.id)
        if len(loops) != (1 if staged else 0):
            v.problems.append(f"after {step}: {len(loops)} loop device(s) on the image")

    async def listed(self) -> set[str] | None:
        """Every volume id ListVolumes reports (retried while the system is still coming back)."""
        for _ in range(50):
            try:
                reply = await self.ctl.ListVolumes(csi.ListVolumesRequest(), timeout=20)
                return {e.volume.volume_id for e in reply.entries}
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY:
                    return None
                await asyncio.sleep(0.2)
        return None

    async def teardown(self, v: Vol) -> None:
        """From any state back to nothing: every undo is idempotent."""
        if not v.id:
            try:
                reply = await self.ctl.CreateVolume(self.create_request(v), timeout=20)
                v.id = reply.volume.volume_id
            except grpc.aio.AioRpcError as exc:
                v.problems.append(f"teardown: {exc.code().name}")
                return
        for step in ("unmount", "unstage", "unpublish", "delete"):
            await self.until_done(v, step, None, time.monotonic() + 60)

    def leaks(self) -> list[str]:
        found = [f"image left: {name}" for name in self.leftover_images()]
        found += [f"loop device left: {line}" for line in leaked_loops(self.stack)]
        found += [f"mount left: {point}" for point in self.leftover_mounts()]
        return found


async def trial(lab: Lab, step: str, victim: str | None, inflight: int, window: float, cell: Cell) -> float:
    """One trial; returns how long the step's calls took (for calibration without a victim)."""
    vols = [Vol(f"chaos-{uuid.uuid4().hex[:10]}") for _ in range(inflight)]
    for before in STEPS[: STEPS.index(step)]:
        await asyncio.gather(*(lab.until_done(v, before, None, time.monotonic() + 60) for v in vols))
    t0 = time.monotonic()
    tasks = [asyncio.create_task(lab.call(v, step)) for v in vols]
    if victim is not None:
        await asyncio.sleep(random.uniform(0.05 * window, 0.75 * window))  # mostly while calls run
        cell.hit += sum(1 for t in tasks if not t.done())
        killed = time.monotonic()
        await asyncio.to_thread(lab.kill, victim)
        await asyncio.sleep(random.uniform(0, 0.3))
        # Not asyncio.to_thread: the children's parent-death signal is bound to the thread
        # that started them, and the loop's pool threads end with the loop.
        await asyncio.get_running_loop().run_in_executor(SPAWNER, lab.restart, victim)
    deadline = time.monotonic() + 90
    await asyncio.gather(*(lab.until_done(v, step, t, deadline) for v, t in zip(vols, tasks, strict=True)))
    took = time.monotonic() - t0
    if victim is not None:
        cell.recovery.append(time.monotonic() - killed)
    for v in vols:
        if not v.problems:
            await lab.check(v, step)
    for v in vols:
        cell.volumes += 1
        cell.converged += not v.problems
        cell.problems += [f"{v.name}: {p}" for p in v.problems]
        v.problems.clear()
    await asyncio.gather(*(lab.teardown(v) for v in vols))
    for v in vols:
        cell.problems += [f"{v.name}: teardown: {p}" for p in v.problems]
    leaked = lab.leaks()
    cell.problems += leaked
    return took


async def run(stack: Stack, work: Path, trials: int, inflight: int, steps: tuple[str, ...],
              lab_of: Callable[[Stack, Path], Lab] = Lab, victims_of: Callable[[str], tuple[str, ...]] = victims) -> dict[tuple[str, str], Cell]:
    lab = lab_of(stack, work)
    cells: dict[tuple[str, str], Cell] = {}
    for step in steps:
        window = max(await trial(lab, step, None, inflight, 0, Cell()), 0.05)
        for victim in victims_of(step):
            cell = cells.setdefault((step, victim), Cell())
            for _ in range(trials):
                await trial(lab, step, victim, inflight, window, cell)
            print(f"  {step:9s} × {victim:14s} {cell.text()}" + (f"  PROBLEMS: {cell.problems[:3]}" if cell.problems else ""), flush=True)
    await lab.close()
    return cells


def table(cells: dict[tuple[str, str], Cell], steps: tuple[str, ...], victims_of: Callable[[str], tuple[str, ...]]) -> str:
    lines = [f"{'step':10s} {'owner':36s} {'apigw':24s} {'nats-server':24s} {'redis-server':24s}"]
    for step in steps:
        row = [cells.get((step, v)) for v in victims_of(step)]
        if not any(row):
            continue
        text = [c.text() if c else "-" for c in row]
        lines.append(f"{step:10s} {victims_of(step)[0] + ': ' + text[0]:36s} {text[1]:24s} {text[2]:24s} {text[3]:24s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2, help="kills per step × victim")
    parser.add_argument("--inflight", type=int, default=8, help="volumes per CSI trial")
    parser.add_argument("--claims", type=int, default=3, help="claims (each with a pod) per control-plane trial")
    parser.add_argument("--suite", choices=("csi", "cp", "hosts", "all"), default="all",
                        help="CSI calls, the control plane's loops, CSI calls on HOSTS=3 with a whole host as the victim (tests/chaos/hosts.py; root), or all three")
    parser.add_argument("--steps", nargs="+", choices=sorted(set(STEPS + controlplane.STEPS)), help="only these steps (of the chosen suites)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    csi_steps = tuple(s for s in STEPS if args.suite in ("csi", "all") and (not args.steps or s in args.steps))
    cp_steps = tuple(s for s in controlplane.STEPS if args.suite in ("cp", "all") and (not args.steps or s in args.steps))
    host_steps = tuple(s for s in STEPS if args.suite in ("hosts", "all") and (not args.steps or s in args.steps))
    cells: dict[tuple[str, str], Cell] = {}
    cp_cells: dict[tuple[str, str], Cell] = {}
    host_cells: dict[tuple[str, str], Cell] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="volplane-chaos-") as tmp:
        stack = Stack(Path(tmp) / "run", env={"VOLPLANE_LOG_LEVEL": "WARNING"})
        if csi_steps or cp_steps:
            stack.start()
        try:
            if csi_steps:
                print(f"chaos, CSI: {args.trials} kill(s) × {args.inflight} volume(s) in flight per step × victim (kill -9, then restart)", flush=True)
                cells = asyncio.run(run(stack, Path(tmp) / "work", args.trials, args.inflight, csi_steps))
            if cp_steps:
                print(f"chaos, control plane: {args.trials} kill(s) × {args.claims} claim(s) per step × victim", flush=True)
                cp_cells = controlplane.run(stack, args.trials, args.claims, cp_steps)
        finally:
            stack.stop()
            everything = list(cells.values()) + list(cp_cells.values())
            if (csi_steps or cp_steps) and (not everything or any(c.problems for c in everything)):  # a failed or crashed run: keep its logs
                kept = Path(tempfile.gettempdir()) / f"volplane-chaos-logs-{int(time.time())}"
                shutil.copytree(stack.run_dir / "logs", kept)
                print(f"service logs kept in {kept}")
        if host_steps:
            host_cells = _run_hosts(Path(tmp), args.trials, args.inflight, host_steps, args.suite == "hosts")
    if cells:
        print("\nCSI calls (retried by the caller): volumes converged / volumes (calls in flight at the kill, median s from kill to converged)")
        print(table(cells, STEPS, victims))
    if cp_cells:
        print("\nControl plane (retried by the loops): claims converged / claims (claims not yet past the step at the kill, median s from kill to converged)")
        print(table(cp_cells, controlplane.STEPS, controlplane.victims))
    if host_cells:
        from tests.chaos import hosts as chaos_hosts  # it builds on this module's Lab

        print(f"\nCSI calls on HOSTS=3, a whole host the victim (tests/chaos/hosts.py): volumes of host-{chaos_hosts.HOST} converged / volumes "
              "(calls in flight at the strike, median s from strike to converged)")
        print(f"{'step':10s} " + " ".join(f"{v:28s}" for v in chaos_hosts.VICTIMS))
        for step in host_steps:
            print(f"{step:10s} " + " ".join(f"{host_cells[step, v].text() if (step, v) in host_cells else '-':28s}" for v in chaos_hosts.VICTIMS))
    # The suites share step names: keys carry their suite.
    both = ({("csi", *k): c for k, c in cells.items()} | {("control plane", *k): c for k, c in cp_cells.items()}
            | {("hosts", *k): c for k, c in host_cells.items()})
    kills = args.trials * len(both)
    print(f"\n{kills} kills, {sum(c.volumes for c in both.values())} volumes checked, "
          f"{sum(len(c.problems) for c in both.values())} problems, {time.monotonic() - t0:.0f} s")
    bad = {k: c for k, c in both.items() if c.problems or c.converged != c.volumes}
    for (suite, step, victim), cell in bad.items():
        print(f"{suite}: {step} × {victim}: " + "; ".join(cell.problems[:10]))
    return 1 if bad else 0


def _run_hosts(tmp: Path, trials: int, inflight: int, steps: tuple[str, ...], asked: bool) -> dict[tuple[str, str], Cell]:
    """The CSI suite on a ``HostsStack`` of three hosts, a whole host the victim. Without
    root (or iproute2/util-linux), skipped with the reason — an error when asked for alone."""
    from tests.chaos import hosts as chaos_hosts  # it builds on this module's Lab

    try:
        require_hosts_support()
    except HostsError as exc:
        if asked:
            raise
        print(f"chaos, hosts: skipped ({exc})", flush=True)
        return {}
    stack = HostsStack(tmp / "hosts-run", env={"VOLPLANE_LOG_LEVEL": "WARNING"}, hosts=3, instance=None)
    stack.start()
    cells: dict[tuple[str, str], Cell] = {}
    try:
        print(f"chaos, hosts: {trials} strike(s) × {inflight} volume(s) of host-{chaos_hosts.HOST} in flight per step × victim", flush=True)
        cells = asyncio.run(run(stack, tmp / "hosts-work", trials, inflight, steps, chaos_hosts.HostsLab, chaos_hosts.victims))  # type: ignore[arg-type]  # HostsLab takes a HostsStack, a Stack
    finally:
        stack.stop()
        if not cells or any(c.problems for c in cells.values()):
            kept = Path(tempfile.gettempdir()) / f"volplane-chaos-hosts-logs-{int(time.time())}"
            shutil.copytree(stack.run_dir / "logs", kept)
            print(f"service logs kept in {kept}")
    return cells


if __name__ == "__main__":
    sys.exit(main())
