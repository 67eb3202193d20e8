"""``python -m services.rebuild`` (``make rebuild``): drop every projection in Redis and
replay the event log into them.

    python -m services.rebuild            # rebuild
    python -m services.rebuild --check    # rebuild and say whether the result equals what was there

Run it with the services stopped, or restart them afterwards: a running service keeps
its own position and cache in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from services.attacher.adapters.projection import AttachmentsProjection
from services.nodeagent.adapters.projection import NodeProjection
from services.provisioner.adapters.projection import SnapshotsProjection, VolumesProjection
from volplane.clients import connect_nats
from volplane.config import Config
from volplane.eventstore import EventStore
from volplane.nodes import NodesProjection
from volplane.projection import Projection, ReadModels
from volplane.resources.projection import ObjectsProjection


async def all_projections(store: EventStore) -> list[Projection[Any]]:
    """Every projection the log feeds: volumes, and one per node that has events."""
    nodes = sorted({s.split(".")[3].replace("~", ".") for s in await store.subjects("vp.ev.node.>")})
    return [NodesProjection(), VolumesProjection(), SnapshotsProjection(), AttachmentsProjection(), ObjectsProjection(), *(NodeProjection(n) for n in nodes)]


async def main_async(check: bool) -> int:
    cfg = Config.from_env()
    nc = await connect_nats(cfg, name="volplane-rebuild")
    models = await ReadModels.open(cfg)
    store = EventStore(nc.jetstream(timeout=10))
    try:
        before = await models.dump() if check else None
        projections = await all_projections(store)
        deleted = await models.rebuild(store, projections)
        print(f"dropped {deleted} keys, replayed {await store.last_seq()} events into {len(projections)} projections")
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
    parser = argparse.ArgumentParser(description="Rebuild Redis projections from the event log.")
    parser.add_argument("--check", action="store_true", help="compare the rebuilt projections with the ones before")
    sys.exit(asyncio.run(main_async(parser.parse_args().check)))


if __name__ == "__main__":
    main()
