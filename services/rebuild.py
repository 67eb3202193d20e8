"""``python -m services.rebuild`` (``make rebuild``): drop every projection in Redis and
replay the event log into them.

    python -m services.rebuild            # rebuild
    python -m services.rebuild --check    # rebuild and say whether the result equals what was there

It runs beside ``make run``: it finds that stack's servers through ``run/stack.json``
(``$VOLPLANE_RUN_DIR``; ``volplane.discovery``) unless ``NATS_URL`` / ``REDIS_URL`` name
servers of your own. Without a running stack it says so in one line and exits 2 (the
log and the read models live in the stack's servers: start ``make run`` first).

The running services need no restart: the rebuilt projections hold what theirs did (the
log decides every byte). The keys go in one step, and a service's projection runner that
then finds Redis behind what it wrote — it appended an event meanwhile — replays from
what Redis holds instead of writing on top (``volplane.projection``), so a rebuild
while the services write ends as a replay of the log too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import nats.js.errors

from services.attacher.adapters.projection import AttachmentsProjection
from services.nodeagent.adapters.projection import NodeProjection
from services.provisioner.adapters.groups import GroupSnapshotsProjection
from services.provisioner.adapters.projection import SnapshotsProjection, VolumesProjection
from volplane import discovery, subjects
from volplane.clients import connect_nats, redact
from volplane.config import Config
from volplane.errors import Unavailable
from volplane.eventstore import EventStore
from volplane.nodes import NodesProjection, registered
from volplane.projection import Projection, ReadModels
from volplane.resources.projection import ObjectsProjection


async def all_projections(store: EventStore) -> list[Projection[Any]]:
    """Every projection the log feeds: volumes, and one per registered node (a node token
    that only poison names has no read model: ``volplane.nodes.registered``)."""
    nodes = await registered(store)
    return [NodesProjection(), VolumesProjection(), SnapshotsProjection(), GroupSnapshotsProjection(), AttachmentsProjection(), ObjectsProjection(), *(NodeProjection(n) for n in nodes)]


async def main_async(check: bool) -> int:
    cfg = Config.from_env_or_exit("volplane-rebuild")
    nc = await connect_nats(cfg, name="volplane-rebuild")
    try:
        models = await ReadModels.open(cfg)
    except BaseException:
        await nc.close()
        raise
    store = EventStore(nc.jetstream(timeout=10))
    try:
        try:
            before = await models.dump() if check else None
            projections = await all_projections(store)
            deleted = await models.rebuild(store, projections)
        except nats.js.errors.NotFoundError as exc:
            raise Unavailable(f"no event log (stream {subjects.STREAM}) on NATS at {redact(cfg.nats_url)}: nothing to rebuild from") from exc
        print(f"dropped {deleted} keys, replayed {await store.last_seq()} events into {len(projections)} projections")
        skipped = await models.quarantined()
        if skipped:
            print(f"{len(skipped)} events quarantined (skipped by their readers; `volctl get quarantinedevents` lists them):")
            for q in skipped:
                print(f"  {q.reader} #{q.seq} {q.subject} ({q.type or '-'}): {q.reason}")
        else:
            print("no events quarantined")
        if before is not None:
            after = await models.dump()
            if after != before:
                diff = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
                print(f"rebuilt projections differ from before in {len(diff)} keys, e.g. {sorted(diff)[:5]}", file=sys.stderr)
                return 1
            print(f"rebuilt projections are identical to before ({len(after)} keys)")
        return 0
    finally:
        await nc.close()
        await models.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild Redis projections from the event log (beside a running `make run`).")
    parser.add_argument("--check", action="store_true", help="compare the rebuilt projections with the ones before")
    check = parser.parse_args().check
    # A client's warnings (one per reconnect attempt) would bury the one line that says why.
    logging.basicConfig(level=logging.ERROR, format="rebuild: %(message)s")
    try:
        # The running stack's servers, unless NATS_URL / REDIS_URL name others.
        os.environ.update(discovery.with_running_stack(os.environ))
        sys.exit(asyncio.run(main_async(check)))
    except (discovery.NoStack, Unavailable) as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
