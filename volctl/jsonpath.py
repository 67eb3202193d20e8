"""kubectl's JSONPath: the template language of ``-o jsonpath``, ``-o custom-columns``,
``--sort-by`` and ``wait --for=jsonpath``, read and run as client-go's
``util/jsonpath`` does (with missing keys allowed, as kubectl always sets).

    template = parse('{range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}')
    template.execute(volume_list)                        # "pv-a\\tBound\\npv-b\\tAvailable\\n"
    parse("{.items[*].metadata.name}").execute(lst)      # "pv-a pv-b" (several values: space separated)
    parse("{.items[?(@.a>)]}")                           # JsonPathError: invalid filter expression ...
    relaxed(".metadata.name") == "{.metadata.name}"      # the shorthand custom columns and --sort-by take

What is supported — the whole of kubectl's dialect: text outside ``{}``; ``$`` and ``@``;
``.field`` (``\\.`` escapes a dot in a key) and ``['field']``; ``[n]``, negative indexes and
``[start:end:step]`` slices; ``[*]`` and ``.*``; ``..`` recursive descent; unions
``[0,2]`` / ``['a','b']``; filters ``[?(@.x=="y")]`` with ``== != < > <= >=`` and
existence ``[?(@.x)]``; ``range``/``end``; quoted literals such as ``{"\\n"}``.

Where kubectl would silently accept nonsense, this refuses with a ``JsonPathError``: a
filter whose comparison lacks a side (kubectl reads ``@.a>`` as a key named ``a>``) and
an unknown filter operator (kubectl reports it only once an array is there to filter).
Like kubectl, regular expressions (``=~``) and functions (``length()``) are not part of
the language and are parse errors. One leniency: an integer and a fractional number
compare as numbers in a filter, where Go's template comparison refuses the pair.

Values print as Go's fmt prints them (``true``, ``1e+21``); maps, lists and a null
reached through ``*`` or ``..`` print as compact JSON with sorted keys, as Go's
encoding/json writes them (a null field itself prints nothing, as in kubectl).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = ["JsonPathError", "JsonPathExecError", "Template", "go_json", "go_sprint", "go_text", "parse", "relaxed"]

_OPERATORS = ("==", "!=", "<", ">", "<=", ">=")
_FILTER = re.compile(r"^([^!<>=]+)([!<>=]+)(.+?)$", re.DOTALL)
_DICT_KEY = re.compile(r"^'([^']*)'$")
_SLICE = re.compile(r"^(-?\d*)(:-?\d*)?(:-?\d*)?$")
_RELAXED = re.compile(r"^\{\.?([^{}]+)\}$|^\.?([^{}]+)$", re.DOTALL)
_TERMINATORS = frozenset(" \t\r\n.,[]$@{}")


class JsonPathError(Exception):
    """A template that does not parse; ``str()`` is the reason, as client-go words it."""


class JsonPathExecError(Exception):
    """A template that parsed but could not run on this object (an index out of range,
    a filter on a map, values of different types compared)."""


# --- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Slice:
    start: int | None  # None: not given
    end: int | None
    step: int | None
    derived: bool  # ``[n]``: end is start + 1, not written


@dataclass(frozen=True)
class _Wildcard:
    pass


@dataclass(frozen=True)
class _Recursive:
    pass


@dataclass(frozen=True)
class _Literal:
    value: Any
    per_input: bool  # numbers and booleans repeat once per input value; quoted text stands alone


@dataclass(frozen=True)
class _Filter:
    left: tuple[Any, ...]
    op: str  # one of _OPERATORS, or "exists"
    right: tuple[Any, ...]


@dataclass(frozen=True)
class _Union:
    branches: tuple[tuple[Any, ...], ...]


Step = _Field | _Slice | _Wildcard | _Recursive | _Literal | _Filter | _Union


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    steps: tuple[Step, ...]


@dataclass
class _Range:
    steps: tuple[Step, ...]
    body: list[_Text | _Action | _Range] = field(default_factory=list)


Node = _Text | _Action | _Range


# --- parsing ----------------------------------------------------------------------------


def _describe(ch: str) -> str:
    """Go's ``%#U``: ``U+003E '>'``."""
    return f"U+{ord(ch):04X} '{ch}'" if ch.isprintable() else f"U+{ord(ch):04X}"


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"'}


