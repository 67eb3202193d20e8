"""``volctl get``: which objects, fetched how, and printed in which of kubectl's formats.

    got = fetch(client, parse_get(["pv,pvc"]), namespace="default")
    print(render(got, output="", with_kind=True))     # a table per kind, blank line between

Objects of several kinds come out kind by kind, in the order asked; a name that is not
there is reported after them (kubectl's NotFound line) and the others still print.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from volctl.client import Client, ServerError, VolctlError
from volctl.columns import rows
from volctl.refs import kind_named, qualified, targets
from volctl.tables import table
from volplane.resources.kinds import Kind

__all__ = ["OUTPUTS", "Fetched", "Query", "fetch", "nothing_found", "parse_get", "render", "to_json", "to_yaml"]

Obj = dict[str, Any]
OUTPUTS = ("", "wide", "yaml", "json", "name")


@dataclass
class Query:
    """One kind and the names asked for (none: all of them)."""

    spelling: str
    kind: Kind
    names: list[str] = field(default_factory=list)


@dataclass
class Fetched:
    kinds: list[tuple[Kind, list[Obj]]]
    errors: list[str]  # printed after the objects, as kubectl does
    single: bool  # exactly one object was named: -o yaml/json print it bare, not as a List

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def parse_get(args: list[str]) -> list[Query]:
    """``["pv,pvc"]``, ``["pvc", "a", "b"]`` or ``["pvc/a", "pv/b"]`` → queries in order."""
    if not args:
        raise VolctlError("error: You must specify the type of resource to get. Known types: "
                          "storageclasses, persistentvolumes, persistentvolumeclaims, pods, nodes, volumeattachments, csidrivers")
    queries: list[Query] = []
    if "/" in args[0]:
        for spelling, name in targets(args):
            kind = kind_named(spelling)
            same = next((q for q in queries if q.kind == kind), None)
            if same is None:
                queries.append(Query(spelling, kind, [name]))
            else:
                same.names.append(name)
        return queries
    for spelling in args[0].split(","):
        if spelling:
            queries.append(Query(spelling, kind_named(spelling), list(args[1:])))
    return queries


def fetch(client: Client, queries: list[Query], *, namespace: str, all_namespaces: bool = False, selector: str = "") -> Fetched:
    """The objects asked for, and an error line for each that could not be had."""
    out: list[tuple[Kind, list[Obj]]] = []
    errors: list[str] = []
    for q in queries:
        objs: list[Obj] = []
        try:
            if q.names:
                for name in q.names:
                    try:
                        objs.append(client.get(q.spelling, name, namespace))
                    except ServerError as exc:
                        errors.append(exc.line)
            else:
                objs = client.list(q.spelling, namespace, all_namespaces, selector)
        except ServerError as exc:
            errors.append(exc.line)
        out.append((q.kind, objs))
    single = len(queries) == 1 and len(queries[0].names) == 1
    return Fetched(out, errors, single)


def to_yaml(obj: Any) -> str:
    # kubectl prints keys sorted (it goes through JSON maps) and never folds long lines.
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, width=1 << 20, allow_unicode=True).rstrip("\n")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False)


def render(got: Fetched, *, output: str, with_kind: bool, all_namespaces: bool = False, now: float | None = None) -> str:
    """What ``get`` prints on stdout ("" when nothing was found)."""
    objs = [o for _, items in got.kinds for o in items]
    if output == "name":
        return "\n".join(qualified(o) for o in objs)
    if output in ("yaml", "json"):
        if got.single and len(objs) == 1:
            doc: Any = objs[0]
        elif not objs and got.failed:
            return ""
        else:
            doc = {"apiVersion": "v1", "items": objs, "kind": "List", "metadata": {"resourceVersion": ""}}
        return to_yaml(doc) if output == "yaml" else to_json(doc)
    now = time.time() if now is None else now
    tables = [
        table(rows(kind, items, wide=output == "wide", with_kind=with_kind, all_namespaces=all_namespaces, now=now))
        for kind, items in got.kinds
        if items
    ]
    return "\n\n".join(tables)


def nothing_found(got: Fetched, namespace: str, all_namespaces: bool) -> str:
    """kubectl's note on stderr when a list came back empty."""
    if not all_namespaces and all(kind.namespaced for kind, _ in got.kinds):
        return f"No resources found in {namespace} namespace."
    return "No resources found"
