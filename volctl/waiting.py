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
from volctl.jsonpath import JsonPathError, JsonPathExecError, go_text, relaxed
from volctl.jsonpath import parse as parse_jsonpath

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
    """The first value at a kubectl JSONPath such as ``{.status.conditions[0].type}``; None if absent."""
    try:
        found = parse_jsonpath(relaxed(expr.strip())).find(obj)
    except (JsonPathError, JsonPathExecError):
        return None
    return found[0][0] if found and found[0] else None


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
        return _jsonpath_condition(text[len("jsonpath=") :])
    raise VolctlError(f"error: unrecognized condition: {text!r} (use delete, phase=<phase>, condition=<type>[=<status>] or jsonpath='{{...}}'=<value>)")


def _split_jsonpath(text: str) -> tuple[str, str | None]:
    """``'{.status.phase}'=Bound`` → (``{.status.phase}``, ``Bound``); no ``=`` → (path, None).
    The value starts at the first ``=`` after the braces (or, unbraced, outside brackets),
    so a filter's ``==`` stays in the path."""
    text = text.strip()
    if text[:1] in ("'", '"') and text.find(text[0], 1) > 1:
        end = text.find(text[0], 1)
        path, rest = text[1:end], text[end + 1 :]
    elif text.startswith("{") and "}" in text:
        end = text.index("}")
        path, rest = text[: end + 1], text[end + 1 :]
    else:
        depth, cut = 0, len(text)
        for i, ch in enumerate(text):
            depth += (ch == "[") - (ch == "]")
            if ch == "=" and depth == 0:
                cut = i
                break
        path, rest = text[:cut], text[cut:]
    if not rest:
        return path, None
    if not rest.startswith("="):
        raise VolctlError(f"error: jsonpath wait format must be --for=jsonpath='{{.status.readyReplicas}}'=3 or --for=jsonpath='{{.status.readyReplicas}}', not {text!r}")
    value = rest[1:].strip("'\"")
    if not value:
        raise VolctlError("error: jsonpath wait has to have a value after equal sign")
    return path, value


def _jsonpath_condition(text: str) -> Condition:
    """kubectl wait's jsonpath: the path must find one value; with ``=value`` it must
    print as that value (a map or list is an error), without it any value will do."""
    raw, want = _split_jsonpath(text)
    try:
        template = parse_jsonpath(relaxed(raw))
    except JsonPathError as exc:
        raise VolctlError(f"error: error parsing jsonpath {raw}, {exc}") from None

    def met(obj: Obj) -> bool:
        try:
            found = template.find(obj)
        except JsonPathExecError as exc:
            raise VolctlError(f"error: {exc}") from None
        if not found or not found[0]:
            return False
        if len(found) > 1:
            raise VolctlError("error: given jsonpath expression matches more than one list")
        if len(found[0]) > 1:
            raise VolctlError("error: given jsonpath expression matches more than one value")
        if want is None:
            return True
        value = found[0][0]
        if isinstance(value, dict | list):
            raise VolctlError("error: jsonpath leads to a nested object or list which is not supported")
        return go_text(value).strip() == want.strip()

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
