"""Two replicas of the provisioner, the attacher and apigw on one log: races between
processes, settled by the log's concurrency check alone (no shared lock)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.launcher import Stack
from tests.conftest import mount_cap, needs_root
from volplane.csi import csi_pb2 as csi
from volplane.csi import csi_pb2_grpc as rpc
from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc

pytestmark = needs_root
CAP = mount_cap()
C = grpc.StatusCode


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("replicas"), env={"VOLPLANE_SHARED_POOL_CAPACITY": "64Gi"})
    for kind in ("provisioner", "attacher", "apigw"):
        s.add_replica(kind)
    s.start()
    yield s
    s.stop()


def endpoints(stack: Stack) -> list[str]:
    return [stack.csi_endpoint, stack.replica_endpoint("apigw#2")]


async def _create(stub: rpc.ControllerStub, name: str, size: int) -> tuple[C, str]:
    try:
        reply = await stub.CreateVolume(csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=size), volume_capabilities=[CAP]), timeout=60)
        return C.OK, reply.volume.volume_id
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


def test_both_replicas_serve(stack: Stack) -> None:
    assert not stack.dead()
    assert "provisioner#2" in stack.procs and "attacher#2" in stack.procs and "apigw#2" in stack.procs
    # The launcher saw each replica answer its health check; the process logs "ready" just
    # after it starts answering, so the line may still be on its way: wait for it.
    for name in ("provisioner#2", "attacher#2"):
        log = stack.run_dir / "logs" / f"{name}.log"
        deadline = time.monotonic() + 15
        while b"ready" not in log.read_bytes():
            assert time.monotonic() < deadline, f"{name} never logged ready"
            time.sleep(0.05)


def test_a_hundred_identical_creates_through_two_replicas_make_one_volume(stack: Stack) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"

    async def race() -> list[tuple[C, str]]:
        channels = [grpc.aio.insecure_channel(e) for e in endpoints(stack)]
        stubs = [rpc.ControllerStub(ch) for ch in channels]
        try:
            return list(await asyncio.gather(*(_create(stubs[i % 2], name, 64 * 2**20) for i in range(100))))
        finally:
            for ch in channels:
                await ch.close()

    outcomes = asyncio.run(race())
    codes = Counter(code for code, _ in outcomes)
    assert set(codes) <= {C.OK, C.ABORTED}, codes  # a loser is told to retry, never an error
    ids = {detail for code, detail in outcomes if code == C.OK}
    assert len(ids) == 1, ids
    with grpc.insecure_channel(stack.csi_endpoint) as ch:
        listed = [e.volume.volume_id for e in rpc.ControllerStub(ch).ListVolumes(csi.ListVolumesRequest()).entries]
    (vid,) = ids
    assert listed.count(vid) == 1
    assert len(list(stack.pool_dir("shared").glob(f"{vid}.img"))) == 1


def test_concurrent_expansions_of_one_volume_are_ok_or_aborted_and_the_image_matches(stack: Stack) -> None:
    name = f"grow-{uuid.uuid4().hex[:8]}"

    async def race() -> tuple[str, list[tuple[C, int]]]:
        channels = [grpc.aio.insecure_channel(e) for e in endpoints(stack)]
        stubs = [rpc.ControllerStub(ch) for ch in channels]
        code, vid = await _create(stubs[0], name, 64 * 2**20)
        assert code == C.OK, vid

        async def grow(i: int) -> tuple[C, int]:
            size = (64 + 32 * (i % 5 + 1)) * 2**20
            try:
                reply = await stubs[i % 2].ControllerExpandVolume(csi.ControllerExpandVolumeRequest(volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=size), volume_capability=CAP), timeout=60)
                return C.OK, reply.capacity_bytes
            except grpc.aio.AioRpcError as exc:
                return exc.code(), size

        try:
            return vid, list(await asyncio.gather(*(grow(i) for i in range(20))))
        finally:
            for ch in channels:
                await ch.close()

    vid, outcomes = asyncio.run(race())
    assert {code for code, _ in outcomes} <= {C.OK, C.ABORTED}, outcomes
    granted = [size for code, size in outcomes if code == C.OK]
    assert granted, outcomes
    # Expansion only grows: the volume holds every size an OK answered, and its image is that big.
    # GetVolume answers from the read model of whichever replica takes it, which follows
    # the other replica's expansions through the log: wait until it has applied them.
    deadline = time.monotonic() + 15
    with grpc.insecure_channel(stack.csi_endpoint) as ch:
        while True:
            volume = rpc.ControllerStub(ch).ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vid)).volume
            if volume.capacity_bytes >= max(granted) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert volume.capacity_bytes >= max(granted)
    assert (stack.pool_dir("shared") / f"{vid}.img").stat().st_size == volume.capacity_bytes


def test_two_pv_controllers_provision_each_claim_once(stack: Stack) -> None:
    cls = f"twice-{uuid.uuid4().hex[:6]}"
    apis = [resources_pb2_grpc.ResourcesStub(grpc.insecure_channel(stack.replica_endpoint(n, api=True))) for n in ("apigw", "apigw#2")]

    def apply(i: int, obj: dict) -> None:
        apis[i % 2].Apply(pb.ApplyRequest(json=json.dumps(obj).encode(), field_manager="test"))

    before = {p.stem for p in Path(stack.pool_dir("shared")).glob("*.img")}
    apply(0, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": cls}, "provisioner": "csi.volplane.io"})
    claims = [f"c{i:02d}-{cls}" for i in range(20)]
    for i, claim in enumerate(claims):
        apply(i, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                  "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "32Mi"}}, "storageClassName": cls}})
    deadline = time.monotonic() + 120
    while True:
        objs = [json.loads(o.json) for o in apis[0].List(pb.ListRequest(kind="pvc")).items]
        mine = [o for o in objs if o["metadata"]["name"] in claims]
        if len(mine) == 20 and all((o.get("status") or {}).get("phase") == "Bound" for o in mine):
            break
        assert time.monotonic() < deadline, [(o["metadata"]["name"], (o.get("status") or {}).get("phase")) for o in mine]
        time.sleep(0.2)
    pvs = [json.loads(o.json) for o in apis[1].List(pb.ListRequest(kind="pv")).items]
    pvs = [p for p in pvs if p["spec"].get("storageClassName") == cls]
    assert len(pvs) == 20 and {p["spec"]["claimRef"]["name"] for p in pvs} == set(claims)
    handles = {p["spec"]["csi"]["volumeHandle"] for p in pvs}
    assert len(handles) == 20
    # Exactly one new volume per claim: neither controller made one the other did not use.
    images = {p.stem for p in Path(stack.pool_dir("shared")).glob("*.img")} - before
    assert images == handles
