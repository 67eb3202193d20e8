"""The provisioner's volume aggregate: resolve_size, decide_create/decide_delete, evolve.

Domain tests read given events / when command / then events: the state is always built
by folding real events through ``evolve``, never constructed by hand.
"""

from __future__ import annotations

from functools import reduce

import pytest
from pydantic import ValidationError

from services.provisioner.domain.events import (
    VolumeCreated,
    VolumeCreateFailed,
    VolumeCreating,
    VolumeDeleted,
    VolumeDeleting,
    VolumeEvent,
)
from services.provisioner.domain.volume import (
    DEFAULT_SIZE,
    MIN_SIZE,
    MiB,
    VolumeState,
    decide_create,
    decide_delete,
    evolve,
    fs_type_of,
    minimum_size,
    resolve_size,
    volume_id_for,
)
from volplane.commands import Capability, CreateVolume
from volplane.errors import AlreadyExists, InvalidArgument, OperationPending, OutOfRange
from volplane.volumes import check_access_mode

NAME = "pvc-0f4c"
VID = volume_id_for(NAME)
POOL = "default"
MOUNT = Capability(access_type="mount", fs_type="ext4", access_mode=1)
BLOCK = Capability(access_type="block", access_mode=1)


def given(*events: VolumeCreating | VolumeCreated | VolumeCreateFailed | VolumeDeleting | VolumeDeleted) -> VolumeState | None:
    """The state after ``events``, numbered 1, 2, 3… as the stream would number them."""
    return reduce(lambda s, pair: evolve(s, pair[1], pair[0]), enumerate(events, start=1), None)


def creating(size: int = DEFAULT_SIZE, caps: tuple[Capability, ...] = (MOUNT,), params: dict[str, str] | None = None) -> VolumeCreating:
    return VolumeCreating(volume_id=VID, name=NAME, pool=POOL, capacity_bytes=size, capabilities=tuple(c.stored() for c in caps), parameters=params or {})


def create(required: int = 0, limit: int = 0, caps: tuple[Capability, ...] = (MOUNT,), params: dict[str, str] | None = None) -> CreateVolume:
    return CreateVolume(name=NAME, required_bytes=required, limit_bytes=limit, capabilities=caps, parameters=params or {})


def ready(size: int = DEFAULT_SIZE, caps: tuple[Capability, ...] = (MOUNT,), params: dict[str, str] | None = None) -> VolumeState | None:
    return given(creating(size, caps, params), VolumeCreated(volume_id=VID))


# -- resolve_size -------------------------------------------------------------


def test_no_capacity_range_gives_the_default_size() -> None:
    assert resolve_size(0, 0) == DEFAULT_SIZE == 2**30


def test_required_size_is_rounded_up_to_a_whole_mib() -> None:
    assert resolve_size(100 * MiB + 1, 0) == 101 * MiB


def test_required_size_on_a_mib_boundary_is_kept() -> None:
    assert resolve_size(100 * MiB, 0) == 100 * MiB


def test_tiny_required_size_is_raised_to_the_minimum() -> None:
    assert resolve_size(1, 0) == MIN_SIZE


def test_limit_alone_below_the_default_caps_the_size() -> None:
    assert resolve_size(0, 100 * MiB) == 100 * MiB


def test_limit_alone_above_the_default_gives_the_default() -> None:
    assert resolve_size(0, 10 * DEFAULT_SIZE) == DEFAULT_SIZE


def test_required_equal_to_limit_gives_exactly_that_size() -> None:
    assert resolve_size(200 * MiB, 200 * MiB) == 200 * MiB


def test_required_above_limit_is_out_of_range() -> None:
    with pytest.raises(OutOfRange):
        resolve_size(200 * MiB, 100 * MiB)


def test_limit_below_the_minimum_is_out_of_range() -> None:
    with pytest.raises(OutOfRange):
        resolve_size(0, MIN_SIZE - 1)


def test_required_rounding_past_the_limit_is_out_of_range() -> None:
    # No whole-MiB size lies in [100 MiB + 1, 100 MiB + 2].
    with pytest.raises(OutOfRange):
        resolve_size(100 * MiB + 1, 100 * MiB + 2)


def test_unaligned_limit_alone_gives_the_largest_whole_mib_below_it() -> None:
    assert resolve_size(0, 100 * MiB + 1) == 100 * MiB


