"""The nodeagent's node-volume aggregate: path and capability checks, decide_*, evolve.

Domain tests read given events / when command / then events: states are folded from
real events through ``evolve``, never built by hand.
"""

from __future__ import annotations

from functools import reduce

import pytest

from services.nodeagent.domain.events import (
    NODE_VOLUME_EVENTS,
    NodeVolumeEvent,
    VolumeExpandedOnNode,
    VolumeExpandingOnNode,
    VolumeExpandOnNodeFailed,
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
    decide_expand,
    decide_publish,
    decide_stage,
    decide_unpublish,
    decide_unstage,
    evolve,
    is_idle,
    locate,
    stage_fs_type,
)
from volplane import codec
from volplane.commands import Capability, PublishVolume, StageVolume
from volplane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OperationPending, OutOfRange

VID = "0123456789abcdef0123456789abcdef"
STAGING = "/var/lib/kubelet/plugins/volplane/staging/v1"
TARGET = "/var/lib/kubelet/pods/p1/volumes/v1"
OTHER_TARGET = "/var/lib/kubelet/pods/p2/volumes/v1"
DEVICE = "/dev/loop7"
IMAGE = f"/var/lib/volplane/pools/node-1/{VID}.img"
CAP = Capability(access_type="mount", fs_type="ext4", mount_flags=("noatime",), access_mode=1)
BLOCK = Capability(access_type="block", access_mode=1)
GiB = 2**30


def given(*events: NodeVolumeEvent) -> NodeVolumeState | None:
    """The state after ``events``, numbered 1, 2, 3… as the stream would number them."""
    return reduce(lambda s, pair: evolve(s, pair[1], pair[0]), enumerate(events, start=1), None)


def staging(path: str = STAGING, fs: str = "ext4", flags: tuple[str, ...] = ("noatime",)) -> VolumeStaging:
    return VolumeStaging(volume_id=VID, staging_path=path, fs_type=fs, mount_flags=flags, image=IMAGE)


STAGED: tuple[NodeVolumeEvent, ...] = (staging(), VolumeStaged(volume_id=VID, device=DEVICE, formatted=True))
BLOCK_STAGED: tuple[NodeVolumeEvent, ...] = (
    VolumeStaging(volume_id=VID, staging_path=STAGING, fs_type="", image=IMAGE, access_type="block"),
    VolumeStaged(volume_id=VID, device=DEVICE, formatted=False),
)


def expanded(capacity: int) -> tuple[NodeVolumeEvent, ...]:
    return (VolumeExpandingOnNode(volume_id=VID, capacity_bytes=capacity), VolumeExpandedOnNode(volume_id=VID, capacity_bytes=capacity))


def published(target: str = TARGET, readonly: bool = False) -> tuple[NodeVolumeEvent, ...]:
    return (
        VolumePublishing(volume_id=VID, target_path=target, readonly=readonly),
        VolumePublished(volume_id=VID, target_path=target),
    )


def stage(path: str = STAGING, cap: Capability = CAP) -> StageVolume:
    return StageVolume(volume_id=VID, staging_path=path, capability=cap)


def publish(target: str = TARGET, readonly: bool = False, cap: Capability = CAP, staging_path: str = STAGING) -> PublishVolume:
    return PublishVolume(volume_id=VID, staging_path=staging_path, target_path=target, capability=cap, readonly=readonly)


# -- stage_fs_type: which filesystem NodeStage makes -------------------------------


def test_the_capability_fs_type_wins_over_the_volume_context() -> None:
    cmd = StageVolume(volume_id=VID, staging_path=STAGING, capability=Capability(fs_type="xfs"), volume_context={"fsType": "ext4"})
    assert stage_fs_type(cmd) == "xfs"


def test_the_volume_context_decides_when_the_capability_names_no_fs_type() -> None:
    cmd = StageVolume(volume_id=VID, staging_path=STAGING, capability=Capability(), volume_context={"fsType": "xfs"})
    assert stage_fs_type(cmd) == "xfs"


def test_ext4_is_the_default_fs_type() -> None:
    assert stage_fs_type(stage(cap=Capability())) == "ext4"


