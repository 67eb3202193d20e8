"""The nodeagent's node-volume aggregate: path and capability checks, decide_*, evolve.

Domain tests read given events / when command / then events: states are folded from
real events through ``evolve``, never built by hand.
"""

from __future__ import annotations

from functools import reduce

import pytest

from services.nodeagent.domain.events import (
    NodeVolumeEvent,
    VolumePublished,
    VolumePublishFailed,
    VolumePublishing,
    VolumeStaged,
    VolumeStageFailed,
    VolumeStaging,
    VolumeUnpublished,
    VolumeUnpublishing,
    VolumeUnstaged,
    VolumeUnstaging,
)
from services.nodeagent.domain.volume import (
    MAX_PATH,
    NodeVolumeState,
    check_capability,
    check_path,
    decide_publish,
    decide_stage,
    decide_unpublish,
    decide_unstage,
    evolve,
    is_idle,
)
from volplane.commands import Capability, PublishVolume, StageVolume
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, OperationPending

VID = "0123456789abcdef0123456789abcdef"
STAGING = "/var/lib/kubelet/plugins/volplane/staging/v1"
TARGET = "/var/lib/kubelet/pods/p1/volumes/v1"
OTHER_TARGET = "/var/lib/kubelet/pods/p2/volumes/v1"
DEVICE = "/dev/loop7"
CAP = Capability(access_type="mount", fs_type="ext4", mount_flags=("noatime",), access_mode=1)


def given(*events: NodeVolumeEvent) -> NodeVolumeState | None:
    """The state after ``events``, numbered 1, 2, 3… as the stream would number them."""
    return reduce(lambda s, pair: evolve(s, pair[1], pair[0]), enumerate(events, start=1), None)


def staging(path: str = STAGING, fs: str = "ext4", flags: tuple[str, ...] = ("noatime",)) -> VolumeStaging:
    return VolumeStaging(volume_id=VID, staging_path=path, fs_type=fs, mount_flags=flags)


STAGED: tuple[NodeVolumeEvent, ...] = (staging(), VolumeStaged(volume_id=VID, device=DEVICE, formatted=True))


def published(target: str = TARGET, readonly: bool = False) -> tuple[NodeVolumeEvent, ...]:
    return (
        VolumePublishing(volume_id=VID, target_path=target, readonly=readonly),
        VolumePublished(volume_id=VID, target_path=target),
    )


def stage(path: str = STAGING, cap: Capability = CAP) -> StageVolume:
    return StageVolume(volume_id=VID, staging_path=path, capability=cap)


def publish(target: str = TARGET, readonly: bool = False, cap: Capability = CAP, staging_path: str = STAGING) -> PublishVolume:
    return PublishVolume(volume_id=VID, staging_path=staging_path, target_path=target, capability=cap, readonly=readonly)


# -- check_path ---------------------------------------------------------------


def test_absolute_normalised_path_is_returned_as_is() -> None:
    assert check_path("target_path", TARGET) == TARGET


@pytest.mark.parametrize("text", [TARGET + "/", TARGET + "//"])
def test_trailing_slashes_are_dropped(text: str) -> None:
    assert check_path("target_path", text) == TARGET


@pytest.mark.parametrize("text", ["", "relative/path", "./x", "x"])
def test_empty_or_relative_path_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        check_path("target_path", text)


@pytest.mark.parametrize("text", ["/a/../etc", "/a/..", "/..", "/../etc/passwd", "/a/b/../../.."])
def test_path_with_dotdot_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        check_path("target_path", text)


@pytest.mark.parametrize("text", ["/a/./b", "/a//b", "///a"])
def test_path_that_is_not_normalised_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        check_path("target_path", text)


def test_path_with_a_leading_double_slash_is_normalised_or_refused() -> None:
    try:
        assert check_path("target_path", "/" + TARGET) == TARGET
    except InvalidArgument:
        pass


def test_path_with_nul_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        check_path("target_path", "/a/b\x00/c")


@pytest.mark.parametrize("text", ["/", "//", "///"])
def test_root_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        check_path("target_path", text)


