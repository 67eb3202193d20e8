"""A log written before events had schema versions still loads (tests/fixtures/README.md).

    every line of eventlog-v0.jsonl → codec.decode(adapter of its subject) → evolve → sane state

The fixture is the whole stream of one real run of the stack, recorded from commit
a61f1d9. If a stored field were renamed, dropped or retyped, or a type renamed, the
decoders here refuse its lines (events forbid unknown fields and require theirs) or the
re-encoded event no longer holds what was stored; a shape that changes on purpose needs
an upcaster (volplane.events) and keeps these tests green.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from services.attacher.domain.attachment import AttachmentState
from services.attacher.domain.attachment import evolve as evolve_attachment
from services.attacher.domain.events import ATTACHMENT_EVENTS
from services.nodeagent.domain.events import NODE_VOLUME_EVENTS
from services.nodeagent.domain.volume import NodeVolumeState, is_idle
from services.nodeagent.domain.volume import evolve as evolve_node_volume
from services.provisioner.domain.events import SNAPSHOT_EVENTS, VOLUME_EVENTS
from services.provisioner.domain.snapshot import SnapshotState, evolve_snapshot, snapshot_id_for
from services.provisioner.domain.volume import VolumeState, evolve, volume_id_for
from volplane import codec, subjects
from volplane.events import VERSION_KEY, Event
from volplane.eventstore import Record
from volplane.nodes import NodeInfo, NodeRegistered, NodesProjection
from volplane.resources.events import OBJECT_EVENTS, RECORDED
from volplane.volumes import StoredCapability, StoredContentSource

FIXTURE = Path(__file__).parent.parent / "fixtures" / "eventlog-v0.jsonl"
NODE_INFO: TypeAdapter[NodeRegistered] = TypeAdapter(NodeRegistered)

# Subject prefix → the decoder the services use for it today; nodeinfo before node.
DECODERS: list[tuple[str, TypeAdapter[Any]]] = [
    ("vp.ev.volume.", VOLUME_EVENTS),
    ("vp.ev.snapshot.", SNAPSHOT_EVENTS),
    ("vp.ev.attachment.", ATTACHMENT_EVENTS),
    ("vp.ev.nodeinfo.", NODE_INFO),
    ("vp.ev.node.", NODE_VOLUME_EVENTS),
    ("vp.ev.res.", OBJECT_EVENTS),
    ("vp.ev.rec.", RECORDED),
]

# The fixture's README, "Event types (192 events)".
TYPE_COUNTS = {
    "NodeRegistered": 2,
    "VolumeCreating": 9, "VolumeCreated": 8, "VolumeCreateFailed": 1, "VolumeExpanding": 4, "VolumeExpanded": 3,
    "VolumeExpandFailed": 1, "VolumeDeleting": 8, "VolumeDeleted": 8,
    "SnapshotCreating": 2, "SnapshotCreated": 1, "SnapshotCreateFailed": 1, "SnapshotDeleting": 1, "SnapshotDeleted": 1,
    "VolumeAttached": 5, "VolumeDetached": 5,
    "VolumeStaging": 5, "VolumeStaged": 4, "VolumeStageFailed": 1, "VolumeUnstaging": 4, "VolumeUnstaged": 4,
    "VolumePublishing": 6, "VolumePublished": 5, "VolumePublishFailed": 1, "VolumeUnpublishing": 5, "VolumeUnpublished": 5,
    "VolumeExpandingOnNode": 3, "VolumeExpandedOnNode": 2, "VolumeExpandOnNodeFailed": 1,
    "ObjectCreated": 15, "ObjectChanged": 43, "ObjectDeleted": 14, "EventRecorded": 14,
}


@dataclass(frozen=True)
class Line:
    seq: int
    subject: str
    type: str  # the Vp-Event-Type header
    data: bytes

    @property
    def record(self) -> Record:
        return Record(seq=self.seq, subject=self.subject, type=self.type, data=self.data)


@cache
def lines() -> tuple[Line, ...]:
    out = []
    for text in FIXTURE.read_text().splitlines():
        row = json.loads(text)
        out.append(Line(row["seq"], row["subject"], row["headers"][subjects.EVENT_TYPE], base64.b64decode(row["data_b64"])))
    return tuple(out)


def decoder_for(subject: str) -> TypeAdapter[Any]:
    return next(adapter for prefix, adapter in DECODERS if subject.startswith(prefix))


def decoded(line: Line) -> Event:
    event: Event = codec.decode(decoder_for(line.subject), line.data)
    return event


def test_the_fixture_is_the_whole_stream_in_order() -> None:
    assert [line.seq for line in lines()] == list(range(1, 193))
    assert Counter(line.type for line in lines()) == TYPE_COUNTS


@pytest.mark.parametrize("line", lines(), ids=lambda line: f"{line.seq}-{line.type}")
def test_every_stored_event_decodes_as_the_type_its_header_names(line: Line) -> None:
    event = decoded(line)

    assert event.type == line.type  # type: ignore[attr-defined]  # every concrete event has its literal type
    # Nothing stored is lost or changed on the way in: every stored field comes back out
    # with its value (a field added later with a default may come back too).
    stored = codec.unpack(line.data)
    again = event.model_dump()
    assert VERSION_KEY not in stored  # written before schema versions: version 1
    assert {k: _plain(again.get(k)) for k in stored} == _plain(stored)


def test_every_event_of_the_fixture_is_still_at_schema_version_1() -> None:
    # The bytes of today's version-1 events are those of the fixture: an old reader still reads new logs.
    for line in lines():
        assert codec.encode(decoded(line)) == line.data, line


def _plain(value: Any) -> Any:
    """Lists and tuples alike: msgpack gives lists where the models keep tuples."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- replay through the pure evolve functions ------------------------------------