def _unquote(quoted: str) -> str:
    """A Go quoted string, in double or single quotes (client-go's UnquoteExtend)."""
    body, out, i = quoted[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(body):
            raise JsonPathError(f"unquote string {quoted} error invalid syntax")
        code = body[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[code]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise JsonPathError(f"unquote string {quoted} error invalid syntax")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif code in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(c in "01234567" for c in digits):
                raise JsonPathError(f"unquote string {quoted} error invalid syntax")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise JsonPathError(f"unquote string {quoted} error invalid syntax")
    return "".join(out)


class _Parser:
    """Reads one ``{...}`` action into steps; ``pos`` ends just past its ``}``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def action(self) -> tuple[Step | str, ...]:
        """The steps up to the closing ``}``; identifiers (range, end) come back as str."""
        steps: list[Step | str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise JsonPathError("unclosed action")
            if text.startswith("}", self.pos):
                self.pos += 1
                return tuple(steps)
            if text.startswith("[?(", self.pos):
                steps.append(self.filter())
                continue
            if text.startswith("..", self.pos):
                if steps and isinstance(steps[-1], _Recursive):
                    raise JsonPathError("invalid multiple recursive descent")
                self.pos += 2
                steps.append(_Recursive())
                if self.pos < len(text) and _alnum(text[self.pos]):
                    steps.append(self.field())
                continue
            ch = text[self.pos]
            if ch in "\r\n":
                raise JsonPathError("unclosed action")
            if ch in " @$":  # spaces, and the current object (which is where we are)
                self.pos += 1
            elif ch == "[":
                steps.append(self.array())
            elif ch in "\"'":
                steps.append(self.quote(ch))
            elif ch == ".":
                self.pos += 1
                steps.append(self.field())
            elif ch in "+-" or ch.isdigit():
                steps.append(self.number())
            elif _alnum(ch):
                steps.append(self.identifier())
            else:
                raise JsonPathError(f"unrecognized character in action: {_describe(ch)}")

    def field(self) -> Step:
        start, text = self.pos, self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == "\\":
                self.pos += 2
                continue
            if ch in _TERMINATORS:
                break
            self.pos += 1
        name = text[start : self.pos]
        return _Wildcard() if name == "*" else _Field(name.replace("\\", ""))

    def identifier(self) -> Step | str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _TERMINATORS:
            self.pos += 1
        word = self.text[start : self.pos]
        if word in ("true", "false"):
            return _Literal(word == "true", per_input=True)
        return word

    def number(self) -> Step:
        start = self.pos
        if self.text[self.pos] in "+-":
            self.pos += 1
        while self.pos < len(self.text) and (self.text[self.pos].isdigit() or self.text[self.pos] == "."):
            self.pos += 1
        word = self.text[start : self.pos]
        try:
            return _Literal(int(word), per_input=True)
        except ValueError:
            pass
        try:
            return _Literal(float(word), per_input=True)
        except ValueError:
            raise JsonPathError(f"cannot parse number {word}") from None

    def quote(self, mark: str) -> Step:
        start, text = self.pos, self.text
        self.pos += 1
        while True:
            if self.pos >= len(text) or text[self.pos] == "\n":
                raise JsonPathError("unterminated quoted string")
            ch = text[self.pos]
            self.pos += 2 if ch == "\\" else 1
            if ch == mark:
                break
        return _Literal(_unquote(text[start : self.pos]), per_input=False)

    def array(self) -> Step:
        end = self.pos
        while True:
            end += 1
            if end >= len(self.text) or self.text[end] == "\n":
                raise JsonPathError("unterminated array")
            if self.text[end] == "]":
                break
        inside = self.text[self.pos + 1 : end]
        self.pos = end + 1
        if inside == "*":
            inside = ":"
        parts = inside.split(",")
        if len(parts) > 1:
            return _Union(tuple(_steps(_sub_action(f"[{p.strip(' ')}]")) for p in parts))
        key = _DICT_KEY.match(inside)
        if key:
            # As client-go: the key is read again as a dotted field, so a dot in it needs "\.".
            steps = _steps(_sub_action("." + key.group(1)))
            return steps[0] if len(steps) == 1 else _Union((steps,))
        m = _SLICE.match(inside)
        if not m:
            raise JsonPathError(f"invalid array index {inside}")
        params: list[int | None] = []
        for i, raw in enumerate(m.groups()):
            given = (raw or "")[1:] if i else (raw or "")
            if not given:
                params.append(None)
                continue
            try:
                params.append(int(given))
            except ValueError:
                raise JsonPathError(f"array index {given} is not a number") from None
        start, stop, step = params
        if m.group(2) is None:  # "[n]": one element
            first = start or 0
            return _Slice(start, first + 1, None, derived=True)
        return _Slice(start, stop, step, derived=False)

    def filter(self) -> Step:
        self.pos += 3
        begin = self.pos
        opened, closed, pair = False, False, ""
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise JsonPathError("unterminated filter")
            ch = self.text[self.pos]
            self.pos += 1
            if ch in "\"'":
                if not opened:
                    opened, pair = True, ch
                elif ch == pair and self.text[self.pos - 2] != "\\":
                    closed = True
            elif ch == ")" and opened == closed:
                break
        if self.peek() != "]":
            raise JsonPathError("unclosed array expect ]")
        self.pos += 1
        expression = self.text[begin : self.pos - 2]
        if "=~" in expression:
            raise JsonPathError(f'unsupported filter "{expression}": kubectl\'s JSONPath has no regular expressions (=~)')
        m = _FILTER.match(expression)
        if m is None:
            if any(c in expression for c in "!<>="):
                # kubectl would read "@.a>" as a key named "a>" and silently match nothing.
                raise JsonPathError(f'invalid filter expression "{expression}": a comparison needs a value on each side')
            return _Filter(_steps(_sub_action(expression)), "exists", ())
        left, op, right = m.groups()
        left_steps, right_steps = _steps(_sub_action(left)), _steps(_sub_action(right))
        if op not in _OPERATORS:
            raise JsonPathError(f"unrecognized filter operator {op}")
        return _Filter(left_steps, op, right_steps)


def _alnum(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _sub_action(text: str) -> tuple[Step | str, ...]:
    parser = _Parser(text + "}")
    steps = parser.action()
    if parser.pos != len(parser.text):  # a "}" inside: the rest would be template text
        raise JsonPathError(f"unexpected }} in {text}")
    return steps


def _steps(items: tuple[Step | str, ...]) -> tuple[Step, ...]:
    for item in items:
        if isinstance(item, str):
            raise JsonPathError(f"unrecognized identifier {item}")
    return tuple(i for i in items if not isinstance(i, str))


def parse(template: str) -> Template:
    """The template, or ``JsonPathError`` saying why it is not one."""
    root: list[Node] = []
    stack: list[list[Node]] = [root]
    pos = 0
    while pos < len(template):
        brace = template.find("{", pos)
        if brace < 0:
            stack[-1].append(_Text(template[pos:]))
            break
        if brace > pos:
            stack[-1].append(_Text(template[pos:brace]))
        parser = _Parser(template)
        parser.pos = brace + 1
        items = parser.action()
        pos = parser.pos
        if items and items[0] == "range":
            node = _Range(_steps(items[1:]))
            stack[-1].append(node)
            stack.append(node.body)
        elif items == ("end",):
            if len(stack) == 1:
                raise JsonPathError("not in range, nothing to end")
            stack.pop()
        else:
            stack[-1].append(_Action(_steps(items)))
    # A range without its end runs to the end of the template, as in client-go.
    return Template(template, root)


def relaxed(expression: str) -> str:
    """kubectl's RelaxedJSONPathExpression: ``.a.b``, ``a.b``, ``{a.b}`` → ``{.a.b}``."""
    if not expression:
        return expression
    m = _RELAXED.match(expression)
    if not m:
        raise JsonPathError("unexpected path string, expected a 'name1.name2' or '.name1.name2' or '{name1.name2}' or '{.name1.name2}'")
    return "{." + (m.group(1) or m.group(2)) + "}"


# --- running ----------------------------------------------------------------------------


def _go_type(value: Any) -> str:
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    return "string" if isinstance(value, str) else type(value).__name__


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return list(value)
    return []


def _slice(values: list[Any], s: _Slice) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, list):
            raise JsonPathExecError(f"{_go_type(value)} is not array or slice")
        n = len(value)
        start = s.start or 0
        if start < 0:
            start += n
        end = n if s.end is None else s.end
        if end < 0 or (s.derived and end == 0):
            end += n
        if end == start:
            return out  # zero elements asked for: allowed, whatever the length
        if start >= n or start < 0:
            raise JsonPathExecError(f"array index out of bounds: index {start}, length {n}")
        if end > n or end < 0:
            raise JsonPathExecError(f"array index out of bounds: index {end - 1}, length {n}")
        if start > end:
            raise JsonPathExecError(f"starting index {start} is greater than ending index {end}")
        step = 1 if s.step is None else s.step
        if step <= 0:
            raise JsonPathExecError("step must be > 0")
        out.extend(value[start:end:step])
    return out


