"""Plain-text columns laid out the way kubectl lays them out, and kubectl's ages.

    print(table([["NAME", "AGE"], ["nfs-pv", "4s"]]))
    # NAME     AGE
    # nfs-pv   4s
    human_age(3 * 3600 + 125) == "3h2m"
    age("2024-05-01T10:00:00Z", now=...)   # from an object's creationTimestamp

kubectl writes its tables through Go's text/tabwriter; ``tabwrite`` follows the same
rules so that columns line up the same, including in ``describe``, whose nested fields
start new column blocks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

__all__ = ["Aligned", "age", "age_ns", "describe_block", "human_age", "rfc3339_ns", "table", "tabwrite"]

# kubectl get: tabwriter.NewWriter(out, 6, 4, 3, ' ', ...); kubectl describe: (out, 0, 8, 2, ' ', 0).
TABLE_MIN_WIDTH, TABLE_PADDING = 6, 3
DESCRIBE_PADDING = 2


def tabwrite(lines: Sequence[Sequence[str]], padding: int, minwidth: int = 0) -> list[str]:
    """Lay out lines of cells as Go's tabwriter does (cells left aligned, space padded).

    Every cell but a line's last is "tab-terminated"; a column is a block of consecutive
    lines that all have a tab-terminated cell in it, and is as wide as its widest cell
    plus ``padding`` (at least ``minwidth``). A line's last cell is never padded, so
    lines carry no trailing spaces unless their last cells are empty.
    """
    out: list[str] = []
    widths: list[int] = []

    def emit(lo: int, hi: int) -> None:
        for line in lines[lo:hi]:
            out.append("".join(cell.ljust(widths[j]) if j < len(widths) else cell for j, cell in enumerate(line)))

    def layout(lo: int, hi: int) -> None:
        column = len(widths)
        this = lo
        while this < hi:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            emit(lo, this)  # the lines before this block end at an earlier column
            lo = this
            width = minwidth
            while this < hi and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            layout(lo, this)
            widths.pop()
            lo = this
        emit(lo, hi)

    layout(0, len(lines))
    return out


def table(rows: Sequence[Sequence[str]]) -> str:
    """``kubectl get``'s layout: at least 3 spaces between columns."""
    return "\n".join(tabwrite(rows, TABLE_PADDING, TABLE_MIN_WIDTH))


class Aligned:
    """Rows laid out a batch at a time, each batch aligned with those before it: kubectl's
    tabwriter under ``get -w`` remembers column widths across flushes (its RememberWidths
    flag), so a change printed later lines up under the header, and a wider cell widens
    its column from then on.

        out = Aligned()
        out.lines([["NAME", "STATUS"], ["a", "Bound"]])   # ["NAME   STATUS", "a      Bound"]
        out.lines([["a-longer-name", "Lost"]])            # ["a-longer-name   Lost"]
    """

    def __init__(self, padding: int = TABLE_PADDING, minwidth: int = TABLE_MIN_WIDTH) -> None:
        self.padding, self.minwidth = padding, minwidth
        self.widths: list[int] = []

    def lines(self, rows: Sequence[Sequence[str]]) -> list[str]:
        columns = max((len(r) for r in rows), default=0) - 1  # a line's last cell is not a column
        for j in range(columns):
            width = max([self.minwidth] + [len(r[j]) + self.padding for r in rows if j < len(r) - 1])
            if j < len(self.widths):
                self.widths[j] = max(self.widths[j], width)
            else:
                self.widths.append(width)
        return ["".join(cell.ljust(self.widths[j]) if j < len(row) - 1 else cell for j, cell in enumerate(row)) for row in rows]


def describe_block(text: str) -> str:
    """``kubectl describe``'s layout of ``Key:\\tvalue`` lines (tabs separate cells)."""
    return "\n".join(tabwrite([line.split("\t") for line in text.split("\n")], DESCRIBE_PADDING))


def human_age(seconds: float) -> str:
    """kubectl's AGE: exact while small, coarser as it grows (``90s``, ``5m3s``, ``3h``, ``2d4h``, ``40d``).

    A clock up to two seconds behind counts as now; more than that is ``<invalid>``.
    """
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(timestamp: str | None, now: float | None = None) -> str:
    """The age of an RFC 3339 timestamp (an object's creationTimestamp); ``<unknown>`` without one."""
    if not timestamp:
        return "<unknown>"
    try:
        at = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "<unknown>"
    return human_age((time.time() if now is None else now) - at)


def age_ns(at_ns: int, now: float | None = None) -> str:
    if not at_ns:
        return "<unknown>"
    return human_age((time.time() if now is None else now) - at_ns / 1e9)


def rfc3339_ns(at_ns: int) -> str:
    """``2024-05-01T10:00:00.123Z``: RFC 3339 in UTC, to the millisecond (events come close together)."""
    stamp = datetime.fromtimestamp(at_ns / 1e9, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
