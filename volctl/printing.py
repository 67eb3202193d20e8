"""``-o`` for ``volctl get``: kubectl's output formats, ``--no-headers`` and ``--sort-by``.

    fmt = output_format("custom-columns=NAME:.metadata.name,SIZE:.spec.capacity.storage")
    sys.stdout.write(render(kinds, fmt, single=False, sort_by=sort_template(".metadata.name")))

    stream = Stream(fmt, kind)                  # get -w: the table first, then a line per change
    sys.stdout.write(stream.write([("ADDED", pv) for pv in pvs]))
    sys.stdout.write(stream.write([("MODIFIED", changed)]))

The formats: the table (``""``) and ``wide``; ``yaml``, ``json`` and ``name``;
``jsonpath=TEMPLATE``, ``jsonpath-as-json=``, ``jsonpath-file=FILE`` (or the template
in ``--template``); ``custom-columns=HEADER:PATH,...`` and ``custom-columns-file=FILE``
(a line of headers, a line of paths). As in kubectl, the table prints a table per kind
(sorted within it) while the other formats print one List of every object (sorted as
one), or the object itself when exactly one was named. Every error is a ``VolctlError``
whose line reads as kubectl's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from volctl.client import VolctlError
from volctl.columns import rows
from volctl.jsonpath import JsonPathError, JsonPathExecError, Template, go_sprint, parse, relaxed
from volctl.refs import qualified
from volctl.sorting import sort_objects
from volctl.tables import Aligned, table
from volplane.resources.kinds import Kind

__all__ = ["FORMATS", "Column", "Format", "Stream", "output_format", "render", "to_json", "to_yaml"]

Obj = dict[str, Any]
FORMATS = ("custom-columns", "custom-columns-file", "json", "jsonpath", "jsonpath-as-json", "jsonpath-file", "name", "wide", "yaml")
_JSONPATH = ("jsonpath", "jsonpath-file", "jsonpath-as-json")
_COLUMNS = ("custom-columns", "custom-columns-file")


@dataclass(frozen=True)
class Column:
    header: str
    path: Template


@dataclass(frozen=True)
class Format:
    """One parsed ``-o``: ``name`` is table, wide, yaml, json, name, jsonpath,
    jsonpath-as-json or custom-columns."""

    name: str
    template: Template | None = None
    columns: tuple[Column, ...] = ()
    no_headers: bool = False

    @property
    def human(self) -> bool:
        """kubectl's human-readable printers: a table per kind, "No resources found" when empty."""
        return self.name in ("table", "wide")


def to_yaml(obj: Any) -> str:
    # kubectl prints keys sorted (it goes through JSON maps) and never folds long lines.
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, width=1 << 20, allow_unicode=True).rstrip("\n")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False)


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VolctlError(f"error: error reading {what} {path}, {exc.strerror if isinstance(exc, OSError) else exc}") from None


def _jsonpath(text: str) -> Template:
    try:
        return parse(text)
    except JsonPathError as exc:
        raise VolctlError(f"error: error parsing jsonpath {text}, {exc}") from None


def _column_path(spec: str) -> Template:
    try:
        path = relaxed(spec)
    except JsonPathError as exc:
        raise VolctlError(f"error: {exc}") from None
    return _jsonpath(path)


def _columns_from_spec(spec: str) -> tuple[Column, ...]:
    columns = []
    for part in spec.split(","):
        header, sep, path = part.partition(":")
        if not sep:
            raise VolctlError(f"error: unexpected custom-columns spec: {part}, expected <header>:<json-path-expr>")
        columns.append(Column(header, _column_path(path)))
    return tuple(columns)


def _columns_from_file(text: str) -> tuple[Column, ...]:
    lines = text.splitlines()
    expected = "Expected format is one line of space separated headers, one line of space separated column specs."
    if not lines:
        raise VolctlError(f"error: invalid template, missing header line. {expected}")
    if len(lines) < 2:
        raise VolctlError(f"error: invalid template, missing spec line. {expected}")
    headers, specs = lines[0].split(), lines[1].split()
    if len(headers) != len(specs):
        raise VolctlError(f"error: number of headers ({len(headers)}) and field specifications ({len(specs)}) don't match")
    return tuple(Column(h, _column_path(s)) for h, s in zip(headers, specs, strict=True))


def output_format(output: str, template: str = "", no_headers: bool = False) -> Format:
    """``-o``'s value (and ``--template``) parsed, or the error kubectl gives for it."""
    output = output.removeprefix("=")  # "-o=json", as pflag reads it
    if output in ("", "wide"):
        return Format("table" if not output else "wide", no_headers=no_headers)
    if output in ("yaml", "json", "name"):
        return Format(output, no_headers=no_headers)
    name, _, value = output.partition("=")
    value = value or template
    if name in _JSONPATH:
        if not value:
            raise VolctlError("error: template format specified but no template given")
        text = _read(value, "--template") if name == "jsonpath-file" else value
        return Format("jsonpath-as-json" if name == "jsonpath-as-json" else "jsonpath", template=_jsonpath(text), no_headers=no_headers)
    if name in _COLUMNS:
        if not value:
            raise VolctlError("error: custom-columns format specified but no custom columns given")
        columns = _columns_from_file(_read(value, "template")) if name == "custom-columns-file" else _columns_from_spec(value)
        return Format("custom-columns", columns=columns, no_headers=no_headers)
    raise VolctlError(f'error: unable to match a printer suitable for the output format "{output}", allowed formats are: {",".join(FORMATS)}')


