"""``volctl get``: which objects, fetched how, and printed in which of kubectl's formats.

    got = fetch(client, parse_get(["pv,pvc"]), namespace="default")
    sys.stdout.write(render(got, output_format(""), with_kind=True))   # a table per kind, blank line between

Objects of several kinds come out kind by kind, in the order asked; a name that is not
there is reported after them (kubectl's NotFound line) and the others still print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from volctl import printing
from volctl.client import Client, ServerError, VolctlError
from volctl.jsonpath import Template
from volctl.printing import Format, to_json, to_yaml
from volctl.refs import kind_named, targets
from volplane.resources.kinds import Kind

__all__ = ["Fetched", "Query", "fetch", "nothing_found", "parse_get", "render", "to_json", "to_yaml"]

Obj = dict[str, Any]


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


def render(got: Fetched, fmt: Format, *, with_kind: bool, all_namespaces: bool = False, sort_by: Template | None = None, now: float | None = None) -> str:
    """What ``get`` writes on stdout, newlines included ("" when nothing was found)."""
    return printing.render(got.kinds, fmt, single=got.single, with_kind=with_kind, all_namespaces=all_namespaces,
                           sort_by=sort_by, failed=got.failed, now=now)


def nothing_found(got: Fetched, namespace: str, all_namespaces: bool) -> str:
    """kubectl's note on stderr when a list came back empty."""
    if not all_namespaces and all(kind.namespaced for kind, _ in got.kinds):
        return f"No resources found in {namespace} namespace."
    return "No resources found"