def test_path_of_exactly_max_bytes_is_accepted() -> None:
    text = "/" + "a" * (MAX_PATH - 1)
    assert check_path("target_path", text) == text


def test_path_over_max_bytes_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        check_path("target_path", "/" + "a" * MAX_PATH)


def test_path_length_is_counted_in_bytes_not_characters() -> None:
    text = "/" + "é" * (MAX_PATH // 2)  # 2049 characters, 4097 bytes
    assert len(text) < MAX_PATH
    with pytest.raises(InvalidArgument):
        check_path("target_path", text)


def test_error_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match="staging_target_path"):
        check_path("staging_target_path", "relative")


# -- check_capability ---------------------------------------------------------


def test_block_access_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        check_capability(Capability(access_type="block"))


@pytest.mark.parametrize("fs", ["btrfs", "vfat", "ext3", "EXT4", "ext4 "])
def test_unsupported_fs_type_is_refused(fs: str) -> None:
    with pytest.raises(InvalidArgument):
        check_capability(Capability(fs_type=fs))


@pytest.mark.parametrize("fs", ["", "ext4", "xfs"])
def test_supported_or_default_fs_type_is_accepted(fs: str) -> None:
    check_capability(Capability(fs_type=fs))


@pytest.mark.parametrize("flags", [(), ("noatime",), ("ro", "nodev", "nosuid", "noexec"), ("discard", "lazytime", "sync")])
def test_allowed_mount_flags_are_accepted(flags: tuple[str, ...]) -> None:
    check_capability(Capability(mount_flags=flags))


@pytest.mark.parametrize(
    "flag",
    ["bind", "rbind", "remount", "loop", "x-mount.mkdir", "uid=0", "context=system_u:object_r:etc_t", "noatime,bind", "suid", "dev", "exec"],
)
def test_mount_flags_outside_the_allow_list_are_refused(flag: str) -> None:
    with pytest.raises(InvalidArgument, match="mount_flags"):
        check_capability(Capability(mount_flags=("noatime", flag)))


# -- decide_stage -------------------------------------------------------------


def test_stage_of_a_new_volume_records_the_intent() -> None:
    intent = decide_stage(None, stage(), "ext4")
    assert isinstance(intent, VolumeStaging)
    assert (intent.volume_id, intent.staging_path, intent.fs_type, intent.mount_flags) == (VID, STAGING, "ext4", ("noatime",))


def test_stage_after_unstage_records_a_new_intent() -> None:
    state = given(*STAGED, VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID))
    assert isinstance(decide_stage(state, stage(), "ext4"), VolumeStaging)


def test_stage_after_a_failed_stage_records_a_new_intent() -> None:
    state = given(staging(), VolumeStageFailed(volume_id=VID, reason="no image"))
    assert isinstance(decide_stage(state, stage(), "ext4"), VolumeStaging)


def test_repeated_stage_does_nothing_when_staged() -> None:
    assert decide_stage(given(*STAGED), stage(), "ext4") is None


def test_repeated_stage_does_nothing_when_published() -> None:
    assert decide_stage(given(*STAGED, *published()), stage(), "ext4") is None


def test_stage_at_another_path_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        decide_stage(given(*STAGED), stage(path=STAGING + "-other"), "ext4")


def test_stage_with_another_fs_type_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_stage(given(*STAGED), stage(cap=Capability(fs_type="xfs", mount_flags=("noatime",))), "xfs")


def test_stage_with_other_mount_flags_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_stage(given(*STAGED), stage(cap=Capability(fs_type="ext4", mount_flags=("sync",))), "ext4")


def test_stage_while_unstaging_is_pending() -> None:
    with pytest.raises(OperationPending):
        decide_stage(given(*STAGED, VolumeUnstaging(volume_id=VID)), stage(), "ext4")


# -- decide_unstage -----------------------------------------------------------


def test_unstage_of_a_staged_volume_records_the_intent() -> None:
    intent = decide_unstage(given(*STAGED), STAGING)
    assert isinstance(intent, VolumeUnstaging)
    assert intent.volume_id == VID


def test_unstage_of_an_unknown_volume_does_nothing() -> None:
    assert decide_unstage(None, STAGING) is None