def _execute(template: Template, doc: Any, as_json: bool = False) -> str:
    try:
        return template.execute(doc, as_json=as_json)
    except JsonPathExecError as exc:
        raise VolctlError(
            f'error: error executing jsonpath "{template.source}": Error executing template: {exc}. Printing more information for debugging the template:\n'
            f"\ttemplate was:\n\t\t{template.source}\n\tobject given to jsonpath engine was:\n\t\t{json.dumps(doc, separators=(',', ':'))}\n"
        ) from None


def _cells(columns: tuple[Column, ...], obj: Any) -> list[str]:
    """A custom-columns row: each path's values comma separated, ``<none>`` for none."""
    out = []
    for column in columns:
        try:
            found = column.path.find(obj)
        except JsonPathExecError as exc:
            raise VolctlError(f'error: error executing jsonpath "{column.path.source}": {exc}') from None
        values = [] if found and found[0] else ["<none>"]
        values += [go_sprint(v) for vs in found for v in vs]
        out.append(",".join(values))
    return out


def _as_list(objs: list[Obj]) -> Obj:
    return {"apiVersion": "v1", "items": objs, "kind": "List", "metadata": {"resourceVersion": ""}}


def render(kinds: list[tuple[Kind, list[Obj]]], fmt: Format, *, single: bool, with_kind: bool = False, all_namespaces: bool = False,
           sort_by: Template | None = None, failed: bool = False, now: float | None = None) -> str:
    """What ``get`` writes on stdout, newlines included ("" for nothing).

    ``single``: exactly one object was named, so the generic formats print it bare rather
    than in a List. ``failed``: some lookups failed; when nothing was found at all the
    generic formats then print nothing (not an empty List).
    """
    if fmt.human:
        now = time.time() if now is None else now
        tables = []
        for kind, items in kinds:
            if not items:
                continue
            ordered = sort_objects(items, sort_by) if sort_by is not None else items
            lines = rows(kind, ordered, wide=fmt.name == "wide", with_kind=with_kind, all_namespaces=all_namespaces, now=now)
            tables.append(table(lines[1:] if fmt.no_headers else lines))
        # kubectl separates the tables of several kinds by a blank line, unless headerless.
        return ("\n" if fmt.no_headers else "\n\n").join(tables) + "\n" if tables else ""
    objs = [o for _, items in kinds for o in items]
    if not objs and failed:
        return ""
    if not single and sort_by is not None:
        objs = sort_objects(objs, sort_by)
    doc: Any = objs[0] if single and len(objs) == 1 else _as_list(objs)
    if fmt.name == "name":
        return "".join(qualified(o) + "\n" for o in objs)
    if fmt.name == "yaml":
        return to_yaml(doc) + "\n"
    if fmt.name == "json":
        return to_json(doc) + "\n"
    if fmt.name in ("jsonpath", "jsonpath-as-json"):
        assert fmt.template is not None
        return _execute(fmt.template, doc, as_json=fmt.name == "jsonpath-as-json")
    header = [] if fmt.no_headers else [[c.header for c in fmt.columns]]
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    return table(header + [_cells(fmt.columns, o) for o in items]) + "\n"


class Stream:
    """``get -w``'s output: what was there, then a line (or document) per change, in the
    format asked; a table keeps its columns aligned from one change to the next and shows
    its header once, before its first row.

    With ``events`` (``--output-watch-events``) each change says what it was: an EVENT
    column first in a table, ``{"type": ..., "object": ...}`` in the other formats.
    """

    def __init__(self, fmt: Format, kind: Kind, *, all_namespaces: bool = False, events: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.fmt, self.kind, self.all_namespaces, self.events, self.clock = fmt, kind, all_namespaces, events, clock
        self._aligned = Aligned()
        self._headed = fmt.no_headers
        self._documents = 0

    def write(self, changes: list[tuple[str, Obj]]) -> str:
        """The text for these changes: (ADDED|MODIFIED|DELETED, object) pairs."""
        if not changes:
            return ""
        fmt = self.fmt
        if fmt.human or fmt.name == "custom-columns":
            lines = self._rows(changes)
            if self._headed:
                lines = lines[1:]
            self._headed = True
            return "".join(line + "\n" for line in self._aligned.lines(lines))
        out = []
        for event, obj in changes:
            doc = {"type": event, "object": obj} if self.events else obj
            if fmt.name == "name":
                out.append(qualified(obj) + "\n")
            elif fmt.name == "yaml":
                # kubectl's YAML printer starts every document after the first with "---".
                out.append(("---\n" if self._documents else "") + to_yaml(doc) + "\n")
            elif fmt.name == "json":
                out.append(to_json(doc) + "\n")
            else:
                assert fmt.template is not None
                out.append(_execute(fmt.template, doc, as_json=fmt.name == "jsonpath-as-json"))
            self._documents += 1
        return "".join(out)

    def _rows(self, changes: list[tuple[str, Obj]]) -> list[list[str]]:
        if self.fmt.name == "custom-columns":
            header = [c.header for c in self.fmt.columns]
            body = [_cells(self.fmt.columns, {"type": e, "object": o} if self.events else o) for e, o in changes]
        else:
            lines = rows(self.kind, [o for _, o in changes], wide=self.fmt.name == "wide", all_namespaces=self.all_namespaces, now=self.clock())
            header, body = lines[0], lines[1:]
            if self.events:
                header = ["EVENT", *header]
                body = [[e, *row] for (e, _), row in zip(changes, body, strict=True)]
        return [header, *body]
