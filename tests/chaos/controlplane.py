"""Chaos through the control plane: claim → bind → attach → mount → teardown → detach →
reclaim, each driven by the loops (PV controller, external provisioner, AD controller,
external attacher, volume manager) rather than by a CSI caller.

A trial brings ``inflight`` claims to the state before the step, makes the change that
starts it (apply the claims; apply the pods; delete the pods; delete the claims), kills
the victim with SIGKILL at a random moment inside the step's measured window, restarts
it and waits until every claim reaches the state the change asks for. The loops are the
callers that retry here, so convergence is theirs to reach. Each state is checked on the
objects (claim, PV, VolumeAttachment, pod condition) and on the host (image, loop
device, global mount, pod mount); after the trial everything is deleted and nothing
may be left: no image, loop device or mount, no PV or VolumeAttachment.

The victims of a step are its owner (provisioner for bind and reclaim, attacher for
attach and detach, nodeagent for mount and teardown), apigw (the CSI server the
sidecar roles call, and the resource API), nats-server and redis-server.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from devstack.launcher import Stack
from services.nodeagent.controllers.kubelet_paths import KubeletDir
from tests.chaos.common import RETRY, Cell, kill, leaked_loops, loops_of, restart
from tests.conftest import mounts_at
from tests.controlplane.conftest import Api, phase, ready
from volplane.resources.names import va_name

STEPS = ("bind", "attach", "mount", "teardown", "detach", "reclaim")
OWNER = {"bind": "provisioner", "attach": "attacher", "mount": "nodeagent", "teardown": "nodeagent", "detach": "attacher", "reclaim": "provisioner"}
# The change that starts each step: attach and mount follow one change (a pod), as do
# teardown and detach (its deletion).
CHANGE = {"bind": "claim", "attach": "pod", "mount": "pod", "teardown": "unpod", "detach": "unpod", "reclaim": "unclaim"}
CHANGES = ("claim", "pod", "unpod", "unclaim")
DRIVER = "csi.volplane.io"
CLASS = "chaos"
T = TypeVar("T")
Obj = dict[str, Any]


def victims(step: str) -> tuple[str, ...]:
    return (OWNER[step], "apigw", "nats-server", "redis-server")


@dataclass
class Claim:
    name: str
    pod_uid: str = ""
    pv: str = ""
    handle: str = ""
    problems: list[str] = field(default_factory=list)


class ControlLab:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.node = stack.node_id
        self.api = Api(stack.api_endpoint)
        self.kubelet = KubeletDir(stack.run_dir / "kubelet" / self.node)
        self.call(self.api.apply, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": CLASS},
                                   "provisioner": DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"})

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """One resource API call, retried while apigw, NATS or Redis is coming back."""
        deadline = time.monotonic() + 90
        while True:
            try:
                return fn(*args)
            except grpc.RpcError as exc:
                if exc.code() not in RETRY or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- changes ------------------------------------------------------------------

    def change(self, c: Claim, what: str) -> None:
        if what == "claim":
            self.call(self.api.apply, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": c.name},
                                       "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}, "storageClassName": CLASS}})
        elif what == "pod":
            pod = self.call(self.api.apply, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": c.name},
                                             "spec": {"nodeName": self.node, "containers": [{"name": "app", "image": "busybox"}],
                                                      "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": c.name}}]}})[0]
            c.pod_uid = pod["metadata"]["uid"]
        elif what == "unpod":
            self.call(self.api.delete, "pod", c.name)
        elif what == "unclaim":
            self.call(self.api.delete, "pvc", c.name)

    # -- where a claim is ---------------------------------------------------------

    def learn(self, c: Claim) -> None:
        """The PV and volume handle, once the claim is bound."""
        if c.handle:
            return
        pvc = self.call(self.api.get, "pvc", c.name)
        name = ((pvc or {}).get("spec") or {}).get("volumeName")
        pv = self.call(self.api.get, "pv", name) if name else None
        if pv is not None and phase(pvc) == "Bound":
            c.pv, c.handle = name, pv["spec"]["csi"]["volumeHandle"]

    def target(self, c: Claim) -> Path | None:
        return self.kubelet.pod_volume(c.pod_uid, "kubernetes.io/csi", c.pv, block=False) if c.pod_uid and c.pv else None

    def pod_mounts(self, c: Claim) -> int:
        target = self.target(c)
        return mounts_at(target) if target is not None else 0

    def reached(self, c: Claim, step: str) -> bool:
        """Whether this claim is past ``step`` (the step's own effect, nothing more)."""
        self.learn(c)
        if step == "bind":
            return bool(c.handle)
        if step == "attach":
            va = self.call(self.api.get, "va", va_name(c.pv, DRIVER, self.node))
            return bool(va and (va.get("status") or {}).get("attached"))
        if step == "mount":
            return ready(self.call(self.api.get, "pod", c.name))
        if step == "teardown":
            return self.pod_mounts(c) == 0
        if step == "detach":
            return self.call(self.api.get, "va", va_name(c.pv, DRIVER, self.node)) is None
        return (not c.pv or self.call(self.api.get, "pv", c.pv) is None) and not self.images(c)

    def images(self, c: Claim) -> list[Any]:
        return [p for pool in ("shared", self.node) for p in self.stack.pool_dir(pool).glob(f"{c.handle}.img")] if c.handle else []

    def problems(self, c: Claim, after: str) -> list[str]:
        """What differs from the state ``after`` (a change) asks for; empty when converged."""
        out: list[str] = []
        self.learn(c)
        pvc = self.call(self.api.get, "pvc", c.name)
        pvs = [p for p in self.call(self.api.list, "pv") if (p["spec"].get("claimRef") or {}).get("name") == c.name]
        va = self.call(self.api.get, "va", va_name(c.pv, DRIVER, self.node)) if c.pv else None
        pod = self.call(self.api.get, "pod", c.name)
        claimed = after in ("claim", "pod", "unpod")
        in_pod = after == "pod"
        if claimed and (phase(pvc) != "Bound" or len(pvs) != 1 or phase(pvs[0]) != "Bound"):
            out.append(f"claim {phase(pvc)}, {len(pvs)} PV(s) {[phase(p) for p in pvs]}, expected one Bound pair")
        if not claimed and (pvc is not None or pvs):
            out.append(f"claim {'still there' if pvc else 'gone'}, {len(pvs)} PV(s) left")
        images, pod_mounts, loops = len(self.images(c)), self.pod_mounts(c), len(loops_of(c.handle))
        if images != (1 if claimed else 0):
            out.append(f"{images} image(s)")
        if in_pod != bool(va and (va.get("status") or {}).get("attached")) or (not in_pod and va is not None):
            out.append(f"VolumeAttachment {va and va.get('status')}")
        if in_pod != ready(pod):
            out.append(f"pod {'not ready' if in_pod else 'still there'}")
        staged = mounts_at(self.kubelet.global_mount(DRIVER, c.handle)) if c.handle else 0
        if staged != (1 if in_pod else 0):
            out.append(f"global mount ×{staged}")
        if pod_mounts != (1 if in_pod else 0):
            out.append(f"pod mount ×{pod_mounts}")
        if loops != (1 if in_pod else 0):
            out.append(f"{loops} loop device(s)")
        return out

    def converge(self, claims: list[Claim], after: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {c.name: c for c in claims}
        while pending:
            found = {name: self.problems(c, after) for name, c in pending.items()}
            pending = {name: pending[name] for name, problems in found.items() if problems}
            if pending and time.monotonic() > deadline:
                for name, c in pending.items():
                    c.problems += [f"after {after}: {p}" for p in found[name]]
                return
            time.sleep(0.2)

    def clean(self, claims: list[Claim], reached: str) -> list[str]:
        """Delete everything the trial made (pods first, as a user would) and say what
        was left behind."""
        for change in CHANGES[max(CHANGES.index(reached) + 1, CHANGES.index("unpod")) :]:
            for c in claims:
                self.change(c, change)
            self.converge(claims, change, 120)
        left = [f"{c.name}: teardown: {p}" for c in claims for p in c.problems]
        left += [f"PV left: {p['metadata']['name']}" for p in self.call(self.api.list, "pv") if p["spec"].get("storageClassName") == CLASS]
        left += [f"VolumeAttachment left: {v['metadata']['name']}" for v in self.call(self.api.list, "va")]
        left += [f"image left: {p.name}" for pool in ("shared", self.node) for p in self.stack.pool_dir(pool).glob("*.img")]
        left += [f"loop device left: {line}" for line in leaked_loops(self.stack)]
        with open("/proc/self/mountinfo") as f:
            left += [f"mount left: {line.split(' ')[4]}" for line in f if str(self.kubelet.root) in line.split(" ")[4]]
        return left


def trial(lab: ControlLab, step: str, victim: str | None, inflight: int, window: tuple[float, float], cell: Cell) -> dict[str, float]:
    """One trial. Without a victim it returns, for calibration, when every claim was
    past each step of the change (seconds after the change)."""
    claims = [Claim(f"chaos-{uuid.uuid4().hex[:10]}") for _ in range(inflight)]
    change = CHANGE[step]
    for before in CHANGES[: CHANGES.index(change)]:
        for c in claims:
            lab.change(c, before)
        lab.converge(claims, before, 120)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    for c in claims:
        lab.change(c, change)
    if victim is not None:
        time.sleep(max(0.0, t0 + random.uniform(*window) - time.monotonic()))
        cell.hit += sum(1 for c in claims if not lab.reached(c, step))
        killed = time.monotonic()
        kill(lab.stack, victim)
        time.sleep(random.uniform(0, 0.3))
        restart(lab.stack, victim)
    else:
        own = [s for s in STEPS if CHANGE[s] == change]
        while len(times) < len(own) and time.monotonic() - t0 < 120:
            for s in own:
                if s not in times and all(lab.reached(c, s) for c in claims):
                    times[s] = time.monotonic() - t0
            time.sleep(0.05)
    lab.converge(claims, change, 150)
    if victim is not None:
        cell.recovery.append(time.monotonic() - killed)
    for c in claims:
        cell.volumes += 1
        cell.converged += not c.problems
        cell.problems += [f"{c.name}: {p}" for p in c.problems]
        c.problems.clear()
    cell.problems += lab.clean(claims, change)
    return times


def run(stack: Stack, trials: int, inflight: int, steps: tuple[str, ...]) -> dict[tuple[str, str], Cell]:
    lab = ControlLab(stack)
    cells: dict[tuple[str, str], Cell] = {}
    try:
        for change in CHANGES:
            own = [s for s in steps if CHANGE[s] == change]
            if not own:
                continue
            times = trial(lab, own[0], None, inflight, (0, 0), Cell())
            for step in own:
                # From the change to the moment the last claim was past the step: a kill
                # before the step began leaves it to a restarted process, one inside it
                # interrupts it.
                end = max(times.get(step, 1.0), 0.05)
                for victim in victims(step):
                    cell = cells.setdefault((step, victim), Cell())
                    for _ in range(trials):
                        trial(lab, step, victim, inflight, (0.0, 0.75 * end), cell)
                    print(f"  {step:9s} × {victim:12s} {cell.text()}"
                          + (f"  PROBLEMS: {cell.problems[:3]}" if cell.problems else ""), flush=True)
    finally:
        lab.api.close()
    return cells
