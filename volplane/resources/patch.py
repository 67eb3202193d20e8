"""JSON merge patches (RFC 7386): how changes to objects are written and shown.

    merge({"a": {"b": 1}}, {"a": {"b": None, "c": 2}}) == {"a": {"c": 2}}
    diff(old, new)   # the smallest merge patch that turns old into new
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["diff", "merge"]


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(before, dict) and isinstance(value, dict):
            sub = diff(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = copy.deepcopy(value)
    return patch
