"""``volctl wait``: conditions, durations, and waiting on the Watch stream.

    cond = condition("phase=Bound")             # also delete, condition=Ready, jsonpath={.status.phase}=Bound
    wait_for(client, "pvc", "data", "default", cond, deadline=time.monotonic() + duration("30s"))

The object is read once, then followed from that version on, so no change between the
read and the watch is missed; nothing polls.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from volctl.client import Client, ServerError, TimedOut, VolctlError

__all__ = ["Condition", "condition", "duration", "jsonpath", "wait_for"]

Obj = dict[str, Any]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds in a Go duration or a plain number of seconds: ``duration("1m30s") == 90``."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    parts = _DURATION.findall(t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise VolctlError(f'error: invalid duration "{text}" (use 30s, 2m, 1h or plain seconds)')
    return sum(float(n) * _UNITS[u] for n, u in parts)


def jsonpath(obj: Any, expr: str) -> Any:
    """The value at a simple kubectl JSONPath such as ``{.status.conditions[0].type}``; None if absent."""
    path = expr.strip().removeprefix("{").removesuffix("}").strip().lstrip(".")
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            obj = obj[index] if isinstance(obj, list) and index < len(obj) else None
        else:
            obj = obj.get(part) if isinstance(obj, dict) else None
        if obj is None:
            return None
    return obj


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Condition:
    """What to wait for: the object gone (``deleted``), or ``met(obj)`` holding."""

    deleted: bool
    met: Callable[[Obj], bool]


def condition(text: str) -> Condition:
    """``--for``'s value: ``delete``, ``phase=P``, ``condition=T[=status]``, ``jsonpath={...}[=value]``."""
    name, sep, rest = text.partition("=")
    name = name.lower()
    if name == "delete" and not sep:
        return Condition(True, lambda obj: False)
    if name == "phase" and rest:
        return Condition(False, lambda obj: (obj.get("status") or {}).get("phase") == rest)
    if name == "condition" and rest:
        kind, _, want = rest.partition("=")
        wanted = (want or "True").lower()
        return Condition(False, lambda obj: any(
            c.get("type") == kind and str(c.get("status", "")).lower() == wanted
            for c in (obj.get("status") or {}).get("conditions") or []))
    if name == "jsonpath" and rest:
        return _jsonpath_condition(rest)
    raise VolctlError(f"error: unrecognized condition: {text!r} (use delete, phase=<phase>, condition=<type>[=<status>] or jsonpath='{{...}}'=<value>)")


def _jsonpath_condition(text: str) -> Condition:
    expr = text.strip().strip("'\"")
    end = expr.find("}")
    if not expr.startswith("{") or end < 0:
        raise VolctlError(f"error: unrecognized condition: jsonpath={text!r} (use jsonpath='{{.status.phase}}'=Bound)")
    path, rest = expr[: end + 1], expr[end + 1 :].strip("'\"")
    if not rest:
        return Condition(False, lambda obj: jsonpath(obj, path) not in (None, "", [], {}))
    if not rest.startswith("="):
        raise VolctlError(f"error: unrecognized condition: jsonpath={text!r}")
    want = rest[1:].strip("'\"")

    def met(obj: Obj) -> bool:
        value = jsonpath(obj, path)
        return value is not None and _text(value) == want

    return Condition(False, met)


def wait_for(client: Client, kind: str, name: str, namespace: str, cond: Condition, deadline: float) -> bool:
    """True once the condition holds, False if ``deadline`` (time.monotonic()) passes first.
    A missing object meets ``delete`` and is NotFound (ServerError) for anything else."""
    try:
        obj = client.get(kind, name, namespace)
    except ServerError as exc:
        if cond.deleted and exc.reason == "NotFound":
            return True
        raise
    if not cond.deleted and cond.met(obj):
        return True
    after = int(obj["metadata"].get("resourceVersion") or 0)
    want_ns = obj["metadata"].get("namespace", "")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    try:
        for event, changed in client.watch(kind, namespace, after, timeout=remaining, name=name):
            meta = changed.get("metadata") or {}
            if meta.get("name") != name or meta.get("namespace", "") != want_ns:
                continue
            if event == "DELETED":
                if cond.deleted:
                    return True
                # kubectl keeps waiting on a deleted object until it times out; so do we,
                # since it may be created again.
                continue
            if not cond.deleted and cond.met(changed):
                return True
    except TimedOut:
        return False
    return False