def test_a_block_volume_has_no_fs_type() -> None:
    cmd = StageVolume(volume_id=VID, staging_path=STAGING, capability=Capability(access_type="block"), volume_context={"fsType": "xfs"})
    assert stage_fs_type(cmd) == ""


def test_an_unsupported_fs_type_in_the_volume_context_is_refused() -> None:
    cmd = StageVolume(volume_id=VID, staging_path=STAGING, capability=Capability(), volume_context={"fsType": "btrfs"})
    with pytest.raises(InvalidArgument, match=r"volume_context\.fsType"):
        stage_fs_type(cmd)


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


def test_block_access_is_accepted() -> None:
    check_capability(BLOCK)


@pytest.mark.parametrize("cap", [Capability(access_type="block", fs_type="ext4"), Capability(access_type="block", mount_flags=("noatime",))])
def test_block_access_with_a_filesystem_or_mount_flags_is_refused(cap: Capability) -> None:
    with pytest.raises(InvalidArgument, match="block"):
        check_capability(cap)


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
    intent = decide_stage(None, stage(), "ext4", IMAGE)
    assert isinstance(intent, VolumeStaging)
    assert (intent.volume_id, intent.staging_path, intent.fs_type, intent.mount_flags) == (VID, STAGING, "ext4", ("noatime",))
    assert (intent.image, intent.access_type) == (IMAGE, "mount")


def test_stage_of_a_block_volume_records_a_block_intent_without_a_filesystem() -> None:
    intent = decide_stage(None, stage(cap=BLOCK), "", IMAGE)
    assert isinstance(intent, VolumeStaging)
    assert (intent.access_type, intent.fs_type, intent.mount_flags, intent.image) == ("block", "", (), IMAGE)


def test_repeated_block_stage_does_nothing_when_staged() -> None:
    assert decide_stage(given(*BLOCK_STAGED), stage(cap=BLOCK), "", IMAGE) is None


def test_stage_as_block_of_a_volume_staged_as_a_filesystem_already_exists() -> None:
    with pytest.raises(AlreadyExists, match="mount"):
        decide_stage(given(*STAGED), stage(cap=BLOCK), "", IMAGE)


def test_stage_as_a_filesystem_of_a_volume_staged_as_block_already_exists() -> None:
    with pytest.raises(AlreadyExists, match="block"):
        decide_stage(given(*BLOCK_STAGED), stage(), "ext4", IMAGE)


def test_stage_after_unstage_records_a_new_intent() -> None:
    state = given(*STAGED, VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID))
    assert isinstance(decide_stage(state, stage(), "ext4", IMAGE), VolumeStaging)


def test_stage_after_a_failed_stage_records_a_new_intent() -> None:
    state = given(staging(), VolumeStageFailed(volume_id=VID, reason="no image"))
    assert isinstance(decide_stage(state, stage(), "ext4", IMAGE), VolumeStaging)


def test_repeated_stage_does_nothing_when_staged() -> None:
    assert decide_stage(given(*STAGED), stage(), "ext4", IMAGE) is None


def test_repeated_stage_does_nothing_when_published() -> None:
    assert decide_stage(given(*STAGED, *published()), stage(), "ext4", IMAGE) is None


def test_stage_at_another_path_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        decide_stage(given(*STAGED), stage(path=STAGING + "-other"), "ext4", IMAGE)


def test_stage_with_another_fs_type_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_stage(given(*STAGED), stage(cap=Capability(fs_type="xfs", mount_flags=("noatime",))), "xfs", IMAGE)


def test_stage_with_other_mount_flags_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_stage(given(*STAGED), stage(cap=Capability(fs_type="ext4", mount_flags=("sync",))), "ext4", IMAGE)


def test_stage_while_unstaging_is_pending() -> None:
    with pytest.raises(OperationPending):
        decide_stage(given(*STAGED, VolumeUnstaging(volume_id=VID)), stage(), "ext4", IMAGE)


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


@pytest.mark.parametrize("mode", [2, 3], ids=["SINGLE_NODE_READER_ONLY", "MULTI_NODE_READER_ONLY"])
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