def _kind(value: Any) -> str:
    """text/template's basicKind, for comparisons."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    raise JsonPathExecError("invalid type for comparison")


def _compare(left: Any, op: str, right: Any) -> bool:
    lk, rk = _kind(left), _kind(right)
    if {lk, rk} == {"int", "float"}:
        lk = rk = "float"  # Go would refuse 1.5 > 2; a number is a number here
    if lk != rk:
        raise JsonPathExecError("incompatible types for comparison")
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if lk == "bool":
        raise JsonPathExecError("invalid type for comparison")
    return bool({"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op])


def _filter(values: list[Any], f: _Filter) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not isinstance(value, list):
            raise JsonPathExecError(f"{go_sprint(value)} is not array or slice and cannot be filtered")
        for item in value:
            if f.op == "exists":
                try:
                    if _walk([item], f.left):
                        out.append(item)
                except JsonPathExecError:
                    pass  # client-go ignores an error on this side of an existence test
                continue
            lefts = _walk([item], f.left)
            if not lefts:
                continue
            if len(lefts) > 1:
                raise JsonPathExecError("can only compare one element at a time")
            rights = _walk([item], f.right)
            if not rights:
                continue
            if len(rights) > 1:
                raise JsonPathExecError("can only compare one element at a time")
            if _compare(lefts[0], f.op, rights[0]):
                out.append(item)
    return out


def _walk(values: list[Any], steps: tuple[Step, ...]) -> list[Any]:
    for step in steps:
        if isinstance(step, _Field):
            # A key whose value is null is as good as missing (kubectl prints nothing for it).
            values = [v[step.name] for v in values if isinstance(v, dict) and v.get(step.name) is not None]
        elif isinstance(step, _Slice):
            values = _slice(values, step)
        elif isinstance(step, _Wildcard):
            values = [c for v in values for c in _children(v)]
        elif isinstance(step, _Recursive):
            values = list(_descend(values))
        elif isinstance(step, _Filter):
            values = _filter(values, step)
        elif isinstance(step, _Union):
            values = [r for branch in step.branches for r in _walk(values, branch)]
        elif isinstance(step, _Literal):
            values = [step.value] * len(values) if step.per_input else [step.value]
    return values


def _descend(values: list[Any]) -> Iterator[Any]:
    """Every map and list at or below the values (the leaves are reached by the step after ``..``)."""
    for value in values:
        children = _children(value)
        if children:
            yield value
            yield from _descend(children)


@dataclass
class Template:
    """A parsed template: ``find`` gives each action's values, ``execute`` the text."""

    source: str
    nodes: list[Node]

    def find(self, data: Any) -> list[list[Any]]:
        """The values of each action in order (a range contributes its body's, per item)."""
        return list(self._find(self.nodes, data))

    def _find(self, nodes: list[Node], data: Any) -> Iterator[list[Any]]:
        for node in nodes:
            if isinstance(node, _Text):
                yield [node.text]
            elif isinstance(node, _Action):
                yield _walk([data], node.steps)
            else:
                for item in _walk([data], node.steps):
                    yield from self._find(node.body, item)

    def execute(self, data: Any, as_json: bool = False) -> str:
        """The text kubectl prints: values of one action space separated, no newline added.
        ``as_json`` is ``-o jsonpath-as-json``: each action's values as an indented JSON array."""
        out: list[str] = []
        for values in self.find(data):
            if as_json:
                out.append(go_json(values, indent=4) + "\n")
            else:
                out.append(" ".join(go_json(v) if isinstance(v, dict | list) or v is None else go_text(v) for v in values))
        return "".join(out)


