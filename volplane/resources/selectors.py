"""Label selectors and node affinity, evaluated as Kubernetes evaluates them.

    parse_selector("app=web,tier!=db,env in (a,b),!legacy").matches(labels)
    LabelSelector.from_spec(pvc["spec"]["selector"]).matches(pv_labels)
    node_affinity_allows(pv, node)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from volplane.errors import InvalidArgument

__all__ = ["LabelSelector", "Requirement", "node_affinity_allows", "node_selector_term_matches", "parse_selector"]

_OPS = {"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"}


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "In":
                return has and value in self.values
            case "NotIn":
                return not has or value not in self.values
            case "Exists":
                return has
            case "DoesNotExist":
                return not has
            case "Gt" | "Lt":
                try:
                    left, right = int(value or ""), int(self.values[0])
                except (ValueError, IndexError):
                    return False
                return left > right if self.operator == "Gt" else left < right
        return False


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> LabelSelector:
        """A ``{matchLabels, matchExpressions}`` selector; None or {} selects everything."""
        if not spec:
            return cls()
        reqs = [Requirement(k, "In", (str(v),)) for k, v in (spec.get("matchLabels") or {}).items()]
        for expr in spec.get("matchExpressions") or []:
            reqs.append(_requirement(expr))
        return cls(tuple(reqs))


def _requirement(expr: dict[str, Any]) -> Requirement:
    op = expr.get("operator")
    if op not in _OPS:
        raise InvalidArgument(f"operator {op!r} is not one of {sorted(_OPS)}")
    return Requirement(str(expr.get("key", "")), op, tuple(str(v) for v in expr.get("values") or ()))


_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


def parse_selector(text: str) -> LabelSelector:
    """kubectl's ``-l`` syntax: ``a=b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``."""
    reqs: list[Requirement] = []
    for part in _split(text):
        if m := _EQ.match(part):
            key, op, value = m.groups()
            reqs.append(Requirement(key, "NotIn" if op == "!=" else "In", (value,)))
        elif m := _SET.match(part):
            neg, key, op, values = m.groups()
            if op:
                if neg:
                    raise InvalidArgument(f"unable to parse requirement {part.strip()[:64]!r}")
                vals = tuple(v.strip() for v in values.split(",") if v.strip())
                reqs.append(Requirement(key, "In" if op == "in" else "NotIn", vals))
            else:
                reqs.append(Requirement(key, "DoesNotExist" if neg else "Exists"))
        else:
            raise InvalidArgument(f"unable to parse requirement {part.strip()[:64]!r}")
    return LabelSelector(tuple(reqs))


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


def node_selector_term_matches(term: dict[str, Any], node: dict[str, Any]) -> bool:
    """A term's expressions all hold (labels) and its fields (metadata.name) all hold."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    fields = {"metadata.name": (node.get("metadata") or {}).get("name", "")}
    exprs = term.get("matchExpressions") or []
    field_exprs = term.get("matchFields") or []
    if not exprs and not field_exprs:
        return False  # Kubernetes: an empty term matches no object.
    return all(_requirement(e).matches(labels) for e in exprs) and all(_requirement(e).matches(fields) for e in field_exprs)


def node_affinity_allows(pv: dict[str, Any], node: dict[str, Any]) -> bool:
    """Whether the PV's ``spec.nodeAffinity.required`` admits ``node`` (no affinity: any node)."""
    required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required")
    if not required:
        return True
    return any(node_selector_term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])
