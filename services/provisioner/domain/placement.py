"""Where a new volume goes: pure pool selection from topology requirements and parameters.

    pool = choose_pool(candidates, size, parameters={"pool": "local"}, requisite=(...), preferred=(...))

A ``local`` pool belongs to one node and pins its volumes to that node's topology
segment; the ``shared`` pool is reachable from every node. Without topology
requirements a volume goes to the shared pool (any node can use it); with them, to the
local pool of the first preferred node that is requisite and has room — as the
external-provisioner asks for WaitForFirstConsumer claims. ``parameters["pool"]`` may
force ``local``, ``shared`` or a pool by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from volplane.errors import InvalidArgument, ResourceExhausted
from volplane.events import Frozen
from volplane.nodes import TOPOLOGY_KEY
from volplane.volumes import Topology


class PoolView(Frozen):
    name: str
    kind: Literal["local", "shared"]
    node: str = ""  # the owning node of a local pool
    free: int

    @property
    def topology(self) -> tuple[Topology, ...]:
        """The volume's accessible_topology: one node, or () for "every node"."""
        return ({TOPOLOGY_KEY: self.node},) if self.kind == "local" else ()


def _segment_node(segment: Topology) -> str | None:
    if set(segment) - {TOPOLOGY_KEY}:
        return None  # A key we do not know: no pool of ours is in that segment.
    return segment.get(TOPOLOGY_KEY)


def candidates(
    pools: Sequence[PoolView],
    parameters: dict[str, str],
    requisite: Sequence[Topology] = (),
    preferred: Sequence[Topology] = (),
) -> list[PoolView]:
    """The pools a volume with these requirements may go to, best first (room not checked)."""
    wanted = parameters.get("pool", "")
    if wanted and wanted not in ("local", "shared") and not any(p.name == wanted for p in pools):
        raise InvalidArgument(f"parameters.pool: no pool named {wanted!r}")
    kind = wanted if wanted in ("local", "shared") else ("local" if requisite or preferred else "shared")
    if wanted not in ("", "local", "shared"):
        chosen = [p for p in pools if p.name == wanted]
    elif kind == "shared" and any(p.kind == "shared" for p in pools):
        chosen = [p for p in pools if p.kind == "shared"]
    else:
        chosen = sorted((p for p in pools if p.kind == "local"), key=lambda p: -p.free)
    allowed = [n for s in requisite if (n := _segment_node(s)) is not None]
    if requisite:
        chosen = [p for p in chosen if p.kind == "shared" or p.node in allowed]
    order = [n for s in preferred if (n := _segment_node(s)) is not None]
    return sorted(chosen, key=lambda p: order.index(p.node) if p.node in order else len(order))


def choose_pool(
    pools: Sequence[PoolView],
    size: int,
    parameters: dict[str, str],
    requisite: Sequence[Topology] = (),
    preferred: Sequence[Topology] = (),
) -> PoolView:
    options = candidates(pools, parameters, requisite, preferred)
    for pool in options:
        if pool.free >= size:
            return pool
    where = "the requested topology" if requisite or preferred else "any pool"
    best = max((p.free for p in options), default=0)
    raise ResourceExhausted(f"no pool in {where} has {size} bytes free (largest free: {best})")