def test_repeated_unstage_does_nothing_when_converged() -> None:
    state = given(*STAGED, VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID))
    assert decide_unstage(state, STAGING) is None


@pytest.mark.parametrize("pending", [(staging(),), (*STAGED, VolumeUnstaging(volume_id=VID))])
def test_unstage_records_nothing_while_an_intent_is_pending(pending: tuple[NodeVolumeEvent, ...]) -> None:
    assert decide_unstage(given(*pending), STAGING) is None


def test_unstage_while_published_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match=TARGET):
        decide_unstage(given(*STAGED, *published()), STAGING)


def test_unstage_at_another_path_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        decide_unstage(given(*STAGED), STAGING + "-other")


# -- decide_publish -----------------------------------------------------------


def test_publish_of_a_staged_volume_records_the_intent() -> None:
    intent = decide_publish(given(*STAGED), publish())
    assert isinstance(intent, VolumePublishing)
    assert (intent.volume_id, intent.target_path, intent.readonly, intent.mount_flags) == (VID, TARGET, False, ("noatime",))


def test_publish_readonly_records_a_readonly_intent() -> None:
    intent = decide_publish(given(*STAGED), publish(readonly=True))
    assert isinstance(intent, VolumePublishing) and intent.readonly


@pytest.mark.parametrize("mode", [2, 4])
def test_publish_with_a_reader_only_mode_is_readonly_even_without_the_flag(mode: int) -> None:
    intent = decide_publish(given(*STAGED), publish(cap=Capability(fs_type="ext4", mount_flags=("noatime",), access_mode=mode)))
    assert isinstance(intent, VolumePublishing) and intent.readonly


def test_publish_at_a_second_target_records_another_intent() -> None:
    intent = decide_publish(given(*STAGED, *published()), publish(target=OTHER_TARGET))
    assert isinstance(intent, VolumePublishing) and intent.target_path == OTHER_TARGET


def test_repeated_publish_does_nothing_when_published() -> None:
    assert decide_publish(given(*STAGED, *published()), publish()) is None


def test_publish_with_other_readonly_at_the_same_target_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_publish(given(*STAGED, *published(readonly=False)), publish(readonly=True))


def test_publish_while_unpublishing_the_same_target_is_pending() -> None:
    with pytest.raises(OperationPending):
        decide_publish(given(*STAGED, *published(), VolumeUnpublishing(volume_id=VID, target_path=TARGET)), publish())


@pytest.mark.parametrize(
    "events",
    [
        (),
        (staging(),),
        (*STAGED, VolumeUnstaging(volume_id=VID)),
        (*STAGED, VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID)),
        (staging(), VolumeStageFailed(volume_id=VID, reason="x")),
    ],
    ids=["never-staged", "staging", "unstaging", "unstaged", "stage-failed"],
)
def test_publish_when_not_staged_is_a_failed_precondition(events: tuple[NodeVolumeEvent, ...]) -> None:
    with pytest.raises(FailedPrecondition):
        decide_publish(given(*events), publish())


def test_publish_from_another_staging_path_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        decide_publish(given(*STAGED), publish(staging_path=STAGING + "-other"))


# -- decide_unpublish ---------------------------------------------------------


def test_unpublish_of_a_published_target_records_the_intent() -> None:
    intent = decide_unpublish(given(*STAGED, *published()), TARGET)
    assert isinstance(intent, VolumeUnpublishing)
    assert (intent.volume_id, intent.target_path) == (VID, TARGET)


def test_unpublish_of_an_unknown_volume_does_nothing() -> None:
    assert decide_unpublish(None, TARGET) is None


def test_unpublish_of_a_target_never_published_does_nothing() -> None:
    assert decide_unpublish(given(*STAGED, *published()), OTHER_TARGET) is None


def test_repeated_unpublish_does_nothing_when_converged() -> None:
    state = given(*STAGED, *published(), VolumeUnpublishing(volume_id=VID, target_path=TARGET), VolumeUnpublished(volume_id=VID, target_path=TARGET))
    assert decide_unpublish(state, TARGET) is None