def test_publish_of_a_staged_block_volume_records_the_intent() -> None:
    intent = decide_publish(given(*BLOCK_STAGED), publish(cap=BLOCK))
    assert isinstance(intent, VolumePublishing) and intent.target_path == TARGET


def test_publish_as_a_filesystem_of_a_volume_staged_as_block_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="block"):
        decide_publish(given(*BLOCK_STAGED), publish())


def test_publish_as_block_of_a_volume_staged_as_a_filesystem_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="mount"):
        decide_publish(given(*STAGED), publish(cap=BLOCK))


def test_publish_as_a_filesystem_at_a_target_published_as_block_already_exists() -> None:
    with pytest.raises(AlreadyExists):
        decide_publish(given(*BLOCK_STAGED, *published()), publish())


SINGLE_WRITER = Capability(fs_type="ext4", mount_flags=("noatime",), access_mode=6)


def test_single_node_single_writer_volume_is_writable_at_one_target_only() -> None:
    with pytest.raises(FailedPrecondition, match=TARGET):
        decide_publish(given(*STAGED, *published(TARGET)), publish(OTHER_TARGET, cap=SINGLE_WRITER))


def test_single_node_single_writer_volume_may_add_readonly_targets() -> None:
    intent = decide_publish(given(*STAGED, *published(TARGET)), publish(OTHER_TARGET, readonly=True, cap=SINGLE_WRITER))
    assert isinstance(intent, VolumePublishing) and intent.readonly


def test_single_node_single_writer_volume_is_writable_once_the_writer_left() -> None:
    state = given(*STAGED, *published(TARGET, readonly=True))
    assert isinstance(decide_publish(state, publish(OTHER_TARGET, cap=SINGLE_WRITER)), VolumePublishing)


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


# -- locate -------------------------------------------------------------------


@pytest.mark.parametrize("path", [STAGING, STAGING + "/", TARGET, TARGET + "/"])
def test_a_staging_path_or_published_target_is_located(path: str) -> None:
    assert locate(given(*STAGED, *published()), VID, path) == path.rstrip("/")


@pytest.mark.parametrize("path", [OTHER_TARGET, "some/path", "/", STAGING + "/sub"])
def test_a_path_where_the_volume_is_not_is_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        locate(given(*STAGED, *published()), VID, path)


@pytest.mark.parametrize(
    "events",
    [(), (staging(),), (*STAGED, VolumeUnstaging(volume_id=VID)), (*STAGED, VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID))],
    ids=["unknown", "staging", "unstaging", "unstaged"],
)
def test_a_volume_not_staged_is_not_found_anywhere(events: tuple[NodeVolumeEvent, ...]) -> None:
    with pytest.raises(NotFound):
        locate(given(*events), VID, STAGING)


def test_a_target_still_publishing_is_not_found() -> None:
    with pytest.raises(NotFound):
        locate(given(*STAGED, VolumePublishing(volume_id=VID, target_path=TARGET, readonly=False)), VID, TARGET)


def test_a_staging_path_given_beside_the_volume_path_must_be_where_it_is_staged() -> None:
    state = given(*STAGED, *published())
    assert locate(state, VID, TARGET, STAGING + "/") == TARGET
    with pytest.raises(NotFound):
        locate(state, VID, TARGET, STAGING + "-other")


# -- decide_expand ------------------------------------------------------------


def existing(*events: NodeVolumeEvent) -> NodeVolumeState:
    """The state after ``events``, which leave something on the node (decide_expand needs it)."""
    state = given(*events)
    assert state is not None
    return state


def test_expand_of_a_staged_volume_records_the_intent_to_reach_the_image_size() -> None:
    intent = decide_expand(existing(*STAGED, *published()), 2 * GiB, 2 * GiB, 0, grows_online=True)
    assert isinstance(intent, VolumeExpandingOnNode) and intent.capacity_bytes == 2 * GiB


def test_expand_does_nothing_when_already_grown_to_the_image_size() -> None:
    assert decide_expand(existing(*STAGED, *expanded(2 * GiB)), 2 * GiB, GiB, 0, grows_online=True) is None


