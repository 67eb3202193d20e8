"""A poison event — one no reader can decode or apply — is quarantined and skipped, and
nothing stops because of it (issue 14, item 5).

Each test appends, with the admin connection (what a compromised credential allowed to
publish on the subject could do), an event that its reader cannot use, then checks that
the service reading it is healthy, still serves, and that the read models hold the
record (``vp:quarantine:<reader>``) with the event's sequence, subject and reason.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import redis

from devstack.launcher import Stack
from services.rebuild import all_projections
from tests.conftest import Csi, mount_cap
from tests.controlplane.conftest import Api, phase, unique
from volplane import codec, subjects
from volplane.csi import csi_pb2 as csi
from volplane.csi import resources_pb2 as pb
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.projection import ReadModels, rebuild
from volplane.quarantine import Quarantined, quarantine_key, quarantined

CAP = mount_cap()
NODE = "node-p"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("poison"), env={"VOLPLANE_POOL_CAPACITY": "16Gi", "VOLPLANE_SHARED_POOL_CAPACITY": "16Gi", "VOLPLANE_NODE_ID": NODE})
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Csi]:
    c = Csi(stack.csi_endpoint)
    yield c
    c.close()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[Api]:
    a = Api(stack.api_endpoint)
    yield a
    a.close()


def publish(stack: Stack, subject: str, data: bytes, event_type: str = "") -> int:
    """Append raw bytes to the log as the admin can; returns the stream sequence."""

    async def go() -> int:
        nc = await nats.connect(stack.env["NATS_URL"], tls=stack.client_tls())
        try:
            headers = {subjects.EVENT_TYPE: event_type} if event_type else None
            ack = await nc.jetstream().publish(subject, data, headers=headers, stream=subjects.STREAM)
            return int(ack.seq)
        finally:
            await nc.close()

    return asyncio.run(go())


def records(stack: Stack, reader: str) -> dict[int, Quarantined]:
    r = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        return {int(seq): Quarantined.from_bytes(reader, int(seq), raw) for seq, raw in r.hgetall(quarantine_key(reader)).items()}
    finally:
        r.close()


def wait_record(stack: Stack, reader: str, seq: int, timeout: float = 15.0) -> Quarantined:
    deadline = time.monotonic() + timeout
    while True:
        found = records(stack, reader).get(seq)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no quarantine record of {seq} for {reader}; have {records(stack, reader)}; see {stack.run_dir / 'logs'}")
        time.sleep(0.1)


def metric(stack: Stack, process: str, service: str, reader: str) -> float:
    body = urllib.request.urlopen(f"http://{stack.metrics[process]}/metrics", timeout=5).read().decode()
    line = f'volplane_events_quarantined_total{{reader="{reader}",service="{service}"}}'
    values = [float(row.split()[-1]) for row in body.splitlines() if row.startswith(line)]
    return values[0] if values else 0.0


def all_healthy(stack: Stack) -> None:
    assert stack.dead() == [], stack.dead()
    stack.wait_healthy(stack.services, timeout=30)


def storage_class(name: str) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}


# -- the reproduction --------------------------------------------------------


def test_object_of_a_kind_that_does_not_exist_is_quarantined_and_apigw_serves(stack: Stack, api: Api) -> None:
    seq = publish(stack, "vp.ev.res.persistentvolume._.x", b"{}")
    record = wait_record(stack, "objects", seq)
    assert record.subject == "vp.ev.res.persistentvolume._.x"
    assert "unknown kind 'persistentvolume'" in record.reason
    # The objects projection moved on: a write after the poison is listed.
    name = unique("sc")
    api.apply(storage_class(name))
    assert name in [o["metadata"]["name"] for o in api.list("sc")]
    # And a restart (which replays nothing twice: the record is durable) becomes healthy.
    stack.restart_service("apigw", timeout=30)
    stack.restart_service("provisioner", timeout=30)
    assert name in [o["metadata"]["name"] for o in api.list("sc")]
    listed = [json.loads(o.json) for o in api.stub.List(pb.ListRequest(kind="quarantinedevents")).items]
    assert {"reader": "objects", "seq": seq, "subject": "vp.ev.res.persistentvolume._.x"}.items() <= next(q for q in listed if q["seq"] == seq and q["reader"] == "objects").items()
    # volctl lists it as kubectl lists a kind: a table row with its sequence, reader and reason.
    env = {**stack.env, "VOLPLANE_API_ENDPOINT": stack.api_endpoint}
    shown = subprocess.run([sys.executable, "-m", "volctl", "get", "quarantinedevents"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split()[:4] == ["SEQ", "READER", "SUBJECT", "TYPE"]
    assert any(r.split()[:3] == [str(seq), "objects", "vp.ev.res.persistentvolume._.x"] and "unknown kind" in r for r in rows), shown.stdout
    all_healthy(stack)


def test_counts_and_logs_each_quarantined_event_once(stack: Stack) -> None:
    before = metric(stack, "apigw", "apigw", "objects")
    seq = publish(stack, "vp.ev.res.nosuchkind.default.y", codec.pack({"type": "ObjectCreated"}), "ObjectCreated")
    wait_record(stack, "objects", seq)
    deadline = time.monotonic() + 10
    while metric(stack, "apigw", "apigw", "objects") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(stack, "apigw", "apigw", "objects") == before + 1
    log = (stack.run_dir / "logs" / "apigw.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and f'"seq": {seq},' in line]
    assert [(entry["reader"], entry["subject"]) for entry in lines if entry.get("reader") == "objects"] == [("objects", "vp.ev.res.nosuchkind.default.y")]


# -- one per reader ------------------------------------------------------------------


def test_volumes_projection_skips_bad_msgpack_and_the_provisioner_still_creates(stack: Stack, client: Csi) -> None:
    seq = publish(stack, subjects.volume(volume_id_for("poison-volume")), b"\xc1\xff\x00", "VolumeCreated")
    assert "not msgpack" in wait_record(stack, "volumes", seq).reason
    stack.restart_service("provisioner", timeout=30)
    vol = client.controller.CreateVolume(csi.CreateVolumeRequest(name=unique("after-poison"), volume_capabilities=[CAP])).volume
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_a_volume_whose_newest_event_is_poison_can_still_be_deleted(stack: Stack, client: Csi) -> None:
    name = unique("tail")
    vol = client.controller.CreateVolume(csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=2**20), volume_capabilities=[CAP])).volume
    seq = publish(stack, subjects.volume(vol.volume_id), codec.pack({"type": "VolumeExploded", "volume_id": vol.volume_id}), "VolumeExploded")
    assert "'VolumeExploded'" in wait_record(stack, "volumes", seq).reason
    # The repository reloads past the quarantined event and appends after it.
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert vol.volume_id not in [e.volume.volume_id for e in client.controller.ListVolumes(csi.ListVolumesRequest()).entries]


def test_a_volume_after_poison_expands_at_once(stack: Stack, client: Csi) -> None:
    # Expansion appends without reloading on a lost race: the read model's state must
    # already stand at the quarantined event's version.
    vol = client.controller.CreateVolume(csi.CreateVolumeRequest(name=unique("grow"), capacity_range=csi.CapacityRange(required_bytes=2**20), volume_capabilities=[CAP])).volume
    seq = publish(stack, subjects.volume(vol.volume_id), codec.pack({"type": "VolumeExpanded", "volume_id": vol.volume_id, "capacity_bytes": "big"}), "VolumeExpanded")
    assert "capacity_bytes" in wait_record(stack, "volumes", seq).reason
    bigger = vol.capacity_bytes * 2
    grown = client.controller.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=bigger)))
    assert grown.capacity_bytes == bigger
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_snapshots_projection_skips_fields_of_the_wrong_type(stack: Stack, client: Csi) -> None:
    seq = publish(stack, subjects.snapshot("bogus"), codec.pack({"type": "SnapshotCreated", "snapshot_id": 5, "at": "never"}), "SnapshotCreated")
    assert "SnapshotCreated.snapshot_id: Input should be a valid string" in wait_record(stack, "snapshots", seq).reason
    client.controller.ListSnapshots(csi.ListSnapshotsRequest())
    all_healthy(stack)


def test_attachments_projection_and_aggregate_skip_an_unknown_event(stack: Stack, client: Csi) -> None:
    vol = client.controller.CreateVolume(csi.CreateVolumeRequest(name=unique("attach"), capacity_range=csi.CapacityRange(required_bytes=2**20), volume_capabilities=[CAP])).volume
    seq = publish(stack, subjects.attachment(vol.volume_id), codec.pack({"type": "NoSuchAttachmentEvent"}), "NoSuchAttachmentEvent")
    assert "'NoSuchAttachmentEvent'" in wait_record(stack, "attachments", seq).reason
    stack.restart_service("attacher", timeout=30)
    client.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE, volume_capability=CAP))
    client.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE))
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_node_projection_skips_garbage_and_the_nodeagent_restarts(stack: Stack, client: Csi) -> None:
    seq = publish(stack, subjects.node_volume(NODE, "not-a-volume"), b"\x92\x01", "VolumeStaging")
    wait_record(stack, f"node:{NODE}", seq)
    stack.restart_service("nodeagent", timeout=30)
    assert client.node.NodeGetInfo(csi.NodeGetInfoRequest()).node_id == NODE
    # The aggregate on that subject loads as "nothing on this node": unstaging it is done.
    client.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id="not-a-volume", staging_target_path="/nonexistent/stage"))


def test_node_registry_skips_poison_and_a_registration_of_another_node(stack: Stack, client: Csi) -> None:
    bad = publish(stack, subjects.node_info(NODE), b"", "NodeRegistered")
    other = publish(stack, subjects.node_info(NODE), codec.pack({"type": "NodeRegistered", "node_id": "someone-else", "topology": {}}), "NodeRegistered")
    wait_record(stack, "nodes", bad)
    assert "someone-else" in wait_record(stack, "nodes", other).reason
    stack.restart_service("nodeagent", timeout=30)
    stack.restart_service("provisioner", timeout=30)
    stack.restart_service("attacher", timeout=30)
    vol = client.controller.CreateVolume(csi.CreateVolumeRequest(name=unique("reg"), capacity_range=csi.CapacityRange(required_bytes=2**20), volume_capabilities=[CAP])).volume
    client.controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE, volume_capability=CAP))
    client.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=NODE))
    client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_informers_skip_invalid_objects_and_controllers_still_bind(stack: Stack, api: Api) -> None:
    cls, volume, claim = unique("now"), unique("pv"), unique("c")
    api.apply(storage_class(cls))
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": cls, "hostPath": {"path": f"/tmp/{volume}"}}}
    api.apply(pv)
    api.wait("pv", volume, lambda o: phase(o) == "Available")  # the controller's last write before the poison
    # On the PV's own subject: an object that is not a valid PV, then one of another name.
    seq1 = publish(stack, f"vp.ev.res.pv._.{volume}", codec.pack({"type": "ObjectChanged", "object": {"kind": "PersistentVolume", "spec": 7}, "patch": {}, "manager": "x"}), "ObjectChanged")
    seq2 = publish(stack, f"vp.ev.res.pv._.{volume}", codec.pack({"type": "ObjectChanged", "object": {**pv, "metadata": {"name": "other"}}, "patch": {}, "manager": "x"}), "ObjectChanged")
    assert "not a valid object" in wait_record(stack, "objects", seq1).reason
    assert "does not belong" in wait_record(stack, "objects", seq2).reason
    # The objects store reads past them: a Get shows the PV at the subject's newest version.
    got = api.get("pv", volume)
    assert got is not None and got["metadata"]["name"] == volume and got["metadata"]["resourceVersion"] == str(seq2)
    # The PV controller's informer skipped both, and its writes (an update of the version
    # it holds) land after them instead of conflicting forever.
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": cls}})
    bound = api.wait("pvc", claim, lambda o: phase(o) == "Bound")
    assert bound is not None and bound["spec"]["volumeName"] == volume
    history = api.history("pv", volume)
    assert [e for t, e in history if "quarantined" in e]
    stack.restart_service("attacher", timeout=30)
    all_healthy(stack)


# -- and the whole log rebuilds to the same read models, records included -----------


def test_rebuild_reproduces_the_read_models_and_the_quarantine_records(stack: Stack) -> None:
    # Poison for every reader, made here so that the test stands alone.
    poison = {
        "objects": ("vp.ev.res.nosuchkind.default." + unique("rb"), codec.pack({"type": "ObjectCreated"}), "ObjectCreated"),
        "volumes": (subjects.volume(volume_id_for(unique("rb"))), b"\xc1\xff\x00", "VolumeCreated"),
        "snapshots": (subjects.snapshot(unique("rb")), codec.pack({"type": "SnapshotCreated", "snapshot_id": 5, "at": "never"}), "SnapshotCreated"),
        "attachments": (subjects.attachment(volume_id_for(unique("rb"))), codec.pack({"type": "NoSuchAttachmentEvent"}), "NoSuchAttachmentEvent"),
        "nodes": (subjects.node_info(NODE), b"", "NodeRegistered"),
        f"node:{NODE}": (subjects.node_volume(NODE, unique("rb")), b"\x92\x01", "VolumeStaging"),
    }
    for reader, (subject, data, event_type) in poison.items():
        wait_record(stack, reader, publish(stack, subject, data, event_type))

    async def go() -> tuple[dict[str, Any], dict[str, Any], list[Quarantined]]:
        nc = await nats.connect(stack.env["NATS_URL"], tls=stack.client_tls())
        r = redis.asyncio.Redis.from_url(stack.env["REDIS_URL"])
        models = ReadModels(r)
        try:
            store = EventStore(nc.jetstream())
            before = await models.dump()
            await rebuild(r, store, await all_projections(store))
            return before, await models.dump(), await quarantined(r)
        finally:
            await nc.close()
            await r.aclose()

    before, after, skipped = asyncio.run(go())
    assert after == before
    assert set(poison) <= {q.reader for q in skipped}
    for name in ("provisioner", "attacher", "apigw", "nodeagent"):
        stack.restart_service(name, timeout=30)
    all_healthy(stack)


def test_an_informer_that_starts_on_poison_reads_the_object_from_its_history(stack: Stack, api: Api) -> None:
    # Informers start from each object's newest event: when that one is poison, the object
    # is its newest event that decodes.
    cls, volume, claim = unique("newest"), unique("pv"), unique("c")
    api.apply(storage_class(cls))
    api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": cls, "hostPath": {"path": f"/tmp/{volume}"}}})
    api.wait("pv", volume, lambda o: phase(o) == "Available")
    seq = publish(stack, f"vp.ev.res.pv._.{volume}", codec.pack({"type": "ObjectChanged", "object": {"kind": "PersistentVolume", "spec": 7}, "patch": {}, "manager": "x"}), "ObjectChanged")
    wait_record(stack, "objects", seq)
    stack.restart_service("provisioner", timeout=30)
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": cls}})
    bound = api.wait("pvc", claim, lambda o: phase(o) == "Bound")
    assert bound is not None and bound["spec"]["volumeName"] == volume