@pytest.mark.parametrize(("required", "limit"), [(-1, 0), (0, -1), (-MiB, -MiB)])
def test_negative_bytes_are_an_invalid_argument(required: int, limit: int) -> None:
    with pytest.raises(InvalidArgument):
        resolve_size(required, limit)


# -- decide_create ------------------------------------------------------------


def test_create_of_a_new_name_records_the_intent_under_the_id_of_the_name() -> None:
    intent = decide_create(None, create(params={"fsType": "ext4"}), pool=POOL, size=64 * MiB)

    assert isinstance(intent, VolumeCreating)
    assert intent.volume_id == VID == volume_id_for(NAME)
    assert intent.name == NAME
    assert intent.pool == POOL
    assert intent.capacity_bytes == 64 * MiB
    assert intent.capabilities == (MOUNT.stored(),)
    assert intent.parameters == {"fsType": "ext4"}


def test_volume_id_is_32_hex_digits_and_differs_between_names() -> None:
    assert len(VID) == 32 and all(c in "0123456789abcdef" for c in VID)
    assert volume_id_for("pvc-a") != volume_id_for("pvc-b")


def test_second_create_with_same_name_does_nothing_when_ready() -> None:
    assert decide_create(ready(), create(), pool=POOL, size=DEFAULT_SIZE) is None


def test_second_create_while_creating_does_nothing_so_the_caller_finishes_it() -> None:
    assert decide_create(given(creating()), create(), pool=POOL, size=DEFAULT_SIZE) is None


def test_second_create_asking_for_less_than_the_volume_has_is_compatible() -> None:
    assert decide_create(ready(size=200 * MiB), create(required=100 * MiB), pool=POOL, size=100 * MiB) is None


def test_second_create_asking_for_more_than_the_volume_has_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_create(ready(size=100 * MiB), create(required=200 * MiB), pool=POOL, size=200 * MiB)


def test_second_create_with_a_limit_below_the_volume_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_create(ready(size=200 * MiB), create(limit=100 * MiB), pool=POOL, size=100 * MiB)


def test_second_create_with_another_access_type_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_create(ready(caps=(MOUNT,)), create(caps=(BLOCK,)), pool=POOL, size=DEFAULT_SIZE)


def test_second_create_with_other_parameters_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_create(ready(params={"fsType": "ext4"}), create(params={"fsType": "xfs"}), pool=POOL, size=DEFAULT_SIZE)


def test_second_create_without_the_parameters_of_the_first_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_create(ready(params={"tier": "fast"}), create(), pool=POOL, size=DEFAULT_SIZE)


def test_second_create_with_another_fs_type_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_create(
            ready(caps=(Capability(fs_type="ext4"),)),
            create(caps=(Capability(fs_type="xfs"),)),
            pool=POOL,
            size=DEFAULT_SIZE,
        )


def test_create_while_deleting_is_pending() -> None:
    state = given(creating(), VolumeCreated(volume_id=VID), VolumeDeleting(volume_id=VID))
    with pytest.raises(OperationPending):
        decide_create(state, create(), pool=POOL, size=DEFAULT_SIZE)


def test_create_after_delete_records_a_new_intent_on_the_same_id() -> None:
    state = given(creating(size=DEFAULT_SIZE), VolumeCreated(volume_id=VID), VolumeDeleting(volume_id=VID), VolumeDeleted(volume_id=VID))

    intent = decide_create(state, create(required=64 * MiB), pool=POOL, size=64 * MiB)

    assert isinstance(intent, VolumeCreating)
    assert intent.volume_id == VID
    assert intent.capacity_bytes == 64 * MiB


def test_create_after_a_failed_create_records_a_new_intent() -> None:
    state = given(creating(), VolumeCreateFailed(volume_id=VID, reason="disk full"))

    intent = decide_create(state, create(), pool=POOL, size=DEFAULT_SIZE)

    assert isinstance(intent, VolumeCreating)
    assert intent.volume_id == VID


# -- volume rules: fsType precedence, minimum sizes, access modes -------------------


def test_the_capability_fs_type_wins_over_the_fs_type_parameter() -> None:
    assert fs_type_of(create(caps=(Capability(fs_type="ext4"),), params={"fsType": "xfs"})) == "ext4"


def test_the_fs_type_parameter_decides_when_no_capability_names_one() -> None:
    assert fs_type_of(create(caps=(Capability(),), params={"fsType": "xfs"})) == "xfs"


