"""``--sort-by``: objects ordered by the value at a JSONPath, as kubectl orders them.

    sort_objects(claims, ".spec.resources.requests.storage")   # 500Mi before 2Gi before 10Gi
    sort_objects(pvs, "{.metadata.name}")                      # pv-2 before pv-10 (natural order)
    natural_less("pv-2", "pv-10") is True
    parse_quantity("1.5Gi") == Fraction(3 * 2**29)

kubectl compares the first value the path finds in each object: two strings that both
read as quantities (``10Gi``, ``500m``, ``3``) by amount, other strings in natural order
(digit runs by number), numbers as numbers. An object where the path finds nothing
sorts first. Booleans, maps, lists and values of different types are not ordered:
kubectl stops with an error, and so does this. A path found in no object at all
is an error too (``couldn't find any field with path``), since it is most likely a typo.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

from volctl.client import VolctlError
from volctl.jsonpath import JsonPathError, JsonPathExecError, Template, parse, relaxed

__all__ = ["natural_less", "parse_quantity", "sort_objects", "sort_template"]

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(text: str) -> Fraction | None:
    """The amount of a Kubernetes quantity (``10Gi``, ``500m``, ``1e3``), exactly; None if ``text`` is not one."""
    m = _QUANTITY.match(text)
    if not m:
        return None
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix in _BINARY:
        return number * 2 ** _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * Fraction(10) ** _DECIMAL[suffix]
    return number * Fraction(10) ** int(suffix[1:])


def natural_less(a: str, b: str) -> bool:
    """Natural order (fvbommel/sortorder, which kubectl uses): runs of digits compare as
    numbers, digits before other characters, other characters byte by byte."""
    x, y = a.encode(), b.encode()
    i = j = 0
    while i < len(x) and j < len(y):
        dx, dy = chr(x[i]).isdigit(), chr(y[j]).isdigit()
        if dx != dy:
            return dx
        if not dx:
            if x[i] != y[j]:
                return x[i] < y[j]
            i, j = i + 1, j + 1
            continue
        # Two numbers: skip leading zeros, then the shorter run of digits is smaller,
        # then the digits decide, then the one with fewer leading zeros.
        zi, zj = i, j
        while i < len(x) and x[i] == ord("0"):
            i += 1
        while j < len(y) and y[j] == ord("0"):
            j += 1
        si, sj = i, j
        while i < len(x) and chr(x[i]).isdigit():
            i += 1
        while j < len(y) and chr(y[j]).isdigit():
            j += 1
        if i - si != j - sj:
            return i - si < j - sj
        if x[si:i] != y[sj:j]:
            return x[si:i] < y[sj:j]
        if si - zi != sj - zj:
            return si - zi < sj - zj
    return len(x) < len(y)


class _Unsortable(Exception):
    """Two values kubectl cannot order; the text names their type as Go does."""


def _go_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return {bool: "bool", int: "int64", float: "float64", str: "string"}.get(type(value), type(value).__name__)


def _less(a: Any, b: Any) -> bool:
    """kubectl's isLess on two values of one object field each (JSON values: Go interfaces)."""
    if a is None or b is None:
        return a is None and b is not None
    if isinstance(a, bool) or not isinstance(a, int | float | str):
        # kubectl orders neither booleans nor maps and lists found in an object.
        raise _Unsortable(f"unsortable type: {_go_kind(a)}")
    if type(a) is not type(b):
        raise _Unsortable(f"unsortable interface: {_go_kind(a)} and {_go_kind(b)} differ")
    if isinstance(a, str) and isinstance(b, str):
        qa, qb = parse_quantity(a), parse_quantity(b)
        if qa is not None and qb is not None:
            return qa < qb
        return natural_less(a, b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a < b  # two ints or two floats: their types are the same, checked above
    return False


def sort_template(sort_by: str) -> Template:
    """The parsed ``--sort-by`` path, in kubectl's relaxed spelling (``.a.b``, ``{.a.b}``)."""
    try:
        return parse(relaxed(sort_by))
    except JsonPathError as exc:
        raise VolctlError(f"error: sorting error: {exc}") from None


def _first(template: Template, obj: Any) -> tuple[bool, Any]:
    try:
        found = template.find(obj)
    except JsonPathExecError as exc:
        raise VolctlError(f"error: sorting error: {exc}") from None
    if not found or not found[0]:
        return False, None
    return True, found[0][0]


def sort_objects(objs: list[Any], sort_by: str | Template) -> list[Any]:
    """``objs`` in the order of ``--sort-by`` (stable: equal values keep their order)."""
    template = sort_template(sort_by) if isinstance(sort_by, str) else sort_by
    if not objs:
        return objs
    keyed = [(_first(template, obj), obj) for obj in objs]
    if not any(found for (found, _), _ in keyed):
        raise VolctlError(f'error: couldn\'t find any field with path "{template.source}" in the list of objects')

    def compare(x: tuple[tuple[bool, Any], Any], y: tuple[tuple[bool, Any], Any]) -> int:
        (fx, vx), (fy, vy) = x[0], y[0]
        if not fx or not fy:
            return (fx > fy) - (fx < fy)  # an object without the field first
        if _less(vx, vy):
            return -1
        return 1 if _less(vy, vx) else 0

    try:
        return [obj for _, obj in sorted(keyed, key=functools.cmp_to_key(compare))]
    except _Unsortable as exc:
        raise VolctlError(f"error: field {template.source} is an unsortable type: {exc}") from None
