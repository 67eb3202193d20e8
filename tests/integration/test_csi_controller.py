"""CSI Identity and Controller through the real socket of a whole stack.

The stack is shared by the session, so every test names its volumes uniquely, deletes
them in ``finally`` and asserts only about its own volumes, never global counts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import Csi, mount_cap
from volplane.csi import csi_pb2 as csi

MiB = 2**20
GiB = 2**30
TIMEOUT = 30
Mode = csi.VolumeCapability.AccessMode


def unique(prefix: str = "pvc") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def pool_dir(stack: Stack) -> Path:
    return stack.pool_dir("shared")


def create_request(name: str, required: int = 64 * MiB, limit: int = 0, **kw: object) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(
        name=name,
        capacity_range=csi.CapacityRange(required_bytes=required, limit_bytes=limit),
        volume_capabilities=kw.pop("caps", [mount_cap()]),
        **kw,
    )


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.fixture
def volumes(client: Csi) -> Iterator[Callable[..., csi.Volume]]:
    """``make(name, required=…)`` creates a volume that is deleted when the test ends."""
    made: list[str] = []

    def make(name: str | None = None, required: int = 64 * MiB, **kw: object) -> csi.Volume:
        resp = client.controller.CreateVolume(create_request(name or unique(), required, **kw), timeout=TIMEOUT)
        made.append(resp.volume.volume_id)
        return resp.volume

    yield make
    for vid in made:
        client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)


def listed_ids(client: Csi, max_entries: int = 0) -> list[str]:
    """Every volume id ListVolumes returns, walking all pages."""
    ids: list[str] = []
    token = ""
    for _ in range(10_000):
        resp = client.controller.ListVolumes(csi.ListVolumesRequest(max_entries=max_entries, starting_token=token), timeout=TIMEOUT)
        if max_entries:
            assert len(resp.entries) <= max_entries
        ids += [e.volume.volume_id for e in resp.entries]
        token = resp.next_token
        if not token:
            return ids
    raise AssertionError("ListVolumes never ended")


# -- Identity -----------------------------------------------------------------


def test_plugin_info_names_the_driver(client: Csi) -> None:
    resp = client.identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=TIMEOUT)
    assert resp.name == "csi.volplane.io"
    assert resp.vendor_version


def test_probe_is_ready(client: Csi) -> None:
    resp = client.identity.Probe(csi.ProbeRequest(), timeout=TIMEOUT)
    assert resp.HasField("ready") and resp.ready.value is True


def test_plugin_capabilities_include_the_controller_service(client: Csi) -> None:
    resp = client.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest(), timeout=TIMEOUT)
    assert csi.PluginCapability.Service.CONTROLLER_SERVICE in {c.service.type for c in resp.capabilities}


def test_controller_capabilities_are_the_whole_driver(client: Csi) -> None:
    resp = client.controller.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest(), timeout=TIMEOUT)
    RPC = csi.ControllerServiceCapability.RPC
    assert {c.rpc.type for c in resp.capabilities} == {
        RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES, RPC.GET_CAPACITY,
        RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.CLONE_VOLUME, RPC.PUBLISH_READONLY,
        RPC.EXPAND_VOLUME, RPC.LIST_VOLUMES_PUBLISHED_NODES, RPC.GET_VOLUME, RPC.VOLUME_CONDITION,
        RPC.SINGLE_NODE_MULTI_WRITER, RPC.GET_SNAPSHOT, RPC.MODIFY_VOLUME,
    }


# -- CreateVolume: arguments ---------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        csi.CreateVolumeRequest(volume_capabilities=[mount_cap()]),
        csi.CreateVolumeRequest(name=unique()),
        csi.CreateVolumeRequest(name=unique(), volume_capabilities=[csi.VolumeCapability(access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))]),
        csi.CreateVolumeRequest(name=unique(), volume_capabilities=[csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume())]),
        csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap(), csi.VolumeCapability()]),
        csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap(fs_type="btrfs")]),
        csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap()], parameters={"fsType": "ntfs"}),
        csi.CreateVolumeRequest(name="nul-\x00-" + uuid.uuid4().hex, volume_capabilities=[mount_cap()]),
    ],
    ids=["no-name", "no-capabilities", "no-access-type", "no-access-mode", "one-bad-of-two", "bad-fs-type", "bad-fs-parameter", "nul-in-name"],
)
def test_create_with_a_malformed_request_is_an_invalid_argument(client: Csi, stack: Stack, request_: csi.CreateVolumeRequest) -> None:
    before = set(os.listdir(pool_dir(stack)))
    assert code_of(lambda: client.controller.CreateVolume(request_, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT
    assert set(os.listdir(pool_dir(stack))) == before


def test_create_with_a_name_of_129_bytes_is_an_invalid_argument(client: Csi) -> None:
    name = unique("n").ljust(129, "x")
    assert len(name.encode()) == 129
    assert code_of(lambda: client.controller.CreateVolume(create_request(name), timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


def test_create_with_a_name_of_128_multibyte_bytes_over_64_characters_is_accepted(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    # 128 bytes in 65 characters: the limit is on bytes, as the spec says.
    name = unique("n")[:38].ljust(38, "x") + "é" * 45
    assert len(name.encode()) == 128
    vol = volumes(name)
    assert len(vol.volume_id) == 32


def test_create_with_a_name_of_128_bytes_is_accepted(volumes: Callable[..., csi.Volume]) -> None:
    name = unique("n").ljust(128, "x")
    assert len(name.encode()) == 128
    vol = volumes(name)
    assert vol.volume_id and vol.capacity_bytes == 64 * MiB


def test_create_with_required_above_limit_is_out_of_range(client: Csi) -> None:
    req = create_request(unique(), required=200 * MiB, limit=100 * MiB)
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.OUT_OF_RANGE


def test_create_with_a_limit_below_the_smallest_volume_is_out_of_range(client: Csi) -> None:
    req = create_request(unique(), required=0, limit=MiB)
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.OUT_OF_RANGE


def test_create_larger_than_the_pool_is_resource_exhausted_and_leaves_nothing(client: Csi, stack: Stack) -> None:
    name = unique()
    before = set(os.listdir(pool_dir(stack)))

    code = code_of(lambda: client.controller.CreateVolume(create_request(name, required=2**40), timeout=TIMEOUT))

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert set(os.listdir(pool_dir(stack))) == before


def test_name_refused_for_room_can_be_created_smaller_afterwards(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    assert code_of(lambda: client.controller.CreateVolume(create_request(name, required=2**40), timeout=TIMEOUT)) == grpc.StatusCode.RESOURCE_EXHAUSTED

    vol = volumes(name, required=64 * MiB)

    assert vol.capacity_bytes == 64 * MiB


# -- CreateVolume: results -----------------------------------------------------


def test_create_makes_a_sparse_image_of_the_rounded_size(stack: Stack, volumes: Callable[..., csi.Volume]) -> None:
    vol = volumes(required=100 * MiB + 1)

    image = pool_dir(stack) / f"{vol.volume_id}.img"
    st = os.stat(image)
    assert vol.capacity_bytes == 101 * MiB
    assert st.st_size == vol.capacity_bytes
    assert st.st_blocks * 512 < vol.capacity_bytes // 100


def test_create_without_a_capacity_range_makes_one_gib(stack: Stack, volumes: Callable[..., csi.Volume]) -> None:
    vol = volumes(required=0)
    assert vol.capacity_bytes == GiB
    assert os.stat(pool_dir(stack) / f"{vol.volume_id}.img").st_size == GiB


def test_create_reports_pool_and_fs_type_in_the_volume_context(volumes: Callable[..., csi.Volume]) -> None:
    vol = volumes()
    assert dict(vol.volume_context) == {"pool": "shared", "fsType": "ext4"}


def test_second_create_with_same_name_returns_same_volume(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    first = volumes(name, required=100 * MiB)

    again = [client.controller.CreateVolume(create_request(name, required=100 * MiB), timeout=TIMEOUT).volume for _ in range(10)]

    assert {v.volume_id for v in again} == {first.volume_id}
    assert {v.capacity_bytes for v in again} == {100 * MiB}


def test_second_create_with_same_name_and_bigger_size_already_exists(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    volumes(name, required=64 * MiB)
    req = create_request(name, required=128 * MiB)
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


def test_second_create_with_same_name_and_other_parameters_already_exists(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    volumes(name, parameters={"tier": "fast"})
    req = create_request(name, parameters={"tier": "slow"})
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


def test_second_create_with_same_name_and_block_access_already_exists(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    volumes(name)
    block = csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    req = create_request(name, caps=[block])
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


def test_second_create_with_same_name_and_another_fs_type_already_exists(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    volumes(name, caps=[mount_cap(fs_type="ext4")])
    req = create_request(name, caps=[mount_cap(fs_type="xfs")])
    assert code_of(lambda: client.controller.CreateVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.ALREADY_EXISTS


def test_create_with_only_an_unaligned_limit_gets_a_volume_within_it(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    vol = volumes(required=0, limit=100 * MiB + 1)
    assert 32 * MiB <= vol.capacity_bytes <= 100 * MiB + 1


def test_concurrent_creates_of_one_name_are_ok_or_aborted_and_make_one_volume(client: Csi, stack: Stack, volumes: Callable[..., csi.Volume]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    name = unique()
    before = available(client)

    def outcome(_: int) -> tuple[grpc.StatusCode, str]:
        try:
            return grpc.StatusCode.OK, client.controller.CreateVolume(create_request(name), timeout=TIMEOUT).volume.volume_id
        except grpc.RpcError as exc:
            return exc.code(), ""

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(outcome, range(8)))
    vol = volumes(name)  # a CO retries an ABORTED call

    # The spec's answer to an operation already pending on the volume is ABORTED; nothing else may come back.
    assert {code for code, _ in results} <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    assert {vid for code, vid in results if code == grpc.StatusCode.OK} <= {vol.volume_id}
    assert available(client) == before - vol.capacity_bytes
    assert [p for p in os.listdir(pool_dir(stack)) if p.startswith(vol.volume_id)] == [f"{vol.volume_id}.img"]


def test_different_names_get_different_volumes(volumes: Callable[..., csi.Volume]) -> None:
    assert volumes().volume_id != volumes().volume_id


# -- DeleteVolume --------------------------------------------------------------


def test_delete_removes_the_image_and_is_ok_repeated(client: Csi, stack: Stack) -> None:
    vid = client.controller.CreateVolume(create_request(unique()), timeout=TIMEOUT).volume.volume_id
    image = pool_dir(stack) / f"{vid}.img"
    assert image.exists()

    for _ in range(10):
        client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
        assert not image.exists()


def test_deleted_volume_is_no_longer_listed_or_valid(client: Csi) -> None:
    vid = client.controller.CreateVolume(create_request(unique()), timeout=TIMEOUT).volume.volume_id
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)

    assert vid not in listed_ids(client)
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[mount_cap()])
    assert code_of(lambda: client.controller.ValidateVolumeCapabilities(req, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND


def test_name_can_be_created_again_after_delete(client: Csi, stack: Stack, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    vid = client.controller.CreateVolume(create_request(name, required=64 * MiB), timeout=TIMEOUT).volume.volume_id
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)

    again = volumes(name, required=128 * MiB)

    assert again.capacity_bytes == 128 * MiB
    assert os.stat(pool_dir(stack) / f"{again.volume_id}.img").st_size == 128 * MiB


@pytest.mark.parametrize(
    "vid",
    [uuid.uuid4().hex, "not-a-volume-id", "../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789", "x" * 128],
    ids=["unknown-hex", "malformed", "traversal", "uppercase-hex", "128-bytes"],
)
def test_delete_of_an_unknown_or_malformed_id_is_ok(client: Csi, stack: Stack, vid: str) -> None:
    before = set(os.listdir(pool_dir(stack).parent))
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
    assert set(os.listdir(pool_dir(stack).parent)) == before


def test_delete_without_an_id_is_an_invalid_argument(client: Csi) -> None:
    assert code_of(lambda: client.controller.DeleteVolume(csi.DeleteVolumeRequest(), timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_with_an_id_over_128_bytes_is_an_invalid_argument(client: Csi) -> None:
    req = csi.DeleteVolumeRequest(volume_id="x" * 129)
    assert code_of(lambda: client.controller.DeleteVolume(req, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


# -- ValidateVolumeCapabilities -------------------------------------------------


@pytest.mark.parametrize("vid", [uuid.uuid4().hex, "not-a-volume-id"], ids=["unknown-hex", "malformed"])
def test_validate_of_an_unknown_volume_is_not_found(client: Csi, vid: str) -> None:
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=vid, volume_capabilities=[mount_cap()])
    assert code_of(lambda: client.controller.ValidateVolumeCapabilities(req, timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND


def test_validate_without_capabilities_is_an_invalid_argument(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=volumes().volume_id)
    assert code_of(lambda: client.controller.ValidateVolumeCapabilities(req, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "cap",
    [mount_cap(), mount_cap(mode=Mode.SINGLE_NODE_READER_ONLY, fs_type="ext4"), mount_cap(mode=Mode.SINGLE_NODE_MULTI_WRITER, flags=("noatime",))],
    ids=["writer", "reader-only-ext4", "single-node-multi-writer"],
)
def test_validate_of_a_supported_capability_confirms_it(client: Csi, volumes: Callable[..., csi.Volume], cap: csi.VolumeCapability) -> None:
    vol = volumes()
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[cap])

    resp = client.controller.ValidateVolumeCapabilities(req, timeout=TIMEOUT)

    assert resp.HasField("confirmed")
    assert list(resp.confirmed.volume_capabilities) == [cap]


@pytest.mark.parametrize(
    "cap",
    [
        mount_cap(mode=Mode.MULTI_NODE_MULTI_WRITER),
        mount_cap(mode=Mode.MULTI_NODE_READER_ONLY),
        mount_cap(mode=Mode.MULTI_NODE_SINGLE_WRITER),
        mount_cap(fs_type="xfs"),
        csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)),
    ],
    ids=["multi-node-multi-writer", "multi-node-reader-only", "multi-node-single-writer", "other-fs", "block"],
)
def test_validate_of_an_unsupported_capability_confirms_nothing_and_says_why(
    client: Csi, volumes: Callable[..., csi.Volume], cap: csi.VolumeCapability
) -> None:
    vol = volumes()
    req = csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[mount_cap(), cap])

    resp = client.controller.ValidateVolumeCapabilities(req, timeout=TIMEOUT)

    assert not resp.HasField("confirmed")
    assert resp.message


# -- ListVolumes ---------------------------------------------------------------


def test_list_in_pages_of_two_walks_every_created_volume_exactly_once(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    mine = {volumes(required=64 * MiB).volume_id: 64 * MiB for _ in range(5)}

    ids = listed_ids(client, max_entries=2)

    assert len(ids) == len(set(ids)), "a volume was listed twice"
    assert set(mine) <= set(ids)


def test_list_reports_each_volume_with_its_capacity(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    vol = volumes(required=96 * MiB)

    entries = client.controller.ListVolumes(csi.ListVolumesRequest(), timeout=TIMEOUT).entries
    found = [e.volume for e in entries if e.volume.volume_id == vol.volume_id]

    assert [v.capacity_bytes for v in found] == [96 * MiB]


def test_list_with_a_page_of_two_returns_at_most_two_and_a_token_when_more(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    for _ in range(3):
        volumes()

    resp = client.controller.ListVolumes(csi.ListVolumesRequest(max_entries=2), timeout=TIMEOUT)

    assert len(resp.entries) == 2
    assert resp.next_token


@pytest.mark.parametrize("token", ["bogus", "../../etc", "Z" * 32, "x" * 500])
def test_list_with_a_bogus_starting_token_is_aborted(client: Csi, token: str) -> None:
    req = csi.ListVolumesRequest(max_entries=2, starting_token=token)
    assert code_of(lambda: client.controller.ListVolumes(req, timeout=TIMEOUT)) == grpc.StatusCode.ABORTED


def test_list_with_negative_max_entries_is_an_invalid_argument(client: Csi) -> None:
    req = csi.ListVolumesRequest(max_entries=-1)
    assert code_of(lambda: client.controller.ListVolumes(req, timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT


# -- GetCapacity ---------------------------------------------------------------


def available(client: Csi) -> int:
    return client.controller.GetCapacity(csi.GetCapacityRequest(), timeout=TIMEOUT).available_capacity


def test_capacity_drops_by_a_created_volume_and_comes_back_after_delete(client: Csi) -> None:
    before = available(client)
    vid = client.controller.CreateVolume(create_request(unique(), required=3 * GiB), timeout=TIMEOUT).volume.volume_id
    try:
        assert available(client) == before - 3 * GiB
    finally:
        client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
    assert available(client) == before


def test_capacity_is_unchanged_by_a_repeated_create(client: Csi, volumes: Callable[..., csi.Volume]) -> None:
    name = unique()
    volumes(name, required=GiB)
    after_first = available(client)
    volumes(name, required=GiB)
    assert available(client) == after_first


def test_capacity_is_unchanged_by_a_refused_create(client: Csi) -> None:
    before = available(client)
    code_of(lambda: client.controller.CreateVolume(create_request(unique(), required=2**40), timeout=TIMEOUT))
    assert available(client) == before


def test_capacity_reports_the_volume_size_bounds(client: Csi) -> None:
    resp = client.controller.GetCapacity(csi.GetCapacityRequest(), timeout=TIMEOUT)
    assert 0 < resp.available_capacity <= 64 * GiB
    assert resp.maximum_volume_size.value == resp.available_capacity
    assert resp.minimum_volume_size.value == 32 * MiB


def test_a_volume_of_all_the_free_room_fits_and_then_the_pool_is_full(client: Csi) -> None:
    free = available(client)
    vid = client.controller.CreateVolume(create_request(unique(), required=free, limit=free), timeout=TIMEOUT).volume.volume_id
    try:
        assert available(client) == 0
        code = code_of(lambda: client.controller.CreateVolume(create_request(unique(), required=64 * MiB), timeout=TIMEOUT))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
    assert available(client) == free