def test_expand_after_the_image_grew_again_records_a_new_intent() -> None:
    intent = decide_expand(existing(*STAGED, *expanded(2 * GiB)), 3 * GiB, 0, 0, grows_online=True)
    assert isinstance(intent, VolumeExpandingOnNode) and intent.capacity_bytes == 3 * GiB


def test_expand_to_more_than_the_image_holds_is_out_of_range() -> None:
    with pytest.raises(OutOfRange, match="ControllerExpandVolume"):
        decide_expand(existing(*STAGED), GiB, 2 * GiB, 0, grows_online=True)


def test_expand_beyond_the_limit_is_out_of_range() -> None:
    with pytest.raises(OutOfRange):
        decide_expand(existing(*STAGED), 2 * GiB, 0, GiB, grows_online=True)


def test_expand_that_cannot_grow_online_is_refused_while_published() -> None:
    with pytest.raises(FailedPrecondition, match=TARGET):
        decide_expand(existing(*STAGED, *published()), 2 * GiB, 0, 0, grows_online=False)


def test_expand_that_cannot_grow_online_is_allowed_while_only_staged() -> None:
    assert isinstance(decide_expand(existing(*STAGED), 2 * GiB, 0, 0, grows_online=False), VolumeExpandingOnNode)


def test_expand_that_cannot_grow_online_does_nothing_when_already_grown_even_if_published() -> None:
    assert decide_expand(existing(*STAGED, *expanded(2 * GiB), *published()), 2 * GiB, 0, 0, grows_online=False) is None


# -- evolve / is_idle ---------------------------------------------------------


def test_expansion_is_pending_until_its_result_and_remembers_the_size() -> None:
    pending = given(*STAGED, VolumeExpandingOnNode(volume_id=VID, capacity_bytes=2 * GiB))
    done = given(*STAGED, *expanded(2 * GiB))
    failed = given(*STAGED, VolumeExpandingOnNode(volume_id=VID, capacity_bytes=2 * GiB), VolumeExpandOnNodeFailed(volume_id=VID, reason="x"))
    assert pending is not None and (pending.expanding, pending.capacity_bytes) == (True, 0)
    assert done is not None and (done.expanding, done.capacity_bytes) == (False, 2 * GiB)
    assert failed is not None and (failed.expanding, failed.capacity_bytes) == (False, 0)


def test_a_new_stage_forgets_the_size_grown_to() -> None:
    state = given(*STAGED, *expanded(2 * GiB), VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID), *STAGED)
    assert state is not None and state.capacity_bytes == 0


def test_staged_block_volume_remembers_its_image_and_access_type() -> None:
    state = given(*BLOCK_STAGED)
    assert state is not None
    assert (state.access_type, state.image, state.device, state.fs_type) == ("block", IMAGE, DEVICE, "")


def test_an_unstaged_block_volume_is_idle_and_forgets_its_image() -> None:
    state = given(*BLOCK_STAGED, VolumeUnstaging(volume_id=VID), VolumeUnstaged(volume_id=VID))
    assert state is not None and is_idle(state)
    assert (state.access_type, state.image) == ("mount", "")


def test_a_stage_recorded_before_pools_decodes_with_no_image_as_a_filesystem_volume() -> None:
    old = codec.pack({"type": "VolumeStaging", "volume_id": VID, "staging_path": STAGING, "fs_type": "ext4", "mount_flags": [], "at": 1})
    event = codec.decode(NODE_VOLUME_EVENTS, old)
    assert isinstance(event, VolumeStaging) and (event.image, event.access_type) == ("", "mount")


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
    assert state.publication(TARGET).readonly is False  # type: ignore[union-attr]  # None would fail the test anyway
    assert state.publication(OTHER_TARGET).readonly is True  # type: ignore[union-attr]  # as above
    assert state.publication("/elsewhere") is None


def test_published_volume_without_staging_is_not_idle() -> None:
    # A publication alone (however it came about) still holds something on the node.
    state = given(VolumePublishing(volume_id=VID, target_path=TARGET, readonly=False))
    assert state is not None and state.stage_phase == "none"
    assert not is_idle(state)
