"""``make bench-restart``: how long each service takes to be ready, on an empty log and
on a log with a long history.

Starts its own one-node stack and times each service's restart (SIGTERM, start, until its
health check answers SERVING), three times each; then stops the services, appends
``--events`` object events straight to the log (every one a valid change of one of
``--objects`` StorageClasses, so each object has a long history), starts the services
again (the first start catches the read models up with the new events: that is work on
new events, not a restart's cost) and times the restarts again. Prints the medians and
their ratio per service.

    make bench-restart                                   # 1,000,000 events
    make bench-restart BENCH_ARGS="--events 100000"
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from devstack.launcher import Stack
from volplane import codec, subjects
from volplane.clients import connect_once
from volplane.resources.events import ObjectChanged, ObjectCreated
from volplane.resources.kinds import Ref, resolve


def _class(name: str, generation: int) -> dict[str, object]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "provisioner": "kubernetes.io/no-provisioner",
            "metadata": {"name": name, "annotations": {"bench.volplane.io/generation": str(generation)}}}


async def fill(stack: Stack, events: int, objects: int, window: int = 2000) -> float:
    """Append ``events`` object events (pipelined: ``window`` acks outstanding); returns events/s."""
    nc = await connect_once(stack.env["NATS_URL"], tls=stack.client_tls())
    js = nc.jetstream()
    kind = resolve("sc")
    names = [f"history-{i}" for i in range(objects)]
    started = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    try:
        for n in range(events):
            name = names[n % objects]
            generation = n // objects
            obj = _class(name, generation)
            event = (ObjectCreated(object=obj, manager="bench") if generation == 0
                     else ObjectChanged(object=obj, patch={"metadata": {"annotations": {"bench.volplane.io/generation": str(generation)}}}, manager="bench"))
            subject = Ref(kind, "", name).subject
            pending.append(asyncio.ensure_future(js.publish(subject, codec.encode(event), headers={subjects.EVENT_TYPE: event.type}, stream=subjects.STREAM)))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await nc.close()
    return events / (time.monotonic() - started)


def time_restarts(stack: Stack, repeat: int) -> dict[str, float]:
    medians = {}
    for name in stack.services:
        runs = []
        for _ in range(repeat):
            stack.stop_service(name)
            started = time.monotonic()
            stack.start_service(name)
            stack.wait_healthy((name,), timeout=600)
            runs.append(time.monotonic() - started)
        medians[name] = statistics.median(runs)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volplane-bench-") as tmp:
        stack = Stack(Path(tmp) / "run", env={"VOLPLANE_LOG_LEVEL": "WARNING"})
        stack.start(timeout=120)
        try:
            empty = time_restarts(stack, args.repeat)
            for name in reversed(stack.services):
                stack.stop_service(name)
            rate = asyncio.run(fill(stack, args.events, args.objects))
            print(f"appended {args.events:,} object events on {args.objects:,} objects at {rate:,.0f} events/s")
            started = time.monotonic()
            for name in stack.services:
                stack.start_service(name)
            stack.wait_healthy(stack.services, timeout=1800)
            print(f"first start after the append (read models catch up): {time.monotonic() - started:.1f}s")
            full = time_restarts(stack, args.repeat)
        except RuntimeError:
            for log in sorted((stack.run_dir / "logs").glob("*.log")):
                print(f"--- {log.name}", *log.read_text().splitlines()[-5:], sep="\n")
            raise
        finally:
            stack.stop()
    print(f"restart until healthy, median of {args.repeat}:")
    print(f"  {'service':<16} {'empty log':>10} {f'{args.events:,} events':>16} {'ratio':>7}")
    for name in empty:
        print(f"  {name:<16} {empty[name]:>9.2f}s {full[name]:>15.2f}s {full[name] / empty[name]:>6.2f}×")


if __name__ == "__main__":
    main()
