"""What makes an event poison, and what its quarantine record says (volplane.quarantine).

The readers themselves (projections, informers, aggregates) are tested against a real
stack in tests/integration/test_poison.py and tests/fuzz/test_fuzz_poison.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.provisioner.domain.events import VOLUME_EVENTS
from volplane import codec
from volplane.eventstore import Record
from volplane.nodes import NodesProjection
from volplane.quarantine import Quarantined, Undecodable, quarantine_key, reason_of
from volplane.resources.events import ObjectChanged, ObjectCreated
from volplane.resources.informer import Informer
from volplane.resources.kinds import ref_of_subject, resolve
from volplane.resources.store import object_of

SC = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": "x"}


def record(subject: str, data: bytes, seq: int = 7, type: str = "") -> Record:
    return Record(seq=seq, subject=subject, type=type, data=data)


def reason(call: Any) -> str:
    with pytest.raises(Exception) as info:
        call()
    return reason_of(info.value)


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("vp.ev.res.persistentvolume._.x", "unknown kind 'persistentvolume'"),
        ("vp.ev.res.pv.default.x", "PersistentVolume is cluster-scoped"),
        ("vp.ev.res.pvc._.x", "PersistentVolumeClaim is namespaced"),
        ("vp.ev.res.pv._", "is not an object's subject"),
        ("vp.ev.res.pv._.a.b", "is not an object's subject"),
        ("vp.ev.res.pv._.UPPER", "no PersistentVolume can be named"),
    ],
)
def test_a_subject_of_no_object_is_undecodable(subject: str, why: str) -> None:
    with pytest.raises(Undecodable, match=why):
        ref_of_subject(subject)


def test_object_subjects_still_map_to_their_refs() -> None:
    assert str(ref_of_subject("vp.ev.res.pvc.default.data")) == "PersistentVolumeClaim/default/data"
    assert ref_of_subject("vp.ev.res.sc._.a~b").name == "a.b"


def test_an_object_event_must_hold_a_valid_object_of_its_subject() -> None:
    good = codec.encode(ObjectCreated(object=SC, manager="t"))
    kind, obj = object_of(record("vp.ev.res.sc._.fast", good))
    assert (kind, obj["metadata"]["resourceVersion"]) == ("ObjectCreated", "7")
    assert "does not belong on vp.ev.res.sc._.slow" in reason(lambda: object_of(record("vp.ev.res.sc._.slow", good)))
    assert "does not belong" in reason(lambda: object_of(record("vp.ev.res.pv._.fast", good)))
    bad = codec.encode(ObjectChanged(object={**SC, "metadata": {"name": 7}}, patch={}, manager="t"))
    assert "not a valid object" in reason(lambda: object_of(record("vp.ev.res.sc._.fast", bad)))
    status = codec.encode(ObjectChanged(object={**SC, "status": "x"}, patch={}, manager="t"))
    assert "status: not a mapping" in reason(lambda: object_of(record("vp.ev.res.sc._.fast", status)))
    assert "not msgpack" in reason(lambda: object_of(record("vp.ev.res.sc._.fast", b"\xc1")))


def test_reasons_are_one_short_line_and_the_same_every_time() -> None:
    data = codec.pack({"type": "VolumeCreated", "volume_id": 5, "at": "x" * 10_000, "extra\n": "y"})
    first = reason(lambda: codec.decode(VOLUME_EVENTS, data))
    assert first == reason(lambda: codec.decode(VOLUME_EVENTS, data))
    assert first.startswith("invalid event: VolumeCreated.") and "\n" not in first and len(first) <= 300
    assert reason(lambda: codec.decode(VOLUME_EVENTS, b"")).startswith("ValueError")


def test_a_record_is_stored_the_same_on_every_replay() -> None:
    poison = Quarantined.of("objects", record("vp.ev.res.x._.y", b"{}", seq=12, type="Nope"), Undecodable("unknown kind 'x'"))
    op = poison.op()
    assert op[:3] == ("HSET", quarantine_key("objects"), 12)
    assert op == Quarantined.of("objects", record("vp.ev.res.x._.y", b"{}", seq=12, type="Nope"), Undecodable("unknown kind 'x'")).op()
    assert Quarantined.from_bytes("objects", 12, op[3]) == poison


def test_a_registration_must_name_the_node_of_its_subject() -> None:
    other = codec.pack({"type": "NodeRegistered", "node_id": "node-2", "topology": {}})
    with pytest.raises(Undecodable, match="node-2"):
        NodesProjection().evolve(None, record("vp.ev.nodeinfo.node-1", other))


def test_the_informer_skips_poison_and_moves_the_object_to_its_version() -> None:
    informer = Informer(store=None)  # type: ignore[arg-type]  # _skip and _put touch no store
    changes: list[tuple[str, str]] = []
    informer.on_change(lambda kind, old, new: changes.append((kind.name, (new or {}).get("metadata", {}).get("resourceVersion", ""))))
    informer._put(ref_of_subject("vp.ev.res.sc._.fast"), {**SC, "metadata": {"name": "fast", "resourceVersion": "3"}}, 3)
    informer._skip(record("vp.ev.res.sc._.fast", b"\xc1", seq=9), ValueError("bad"))
    informer._skip(record("vp.ev.res.nosuch._.fast", b"{}", seq=10), ValueError("bad"))
    got = informer.get(resolve("sc"), "fast")
    assert got is not None and got["metadata"]["resourceVersion"] == "9" and got["provisioner"] == "x"
    assert changes == [("StorageClass", "3"), ("StorageClass", "9")]
    assert informer.skipped == 2