def _replay() -> dict[str, Any]:
    """Each aggregate's state after the whole fixture, by subject, folded with today's evolve."""
    states: dict[str, Any] = {}
    nodes = NodesProjection()
    for line in lines():
        s, state = line.subject, states.get(line.subject)
        if s.startswith("vp.ev.volume."):
            states[s] = evolve(state, codec.decode(VOLUME_EVENTS, line.data), line.seq)
        elif s.startswith("vp.ev.snapshot."):
            states[s] = evolve_snapshot(state, codec.decode(SNAPSHOT_EVENTS, line.data), line.seq)
        elif s.startswith("vp.ev.attachment."):
            states[s] = evolve_attachment(state, codec.decode(ATTACHMENT_EVENTS, line.data), line.seq)
        elif s.startswith("vp.ev.nodeinfo."):
            states[s] = nodes.evolve(state, line.record)
        elif s.startswith("vp.ev.node."):
            states[s] = evolve_node_volume(state, codec.decode(NODE_VOLUME_EVENTS, line.data), line.seq)
        elif s.startswith("vp.ev.res."):
            event = codec.decode(OBJECT_EVENTS, line.data)
            states[s] = None if event.type == "ObjectDeleted" else event.object
    return states


def _of(kind: type, states: dict[str, Any]) -> list[Any]:
    return [s for s in states.values() if isinstance(s, kind)]


def test_replayed_volumes_are_all_gone_but_the_failed_clone() -> None:
    volumes = {v.name: v for v in _of(VolumeState, _replay())}

    assert sorted(n for n in volumes if not n.startswith("pvc-")) == [
        "fx-block", "fx-broken", "fx-broken-clone", "fx-clone", "fx-params", "fx-plain", "fx-restored",
    ]
    assert len(volumes) == 9
    assert [n for n, v in volumes.items() if v.phase not in ("deleted", "failed")] == []  # live volumes: none
    assert [n for n, v in volumes.items() if v.phase == "failed"] == ["fx-broken-clone"]
    for name, volume in volumes.items():
        assert volume.volume_id == volume_id_for(name)


