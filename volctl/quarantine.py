"""``volctl get quarantinedevents``: the events the read models skipped (volplane.quarantine).

    volctl get quarantinedevents            # SEQ  READER  SUBJECT  TYPE  REASON
    volctl get qe -o json

They are not objects of a kind: the resource API lists them read-only, as records of
``kind: QuarantinedEvent``, so only this listing (table, json, yaml, name) is offered.
"""

from __future__ import annotations

from typing import Any

from volctl.client import VolctlError
from volctl.printing import Format, to_json, to_yaml

__all__ = ["SPELLINGS", "render"]

# The server's spellings (services/apigw/resources.py QUARANTINED_KINDS).
SPELLINGS = frozenset({"quarantinedevents", "quarantinedevent", "quarantined", "qe"})
_COLUMNS = ("SEQ", "READER", "SUBJECT", "TYPE", "REASON")


def render(items: list[dict[str, Any]], fmt: Format) -> str:
    """What ``get`` prints for the records ("" for none in a table: the caller says so)."""
    if fmt.name in ("table", "wide"):
        if not items:
            return ""
        rows = [[str(i.get("seq", "")), str(i.get("reader", "")), str(i.get("subject", "")), str(i.get("type") or "-"), str(i.get("reason", ""))] for i in items]
        if not fmt.no_headers:
            rows.insert(0, list(_COLUMNS))
        widths = [max(len(r[c]) for r in rows) for c in range(len(_COLUMNS) - 1)]
        return "\n".join("   ".join([*(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip() for r in rows)
    listing = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
    if fmt.name == "json":
        return to_json(listing)
    if fmt.name == "yaml":
        return to_yaml(listing)
    if fmt.name == "name":
        return "\n".join(f"quarantinedevent/{i['metadata']['name']}" for i in items)
    raise VolctlError(f"error: -o {fmt.name} is not offered for quarantined events (table, wide, json, yaml or name)")
