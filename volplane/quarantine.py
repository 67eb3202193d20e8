"""Events no reader can use: recorded with their position and reason, skipped, never retried.

The log is the truth, and anyone allowed to append to a subject can append bytes that no
reader can decode (bad msgpack, an unknown event type, fields of the wrong type), name an
object kind that does not exist, or make a domain ``evolve`` raise. Such an event must
not stop its reader: a projection that retried it would stay at that position forever
and its service would never become healthy again. So every reader of the log (each
projection runner, the informer, the aggregates' folds) turns the failure into a
``Quarantined`` record and moves past the event:

    try:
        state = projection.evolve(state, record)
    except Exception as exc:                        # any failure to decode or apply
        poison = Quarantined.of("objects", record, exc)
        ops = [poison.op()]                         # HSET vp:quarantine:objects <seq> <json>,
                                                    # written in the same Lua call as the position
    poison.report()                                 # one log line, volplane_events_quarantined_total

    records = await quarantined(redis)              # make rebuild --check, the resource API, volctl
    records = await quarantined(redis, reader="objects")

A record holds only what the log determines (reader, sequence, subject, event type,
reason), never a clock, so replaying the log — a second replica, a restart from an older
position, ``make rebuild`` — writes the same bytes at the same key, and the canonical
dump before and after a rebuild compares equal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from volplane.eventstore import Record
from volplane.telemetry import counter

__all__ = ["KEY_PREFIX", "Quarantined", "Undecodable", "identify", "quarantine_key", "quarantined", "reason_of"]

log = logging.getLogger(__name__)

# Under ``vp:``, so ``make rebuild`` drops and replays these records with the read models.
KEY_PREFIX = "vp:quarantine:"
# A reason is one line of at most this many characters: a hostile event must not be able
# to write megabytes into Redis or into a log line.
_REASON_LIMIT = 300
_SUBJECT_LIMIT = 256
_TYPE_LIMIT = 64

QUARANTINED = counter(
    "volplane_events_quarantined_total",
    "Events a reader of the log could not decode or apply, recorded and skipped.",
    ("service", "reader"),
)

_service = "volplane"


def identify(service: str) -> None:
    """Name this process's service in the metric's ``service`` label (``run_service`` does it)."""
    global _service
    _service = service


class Undecodable(ValueError):
    """Stored bytes that are not an event a reader can use, with the reason in words."""


def quarantine_key(reader: str) -> str:
    return f"{KEY_PREFIX}{reader}"


def _clip(text: str, limit: int) -> str:
    line = " ".join(text.split())
    if not line.isprintable():
        line = line.encode("ascii", "backslashreplace").decode()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reason_of(exc: BaseException) -> str:
    """Why an event was quarantined, on one line and the same on every replay.

    A pydantic error is summarized by its first errors' locations and messages (its full
    text carries input values and documentation links); anything else is its type and text.
    """
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors(include_url=False, include_input=False)[:3]]
        more = exc.error_count() - len(parts)
        # The title of a union names every member; the locations name the one that failed.
        title = exc.title if len(exc.title) <= 40 else "event"
        text = f"invalid {title}: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    elif isinstance(exc, Undecodable):
        text = str(exc)
    else:
        text = ": ".join(t for t in (type(exc).__name__, str(exc)) if t)
        if type(exc).__module__.startswith("msgpack"):
            text = f"not msgpack ({text})"
    return _clip(text, _REASON_LIMIT)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One event a reader skipped: where it is in the log and why it was skipped."""

    reader: str
    seq: int
    subject: str
    type: str
    reason: str

    @classmethod
    def of(cls, reader: str, record: Record, exc: BaseException) -> Quarantined:
        return cls(
            reader=reader,
            seq=record.seq,
            subject=_clip(record.subject, _SUBJECT_LIMIT),
            type=_clip(record.type, _TYPE_LIMIT),
            reason=reason_of(exc),
        )

    def to_bytes(self) -> bytes:
        # Sorted keys and no clock: the same event gives the same bytes on every replay.
        return json.dumps({"subject": self.subject, "type": self.type, "reason": self.reason}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, reader: str, seq: int, raw: bytes | str) -> Quarantined:
        fields = json.loads(raw)
        return cls(reader=reader, seq=seq, subject=fields.get("subject", ""), type=fields.get("type", ""), reason=fields.get("reason", ""))

    def op(self) -> tuple[str, str, int, bytes]:
        """The Redis write that records it, for a projection's batch (applied once, with the position)."""
        return ("HSET", quarantine_key(self.reader), self.seq, self.to_bytes())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report(self, *, replayed: bool = False) -> None:
        """One log line and one count, once the record is written (or, for a reader that
        keeps no read model, once the event is skipped). ``replayed``: a reader that replays
        the log on every start says it at debug level, not again on each restart."""
        QUARANTINED.labels(_service, self.reader).inc()
        log.log(
            logging.DEBUG if replayed else logging.WARNING,
            "quarantined event %d on %s for %s: %s",
            self.seq,
            self.subject,
            self.reader,
            self.reason,
            extra={"reader": self.reader, "seq": self.seq, "subject": self.subject, "event_type": self.type, "reason": self.reason},
        )


async def quarantined(redis: aioredis.Redis, reader: str | None = None) -> list[Quarantined]:
    """Every quarantined event the read models hold (or only ``reader``'s), by reader, then
    sequence: ``await quarantined(redis)``."""
    keys = [quarantine_key(reader).encode()] if reader is not None else await _keys(redis)
    out: list[Quarantined] = []
    for key in keys:
        name = key.decode()[len(KEY_PREFIX) :]
        fields = await redis.hgetall(key)
        out.extend(Quarantined.from_bytes(name, int(seq), raw) for seq, raw in fields.items())
    return sorted(out, key=lambda q: (q.reader, q.seq))


async def _keys(redis: aioredis.Redis) -> list[bytes]:
    return sorted([k if isinstance(k, bytes) else k.encode() async for k in redis.scan_iter(match=f"{KEY_PREFIX}*", count=1000)])