def test_replayed_volumes_keep_their_capabilities_parameters_and_sources() -> None:
    volumes = {v.name: v for v in _of(VolumeState, _replay())}

    params = volumes["fx-params"]
    assert params.parameters == {"pool": "local", "fsType": "ext4"}
    assert params.pool == "node-1"
    assert params.capabilities == (
        StoredCapability(access_type="mount", fs_type="ext4", mount_flags=("noatime", "nodev"), access_mode=1),
        StoredCapability(access_type="mount", fs_type="ext4", access_mode=7),
    )
    assert volumes["fx-block"].capabilities == (StoredCapability(access_type="block"),)
    assert volumes["fx-restored"].content_source == StoredContentSource(kind="snapshot", id=snapshot_id_for("fx-snap"))
    assert volumes["fx-clone"].content_source == StoredContentSource(kind="volume", id=volume_id_for("fx-params"))
    assert volumes["fx-broken-clone"].content_source == StoredContentSource(kind="volume", id=volume_id_for("fx-broken"))
    # fx-plain grew from 64 MiB to 128 MiB; fx-broken's expansion failed and left it as it was.
    assert (volumes["fx-plain"].capacity_bytes, volumes["fx-broken"].capacity_bytes) == (128 << 20, 32 << 20)


def test_at_most_seven_volumes_were_live_at_once() -> None:
    states: dict[str, VolumeState | None] = {}
    peak = 0
    for line in lines():
        if line.subject.startswith("vp.ev.volume."):
            states[line.subject] = evolve(states.get(line.subject), codec.decode(VOLUME_EVENTS, line.data), line.seq)
            peak = max(peak, sum(1 for v in states.values() if v is not None and v.phase not in ("deleted", "failed")))
    assert peak == 7


def test_replayed_snapshots_attachments_and_node_volumes_are_settled() -> None:
    states = _replay()

    snapshots = {s.name: s.phase for s in _of(SnapshotState, states)}
    assert snapshots == {"fx-snap": "deleted", "fx-broken-snap": "failed"}
    attachments = _of(AttachmentState, states)
    assert len(attachments) == 5 and all(a.attachments == () for a in attachments)
    node_volumes = _of(NodeVolumeState, states)
    assert len(node_volumes) == 4 and all(is_idle(v) for v in node_volumes)
    assert all(s.startswith(subjects.node_events("node-1")[:-1]) for s, v in states.items() if isinstance(v, NodeVolumeState))


def test_replayed_node_registration_is_the_second_one() -> None:
    (node,) = _of(NodeInfo, _replay())
    assert (node.node_id, node.max_volumes, node.version) == ("node-1", 64, max(line.seq for line in lines() if line.type == "NodeRegistered"))
    assert {p.name for p in node.pools} >= {"shared"}


def test_replayed_objects_leave_only_the_registered_node() -> None:
    states = _replay()
    objects = {s: o for s, o in states.items() if s.startswith("vp.ev.res.")}

    kinds = {o["kind"] for o in objects.values() if o is not None}
    assert kinds == {"Node"}
    assert {s.split(".")[3] for s in objects} == {"csidriver", "node", "pod", "pv", "pvc", "sc", "va"}
    reasons = Counter((e.event_type, e.reason) for e in (codec.decode(RECORDED, line.data) for line in lines() if line.subject.startswith("vp.ev.rec.")))
    assert reasons[("Warning", "ProvisioningFailed")] == 1
    assert sum(reasons.values()) == 14


def test_a_renamed_stored_field_would_be_refused() -> None:
    # What a rename in code looks like from the log's side: a field the model no longer knows.
    line = next(x for x in lines() if x.type == "VolumeCreating")
    stored = codec.unpack(line.data)
    stored["caps"] = stored.pop("capabilities")
    with pytest.raises(ValueError):
        codec.decode(VOLUME_EVENTS, codec.pack(stored))