def test_ext4_is_the_default_fs_type() -> None:
    assert fs_type_of(create(caps=(Capability(),))) == fs_type_of(create(caps=(Capability(),), params={"fsType": ""})) == "ext4"


def test_an_unsupported_fs_type_parameter_is_refused_even_under_a_capability_fs_type() -> None:
    with pytest.raises(InvalidArgument, match=r"parameters\.fsType"):
        fs_type_of(create(caps=(Capability(fs_type="ext4"),), params={"fsType": "ntfs"}))


def test_the_minimum_size_follows_the_fs_type_the_volume_gets() -> None:
    assert minimum_size(create(caps=(Capability(fs_type="xfs"),))) == 300 * MiB
    assert minimum_size(create(caps=(Capability(),), params={"fsType": "xfs"})) == 300 * MiB
    assert minimum_size(create(caps=(Capability(fs_type="ext4"),), params={"fsType": "xfs"})) == MIN_SIZE
    assert minimum_size(create(caps=(BLOCK,), params={"fsType": "xfs"})) == MIN_SIZE


@pytest.mark.parametrize("mode", [3, 4, 5, 0, 8])
def test_a_multi_node_or_unknown_access_mode_is_refused(mode: int) -> None:
    with pytest.raises(InvalidArgument):
        check_access_mode("volume_capabilities", mode)


# -- decide_delete ------------------------------------------------------------


def test_delete_of_a_ready_volume_records_the_intent() -> None:
    intent = decide_delete(ready())

    assert isinstance(intent, VolumeDeleting)
    assert intent.volume_id == VID


def test_delete_of_an_unknown_volume_does_nothing() -> None:
    assert decide_delete(None) is None


def test_delete_of_a_deleted_volume_does_nothing() -> None:
    state = given(creating(), VolumeCreated(volume_id=VID), VolumeDeleting(volume_id=VID), VolumeDeleted(volume_id=VID))
    assert decide_delete(state) is None


def test_delete_of_a_failed_volume_does_nothing() -> None:
    assert decide_delete(given(creating(), VolumeCreateFailed(volume_id=VID, reason="x"))) is None


def test_delete_while_creating_is_pending() -> None:
    with pytest.raises(OperationPending):
        decide_delete(given(creating()))


# -- evolve -------------------------------------------------------------------


def test_a_whole_life_walks_the_phases_and_tracks_the_stream_sequence() -> None:
    first = creating(size=64 * MiB, params={"fsType": "ext4"})
    events: list[tuple[VolumeEvent, str]] = [
        (first, "creating"),
        (VolumeCreated(volume_id=VID), "ready"),
        (VolumeDeleting(volume_id=VID), "deleting"),
        (VolumeDeleted(volume_id=VID), "deleted"),
    ]
    state: VolumeState | None = None
    for seq, (event, phase) in zip((3, 7, 8, 12), events, strict=True):
        state = evolve(state, event, seq)
        assert state is not None
        assert (state.phase, state.version) == (phase, seq)
        # Facts recorded by the intent survive every later event.
        assert (state.volume_id, state.name, state.pool, state.capacity_bytes) == (VID, NAME, POOL, 64 * MiB)
        assert state.capabilities == (MOUNT.stored(),)
        assert state.parameters == {"fsType": "ext4"}
        assert state.created_at == first.at


def test_a_failed_create_ends_in_the_failed_phase() -> None:
    state = given(creating(), VolumeCreateFailed(volume_id=VID, reason="no space"))
    assert state is not None
    assert (state.phase, state.version) == ("failed", 2)


def test_a_new_incarnation_replaces_the_deleted_state() -> None:
    again = creating(size=128 * MiB)
    state = given(creating(size=64 * MiB), VolumeCreated(volume_id=VID), VolumeDeleting(volume_id=VID), VolumeDeleted(volume_id=VID), again)
    assert state is not None
    assert (state.phase, state.version, state.capacity_bytes, state.created_at) == ("creating", 5, 128 * MiB, again.at)


def test_state_is_frozen() -> None:
    state = ready()
    assert state is not None
    with pytest.raises(ValidationError):
        state.phase = "deleted"  # type: ignore[misc]  # assigning to a frozen field is what this test tries


def test_evolve_refuses_an_event_of_another_aggregate() -> None:
    from services.nodeagent.domain.events import VolumeUnstaged

    with pytest.raises(TypeError):
        evolve(ready(), VolumeUnstaged(volume_id=VID), 3)  # type: ignore[arg-type]  # another aggregate's event, on purpose