# --- Go's ways of writing values ---------------------------------------------------------


def _go_float(value: float) -> str:
    """Go's ``%v`` of a float64: shortest digits, an exponent below 1e-4 and from 1e21."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    exact = Decimal(repr(value))
    exp = exact.adjusted()
    if -4 <= exp < 21:
        text = format(exact, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign, digits, _ = exact.as_tuple()
    shown = "".join(map(str, digits)).rstrip("0") or "0"
    mantissa = shown[0] + ("." + shown[1:] if len(shown) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def go_text(value: Any) -> str:
    """A scalar as Go's fmt.Fprint writes it: ``true``, ``5``, ``1.5``, ``<nil>``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def go_sprint(value: Any) -> str:
    """Any value as Go's ``fmt.Sprint``: ``map[a:1 b:[x y]]`` (what custom columns show)."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_sprint(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    return go_text(value)


def _go_json_float(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return "null"  # JSON has no such numbers; the server never sends them
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", text) if (abs(value) < 1e-6 or abs(value) >= 1e21) else format(Decimal(text), "f")


def _go_json_string(text: str) -> str:
    # encoding/json escapes <, > and & for HTML, and the two JavaScript line separators.
    quoted = json.dumps(text, ensure_ascii=False)
    for ch, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        quoted = quoted.replace(ch, escaped)
    return quoted


def go_json(value: Any, indent: int | None = None, level: int = 0) -> str:
    """JSON as Go's encoding/json writes it: map keys sorted, HTML characters escaped;
    compact, or indented by ``indent`` spaces (json.MarshalIndent)."""
    if isinstance(value, dict | list):
        if not value:
            return "{}" if isinstance(value, dict) else "[]"
        if isinstance(value, dict):
            items = [f"{_go_json_string(str(k))}:{' ' if indent is not None else ''}{go_json(value[k], indent, level + 1)}" for k in sorted(value)]
            open_, close = "{", "}"
        else:
            items = [go_json(v, indent, level + 1) for v in value]
            open_, close = "[", "]"
        if indent is None:
            return open_ + ",".join(items) + close
        pad, inner = " " * (indent * level), " " * (indent * (level + 1))
        return open_ + "\n" + ",\n".join(inner + i for i in items) + "\n" + pad + close
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_json_float(value)
    return _go_json_string(str(value))
