"""The volume aggregate's I/O limits: given events, when ModifyVolume, then the intent (or none)."""

from __future__ import annotations

import pytest

from services.provisioner.domain.events import VolumeCreated, VolumeCreating, VolumeDeleting, VolumeEvent, VolumeModified, VolumeModifying
from services.provisioner.domain.volume import VolumeState, decide_modify, evolve
from volplane.errors import InvalidArgument, NotFound
from volplane.ids import volume_id_for
from volplane.volumes import StoredCapability, format_io_limits, io_limits

VID = volume_id_for("pvc-qos")


def given(*events: VolumeEvent) -> VolumeState | None:
    state: VolumeState | None = None
    for seq, event in enumerate(events, 1):
        state = evolve(state, event, seq)
    return state


CREATED = (VolumeCreating(volume_id=VID, name="pvc-qos", pool="shared", capacity_bytes=2**30, capabilities=(StoredCapability(),)), VolumeCreated(volume_id=VID))


def test_new_limits_are_the_intent_with_the_whole_set() -> None:
    state = given(*CREATED, VolumeModifying(volume_id=VID, limits={"writeIOPS": 50}), VolumeModified(volume_id=VID))
    intent = decide_modify(state, VID, {"readBytesPerSecond": "1Mi"})
    assert intent is not None and intent.limits == {"writeIOPS": 50, "readBytesPerSecond": 2**20}


def test_limits_the_volume_has_already_are_no_intent() -> None:
    state = given(*CREATED, VolumeModifying(volume_id=VID, limits={"writeIOPS": 50}), VolumeModified(volume_id=VID))
    assert decide_modify(state, VID, {"writeIOPS": "50"}) is None


def test_a_modify_left_without_its_result_is_decided_again() -> None:
    state = given(*CREATED, VolumeModifying(volume_id=VID, limits={"writeIOPS": 50}))
    assert state is not None and state.modifying
    intent = decide_modify(state, VID, {"writeIOPS": "50"})
    assert intent is not None and intent.limits == {"writeIOPS": 50}


def test_zero_takes_a_limit_off() -> None:
    state = given(*CREATED, VolumeModifying(volume_id=VID, limits={"writeIOPS": 50, "readIOPS": 10}), VolumeModified(volume_id=VID))
    intent = decide_modify(state, VID, {"writeIOPS": "0"})
    assert intent is not None and intent.limits == {"readIOPS": 10}
    after = evolve(state, intent, 9)
    assert after is not None and after.limits == {"readIOPS": 10} and after.modified


@pytest.mark.parametrize("events", [(), (*CREATED, VolumeDeleting(volume_id=VID))], ids=["never-created", "being-deleted"])
def test_a_volume_that_is_not_there_is_not_found(events: tuple[VolumeEvent, ...]) -> None:
    with pytest.raises(NotFound):
        decide_modify(given(*events), VID, {"writeIOPS": "5"})


def test_an_unknown_key_is_invalid_argument_even_for_an_unknown_volume() -> None:
    with pytest.raises(InvalidArgument, match="unknown key"):
        decide_modify(None, VID, {"iops": "5"})


def test_limits_round_trip_through_their_parameters() -> None:
    limits = io_limits({"readIOPS": "7", "writeBytesPerSecond": "2Ki", "writeIOPS": "0"})
    assert io_limits(format_io_limits(limits)) == {"readIOPS": 7, "writeBytesPerSecond": 2048}
