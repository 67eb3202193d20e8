"""An object's event log, told three ways: ``volctl history`` lines, and describe's
``Events:`` (kubectl's table of recorded events) and ``Timeline:`` (every change).

    print(history_table(client.history("pvc", "data", "default")))
    # SEQ   TIME                       TYPE            BY       DETAIL
    # 41    2024-05-01T10:00:00.120Z   ObjectCreated   volctl   created
    # 44    2024-05-01T10:00:00.350Z   ObjectChanged   pv-controller   bind {"spec":{"volumeName":"pvc-1"}}
"""

from __future__ import annotations

import json
from typing import Any

from volctl.client import Entry
from volctl.tables import age_ns, rfc3339_ns, table

__all__ = ["cell", "compact", "detail", "events_section", "history_json", "history_table", "timeline_section"]

RECORDED = "EventRecorded"


def cell(text: Any) -> str:
    """Text safe in one describe cell: tabs and newlines would start new cells and lines."""
    return " ".join(str(text).split()) if any(c in str(text) for c in "\t\n\r") else str(text)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


def by(entry: Entry) -> str:
    """Who wrote the entry: the manager of an object event, the source of a recorded one."""
    return str(entry.fields.get("source" if entry.type == RECORDED else "manager", ""))


def detail(entry: Entry) -> str:
    """What the entry says: the patch of a change, the words of a recorded event."""
    f = entry.fields
    if entry.type == "ObjectCreated":
        return "created"
    if entry.type == "ObjectDeleted":
        return "deleted"
    if entry.type == "ObjectChanged":
        reason = f.get("reason") or ""
        return f"{reason} {compact(f.get('patch', {}))}" if reason else compact(f.get("patch", {}))
    if entry.type == RECORDED:
        return f"{f.get('event_type', 'Normal')} {f.get('reason', '')}: {f.get('message', '')}"
    return compact(f)


def history_table(entries: list[Entry]) -> str:
    rows = [["SEQ", "TIME", "TYPE", "BY", "DETAIL"]]
    rows += [[str(e.seq), rfc3339_ns(e.at_ns) if e.at_ns else "", e.type, cell(by(e)), cell(detail(e))] for e in entries]
    return table(rows)


def history_json(entries: list[Entry]) -> str:
    out = [
        {"seq": e.seq, "type": e.type, "time": rfc3339_ns(e.at_ns) if e.at_ns else None, "at_ns": e.at_ns,
         **{k: v for k, v in e.fields.items() if k != "type"}}
        for e in entries
    ]
    return json.dumps(out, indent=4)


def events_section(entries: list[Entry], now: float) -> str:
    """kubectl describe's ``Events:``: recorded events, repeats folded into one line
    (``5s (x3 over 1m)``), oldest last-seen first; tab-separated for describe_block."""
    folded: dict[tuple[str, str, str, str], list[int]] = {}  # key → [count, first_ns, last_ns]
    for e in entries:
        if e.type != RECORDED:
            continue
        f = e.fields
        key = (f.get("event_type", "Normal"), cell(f.get("reason", "")), cell(f.get("source", "")), cell(str(f.get("message", "")).strip()))
        seen = folded.setdefault(key, [0, e.at_ns, e.at_ns])
        seen[0] += 1
        seen[2] = e.at_ns
    if not folded:
        return "Events:\t<none>"
    lines = ["Events:", "  Type\tReason\tAge\tFrom\tMessage", "  ----\t------\t----\t----\t-------"]
    for (kind, reason, source, message), (count, first, last) in sorted(folded.items(), key=lambda kv: kv[1][2]):
        when = age_ns(last, now) if count == 1 else f"{age_ns(last, now)} (x{count} over {age_ns(first, now)})"
        lines.append(f"  {kind}\t{reason}\t{when}\t{source}\t{message}")
    return "\n".join(lines)


def timeline_section(entries: list[Entry], now: float) -> str:
    """volplane's addition to describe: every event of the object itself, oldest first,
    each change with its merge patch — the object's whole story, not just its warnings."""
    changes = [e for e in entries if e.type != RECORDED]
    if not changes:
        return "Timeline:\t<none>"
    lines = ["Timeline:", "  Seq\tAge\tType\tManager\tReason\tChange", "  ---\t---\t----\t-------\t------\t------"]
    for e in changes:
        change = compact(e.fields.get("patch", {})) if e.type == "ObjectChanged" else detail(e)
        lines.append(f"  {e.seq}\t{age_ns(e.at_ns, now)}\t{e.type}\t{cell(by(e))}\t{cell(e.fields.get('reason', ''))}\t{cell(change)}")
    return "\n".join(lines)
