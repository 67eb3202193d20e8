"""The objects named by ``-f``: files, directories and stdin, YAML (many documents) or JSON.

    for item in documents(["examples/seed", "-"], sys.stdin):
        if isinstance(item, VolctlError): report(item)        # one line naming the file
        else: apply(item)                                      # a mapping, ready to send

Empty documents are skipped and a ``kind: List`` is opened into its items, as kubectl
does. A file that does not parse yields one error and none of its documents, so half a
file is never applied.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from volctl.client import VolctlError

__all__ = ["SUFFIXES", "documents"]

SUFFIXES = (".yaml", ".yml", ".json")


def _files(path: str, recursive: bool) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise VolctlError(f'error: the path "{path}" does not exist')
    if not p.is_dir():
        return [p]
    found = p.rglob("*") if recursive else p.iterdir()
    return sorted(f for f in found if f.is_file() and f.suffix in SUFFIXES)


def _parse(text: str, label: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise VolctlError(f"error: error parsing {label}: {problem}{where}") from None


def _objects(docs: list[Any], label: str) -> Iterator[dict[str, Any] | VolctlError]:
    for doc in docs:
        if doc is None or doc == {}:
            continue
        if not isinstance(doc, dict):
            yield VolctlError(f"error: error parsing {label}: a document must be a mapping, not {type(doc).__name__}")
        elif doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from _objects(doc["items"], label)
        else:
            yield doc


def _read(file: Path) -> Iterator[dict[str, Any] | VolctlError]:
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VolctlError(f"error: cannot read {file}: {exc}") from None
    return _objects(_parse(text, str(file)), str(file))


def documents(paths: list[str], stdin: TextIO | None = None, recursive: bool = False) -> Iterator[dict[str, Any] | VolctlError]:
    """Every object of every path in order; problems come out in place, as errors."""
    for path in paths:
        try:
            if path == "-":
                yield from _objects(_parse((stdin or sys.stdin).read(), "STDIN"), "STDIN")
                continue
            files = _files(path, recursive)
        except VolctlError as exc:
            yield exc
            continue
        for file in files:
            try:
                yield from _read(file)
            except VolctlError as exc:
                yield exc