def test_unpublish_records_nothing_while_an_intent_is_pending() -> None:
    state = given(*STAGED, *published(), VolumeUnpublishing(volume_id=VID, target_path=TARGET))
    assert decide_unpublish(state, TARGET) is None


# -- evolve / is_idle ---------------------------------------------------------


def test_a_whole_life_on_the_node_ends_idle() -> None:
    life: list[tuple[NodeVolumeEvent, str, dict[str, str]]] = [
        (staging(), "staging", {}),
        (VolumeStaged(volume_id=VID, device=DEVICE, formatted=True), "staged", {}),
        (VolumePublishing(volume_id=VID, target_path=TARGET, readonly=False), "staged", {TARGET: "publishing"}),
        (VolumePublished(volume_id=VID, target_path=TARGET), "staged", {TARGET: "published"}),
        (VolumePublishing(volume_id=VID, target_path=OTHER_TARGET, readonly=True), "staged", {TARGET: "published", OTHER_TARGET: "publishing"}),
        (VolumePublished(volume_id=VID, target_path=OTHER_TARGET), "staged", {TARGET: "published", OTHER_TARGET: "published"}),
        (VolumeUnpublishing(volume_id=VID, target_path=TARGET), "staged", {TARGET: "unpublishing", OTHER_TARGET: "published"}),
        (VolumeUnpublished(volume_id=VID, target_path=TARGET), "staged", {OTHER_TARGET: "published"}),
        (VolumeUnpublishing(volume_id=VID, target_path=OTHER_TARGET), "staged", {OTHER_TARGET: "unpublishing"}),
        (VolumeUnpublished(volume_id=VID, target_path=OTHER_TARGET), "staged", {}),
        (VolumeUnstaging(volume_id=VID), "unstaging", {}),
        (VolumeUnstaged(volume_id=VID), "none", {}),
    ]
    state: NodeVolumeState | None = None
    for seq, (event, stage_phase, pubs) in enumerate(life, start=10):
        state = evolve(state, event, seq)
        assert state is not None
        assert state.version == seq
        assert state.stage_phase == stage_phase
        assert {p.target_path: p.phase for p in state.publications} == pubs
        assert is_idle(state) == (stage_phase == "none" and not pubs)
    assert state is not None and is_idle(state)
    assert (state.staging_path, state.device, state.fs_type, state.mount_flags) == ("", "", "", ())


def test_staged_state_remembers_where_how_and_on_which_device() -> None:
    state = given(*STAGED)
    assert state is not None
    assert (state.stage_phase, state.staging_path, state.fs_type, state.mount_flags, state.device) == (
        "staged", STAGING, "ext4", ("noatime",), DEVICE,
    )
    assert not is_idle(state)


def test_a_failed_stage_leaves_the_volume_idle() -> None:
    state = given(staging(), VolumeStageFailed(volume_id=VID, reason="no image"))
    assert state is not None and is_idle(state)
    assert state.staging_path == "" and state.version == 2


def test_a_failed_publish_drops_only_its_target() -> None:
    state = given(*STAGED, *published(), VolumePublishing(volume_id=VID, target_path=OTHER_TARGET, readonly=False),
                  VolumePublishFailed(volume_id=VID, target_path=OTHER_TARGET, reason="EPERM"))
    assert state is not None
    assert [(p.target_path, p.phase) for p in state.publications] == [(TARGET, "published")]


def test_readonly_is_remembered_per_target() -> None:
    state = given(*STAGED, *published(TARGET, readonly=False), *published(OTHER_TARGET, readonly=True))
    assert state is not None
    assert state.publication(TARGET).readonly is False  # type: ignore[union-attr]
    assert state.publication(OTHER_TARGET).readonly is True  # type: ignore[union-attr]
    assert state.publication("/elsewhere") is None


def test_published_volume_without_staging_is_not_idle() -> None:
    # A publication alone (however it came about) still holds something on the node.
    state = given(VolumePublishing(volume_id=VID, target_path=TARGET, readonly=False))
    assert state is not None and state.stage_phase == "none"
    assert not is_idle(state)
