"""The AD controller and the external-attacher role on a two-node stack.

Each test makes a CSI volume through our own CSI endpoint, a PV for it and a claim
pre-bound to it (the bind written with an admin ObjectStore, as the PV controller would
leave it), and pods scheduled to node-1 / node-2. The nodes' volume managers run too:
they register the Node objects, mount what gets attached and keep status.volumesInUse,
which is what holds a detach back until the volume is unmounted.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import nats
import pytest

from devstack.launcher import Stack
from services.attacher.domain.events import ATTACHMENT_EVENTS
from tests.conftest import Csi, mount_cap, needs_root
from tests.controlplane.conftest import Api, Obj, unique
from volplane import codec, subjects
from volplane.csi import csi_pb2 as csi
from volplane.eventstore import EventStore
from volplane.ids import volume_id_for
from volplane.resources.kinds import ref, resolve
from volplane.resources.names import LABEL_KEEP_TERMINATED, OWN_DRIVER, attacher_finalizer, va_name
from volplane.resources.store import ObjectStore

pytestmark = needs_root

T = TypeVar("T")
TIMEOUT = 60.0
FINALIZER = attacher_finalizer(OWN_DRIVER)


class Admin:
    """Writes only controllers make (binds, Node status) and reads of the log, as admin."""

    def __init__(self, stack: Stack) -> None:
        assert stack.creds is not None and stack.nats is not None
        self.url, self.tls = stack.nats_url_of("admin"), stack.client_tls()

    def _run(self, work: Callable[[EventStore], Awaitable[T]]) -> T:
        async def go() -> T:
            nc = await nats.connect(self.url, tls=self.tls)
            try:
                return await work(EventStore(nc.jetstream(timeout=10)))
            finally:
                await nc.close()

        return asyncio.run(go())

    def patch(self, kind: str, name: str, patch: Obj, namespace: str = "") -> Obj:
        return self._run(lambda store: ObjectStore(store, "test").patch(ref(resolve(kind), namespace, name), patch, reason="test"))

    def attachment_events(self, volume_id: str) -> list[tuple[str, str]]:
        """(event type, node) of every event of the volume's attachment aggregate."""

        async def read(store: EventStore) -> list[tuple[str, str]]:
            return [(e.type, e.node_id) for e in (codec.decode(ATTACHMENT_EVENTS, r.data) for r in await store.read(subjects.attachment(volume_id)))]

        return self._run(read)


@pytest.fixture(scope="module")
def admin(cp: Stack) -> Admin:
    return Admin(cp)


@pytest.fixture(scope="module")
def csi_client(cp: Stack) -> Iterator[Csi]:
    c = Csi(cp.csi_endpoint)
    yield c
    c.close()


class Volume:
    def __init__(self, pv: str, claim: str, handle: str, driver: str) -> None:
        self.pv, self.claim, self.handle, self.driver = pv, claim, handle, driver

    def va(self, node: str) -> str:
        return va_name(self.pv, self.driver, node)

    @property
    def unique_name(self) -> str:
        return f"kubernetes.io/csi/{self.driver}^{self.handle}"


@pytest.fixture
def volumes(api: Api, admin: Admin, csi_client: Csi) -> Iterator[Callable[..., Volume]]:
    """``volumes(modes=...)``: a CSI volume with a PV and a claim bound to it; pods,
    claims, PVs and CSI volumes made by the test go at its end."""
    made: list[Volume] = []

    def make(modes: tuple[str, ...] = ("ReadWriteOnce",), driver: str = OWN_DRIVER, handle: str = "") -> Volume:
        pv, claim = unique("pv"), unique("data")
        if not handle:
            request = csi.CreateVolumeRequest(name=pv, capacity_range=csi.CapacityRange(required_bytes=64 * 2**20), volume_capabilities=[mount_cap()])
            handle = csi_client.controller.CreateVolume(request, timeout=TIMEOUT).volume.volume_id
        api.apply({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "64Mi"}, "accessModes": list(modes), "storageClassName": "",
                     "csi": {"driver": driver, "volumeHandle": handle}},
        })
        (pvc,) = api.apply({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": "default"},
            "spec": {"accessModes": list(modes), "storageClassName": "", "volumeName": pv, "resources": {"requests": {"storage": "64Mi"}}},
        })
        uid = pvc["metadata"]["uid"]
        admin.patch("pv", pv, {"spec": {"claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": claim, "uid": uid}}, "status": {"phase": "Bound"}})
        admin.patch("pvc", claim, {"status": {"phase": "Bound"}}, "default")
        volume = Volume(pv, claim, handle, driver)
        made.append(volume)
        return volume

    yield make
    for pod in api.list("pod"):
        if any((v.get("persistentVolumeClaim") or {}).get("claimName") in {m.claim for m in made} for v in pod["spec"].get("volumes") or []):
            api.delete("pod", pod["metadata"]["name"], "default")
    for volume in made:
        for va in api.list("va"):
            if va["spec"]["source"]["persistentVolumeName"] == volume.pv:
                api.wait("va", va["metadata"]["name"], lambda o: o is None, timeout=TIMEOUT)
        api.delete("pvc", volume.claim, "default")
        api.delete("pv", volume.pv)
        if volume.driver == OWN_DRIVER:
            csi_client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume.handle), timeout=TIMEOUT)


def pod(api: Api, volume: Volume, node: str, *, name: str = "", phase: str = "") -> str:
    name = name or unique("web")
    obj: Obj = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": volume.claim}}]},
    }
    if phase:
        obj["status"] = {"phase": phase}
    api.apply(obj)
    return name


def attached(obj: Obj | None) -> bool:
    return obj is not None and bool((obj.get("status") or {}).get("attached")) and not obj["metadata"].get("deletionTimestamp")


OURS = {"attach-detach-controller", "external-attacher"}


def lines(api: Api, kind: str, name: str, namespace: str = "") -> list[Obj]:
    """The timeline lines the attach loops recorded on an object (the volume manager records its own)."""
    return [e for e in api.events(kind, name, namespace) if e["source"] in OURS]


def reasons(api: Api, kind: str, name: str, namespace: str = "") -> list[str]:
    return [e["reason"] for e in lines(api, kind, name, namespace)]


def written_by_us(api: Api, kind: str, name: str, namespace: str = "") -> list[tuple[str, Obj]]:
    """The entries of an object's history that the attach loops wrote."""
    return [(t, e) for t, e in api.history(kind, name, namespace) if (e.get("manager") or e.get("source")) in OURS]


def node_attached(api: Api, node: str) -> list[str]:
    return [v["name"] for v in ((api.get("node", node) or {}).get("status") or {}).get("volumesAttached") or []]


def node_in_use(api: Api, node: str) -> list[str]:
    return list(((api.get("node", node) or {}).get("status") or {}).get("volumesInUse") or [])


def wait_for(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        time.sleep(0.1)


def stays(check: Callable[[], bool], seconds: float = 3.0) -> bool:
    """``check`` holds now and keeps holding for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(0.1)
    return True


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def publishes(cp: Stack) -> float:
    key = 'volplane_operations_seconds_count{operation="ControllerPublishVolume",result="OK",service="apigw"}'
    return scrape(cp.metrics["apigw"]).get(key, 0.0)


def wait_loops_idle(cp: Stack) -> None:
    """After a (re)start: both loops have synced keys and have none left waiting."""

    def idle() -> bool:
        samples = scrape(cp.metrics["attacher"])
        done = all(samples.get(f'volplane_reconcile_total{{controller="{c}",result="ok"}}', 0) > 0 for c in ("attach-detach-controller", "external-attacher"))
        empty = all(samples.get(f'volplane_reconcile_queue_depth{{controller="{c}"}}', 1) == 0 for c in ("attach-detach-controller", "external-attacher"))
        return done and empty

    wait_for(idle, "attach loops idle")


# -- attach ---------------------------------------------------------------------


def test_scheduled_pod_gets_an_attached_volumeattachment_and_one_publish(cp: Stack, api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    volume = volumes()
    name = pod(api, volume, "node-1")
    va = api.wait("va", volume.va("node-1"), attached, timeout=TIMEOUT)
    assert va is not None
    assert va["metadata"]["name"].startswith("csi-") and len(va["metadata"]["name"]) == 4 + 64
    assert va["spec"] == {"attacher": OWN_DRIVER, "nodeName": "node-1", "source": {"persistentVolumeName": volume.pv}}
    assert va["metadata"]["finalizers"] == [FINALIZER]
    assert va["status"]["attachmentMetadata"] == {"volplane.io/node": "node-1", "volplane.io/pool": "shared"}
    assert "attachError" not in va["status"]
    assert admin.attachment_events(volume.handle) == [("VolumeAttached", "node-1")]
    # The PV is held while attached; the node lists the volume as attached.
    assert FINALIZER in api.get("pv", volume.pv)["metadata"]["finalizers"]
    wait_for(lambda: volume.unique_name in node_attached(api, "node-1"), "node-1 volumesAttached")
    wait_for(lambda: reasons(api, "pod", name, "default") == ["SuccessfulAttachVolume"], "SuccessfulAttachVolume on the pod")
    (event,) = lines(api, "pod", name, "default")
    assert event["message"] == f'AttachVolume.Attach succeeded for volume "{volume.pv}"'
    assert event["event_type"] == "Normal"
    # Only one VolumeAttachment exists for the volume.
    assert [v["metadata"]["name"] for v in api.list("va") if v["spec"]["source"]["persistentVolumeName"] == volume.pv] == [volume.va("node-1")]


def test_converged_syncs_write_nothing_and_publish_nothing_again(cp: Stack, api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    volume = volumes()
    name = pod(api, volume, "node-1")
    api.wait("va", volume.va("node-1"), attached, timeout=TIMEOUT)
    wait_for(lambda: "SuccessfulAttachVolume" in reasons(api, "pod", name, "default"), "SuccessfulAttachVolume")
    wait_loops_idle(cp)
    wait_for(lambda: volume.unique_name in node_attached(api, "node-1"), "node-1 volumesAttached")
    watched = [("va", volume.va("node-1"), ""), ("pv", volume.pv, ""), ("pvc", volume.claim, "default"), ("pod", name, "default"), ("node", "node-1", "")]
    before = [written_by_us(api, *w) for w in watched]
    published = publishes(cp)
    # A restart syncs every key again, from nothing but the log.
    cp.restart_service("attacher")
    wait_loops_idle(cp)
    time.sleep(1.0)
    assert [written_by_us(api, *w) for w in watched] == before
    assert publishes(cp) == published
    assert admin.attachment_events(volume.handle) == [("VolumeAttached", "node-1")]


# -- detach ---------------------------------------------------------------------


def test_deleted_pod_detaches_and_unpublishes(api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    volume = volumes()
    name = pod(api, volume, "node-1")
    api.wait("va", volume.va("node-1"), attached, timeout=TIMEOUT)
    api.delete("pod", name, "default")
    api.wait("va", volume.va("node-1"), lambda o: o is None, timeout=TIMEOUT)
    assert admin.attachment_events(volume.handle) == [("VolumeAttached", "node-1"), ("VolumeDetached", "node-1")]
    # The PV is let go, and the node no longer reports the volume.
    api.wait("pv", volume.pv, lambda o: o is not None and FINALIZER not in (o["metadata"].get("finalizers") or []), timeout=TIMEOUT)
    wait_for(lambda: volume.unique_name not in node_attached(api, "node-1"), "node-1 volumesAttached")


def test_volume_in_use_on_the_node_is_not_detached_until_unmounted(cp: Stack, api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    volume = volumes()
    name = pod(api, volume, "node-2")
    api.wait("va", volume.va("node-2"), attached, timeout=TIMEOUT)
    # node-2's volume manager mounts it and says so in Node status.volumesInUse...
    wait_for(lambda: volume.unique_name in node_in_use(api, "node-2"), "volumesInUse on node-2", timeout=120)
    # ...and, stopped, cannot unmount it: the pod goes, the volume stays in use.
    cp.stop_service("nodeagent-node-2")
    try:
        api.delete("pod", name, "default")
        assert stays(lambda: attached(api.get("va", volume.va("node-2"))), 5.0)
        assert admin.attachment_events(volume.handle) == [("VolumeAttached", "node-2")]
    finally:
        cp.start_service("nodeagent-node-2")
        cp.wait_healthy(["nodeagent-node-2"], TIMEOUT)
    # Back, it unmounts and clears volumesInUse; only then is the volume detached.
    api.wait("va", volume.va("node-2"), lambda o: o is None, timeout=TIMEOUT)
    assert volume.unique_name not in node_in_use(api, "node-2")
    assert admin.attachment_events(volume.handle)[-1] == ("VolumeDetached", "node-2")


# -- multi-attach ---------------------------------------------------------------


def test_rwo_volume_wanted_on_a_second_node_gets_no_second_attachment(api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    volume = volumes(("ReadWriteOnce",))
    first = pod(api, volume, "node-1")
    api.wait("va", volume.va("node-1"), attached, timeout=TIMEOUT)
    second = pod(api, volume, "node-2")
    message = f'Multi-Attach error for volume "{volume.pv}" Volume is already exclusively attached to one node and can\'t be attached to another'
    wait_for(lambda: reasons(api, "pod", second, "default"), "multi-attach event")
    assert stays(lambda: api.get("va", volume.va("node-2")) is None, 3.0)
    (event,) = lines(api, "pod", second, "default")
    assert (event["event_type"], event["message"]) == ("Warning", message)
    assert admin.attachment_events(volume.handle) == [("VolumeAttached", "node-1")]
    # Once the first pod is gone the volume moves: detach first, then attach.
    api.delete("pod", first, "default")
    api.wait("va", volume.va("node-2"), attached, timeout=TIMEOUT)
    assert api.get("va", volume.va("node-1")) is None
    assert admin.attachment_events(volume.handle) == [("VolumeAttached", "node-1"), ("VolumeDetached", "node-1"), ("VolumeAttached", "node-2")]
    wait_for(lambda: reasons(api, "pod", second, "default") == ["FailedAttachVolume", "SuccessfulAttachVolume"], "attached after the move")


def test_rwx_volume_gets_an_attachment_on_each_node(api: Api, volumes: Callable[..., Volume]) -> None:
    # csi.volplane.io publishes single-node modes only, so a many-node volume here is of a
    # driver nobody serves: its attachments are made and stay unattached.
    volume = volumes(("ReadWriteMany",), driver=f"{uuid.uuid4().hex[:8]}.rwx.example.com", handle="h-rwx")
    names = [pod(api, volume, "node-1"), pod(api, volume, "node-2")]
    for node in ("node-1", "node-2"):
        va = api.wait("va", volume.va(node), lambda o: o is not None, timeout=TIMEOUT)
        assert va is not None and va["spec"]["nodeName"] == node
    for name in names:
        assert "FailedAttachVolume" not in reasons(api, "pod", name, "default")


# -- terminated pods ------------------------------------------------------------


def test_keep_terminated_label_keeps_a_terminated_pods_volume_attached(api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    kept, dropped = volumes(), volumes()
    admin.patch("node", "node-2", {"metadata": {"labels": {LABEL_KEEP_TERMINATED: ""}}})
    try:
        on_kept = pod(api, kept, "node-2")
        on_dropped = pod(api, dropped, "node-1")
        api.wait("va", kept.va("node-2"), attached, timeout=TIMEOUT)
        api.wait("va", dropped.va("node-1"), attached, timeout=TIMEOUT)
        pod(api, kept, "node-2", name=on_kept, phase="Succeeded")
        pod(api, dropped, "node-1", name=on_dropped, phase="Failed")
        api.wait("va", dropped.va("node-1"), lambda o: o is None, timeout=TIMEOUT)
        assert attached(api.get("va", kept.va("node-2")))
    finally:
        admin.patch("node", "node-2", {"metadata": {"labels": {LABEL_KEEP_TERMINATED: None}}})
    # Without the label, the terminated pod's volume goes too.
    api.wait("va", kept.va("node-2"), lambda o: o is None, timeout=TIMEOUT)


# -- what is never attached -----------------------------------------------------


def test_a_driver_that_needs_no_attach_gets_no_volumeattachment(api: Api, volumes: Callable[..., Volume]) -> None:
    free, needs = f"{uuid.uuid4().hex[:8]}.noattach.example.com", f"{uuid.uuid4().hex[:8]}.attach.example.com"
    api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": free}, "spec": {"attachRequired": False}})
    try:
        without = volumes(driver=free, handle="h-1")
        with_ = volumes(driver=needs, handle="h-2")  # no CSIDriver object: attach required
        pod(api, without, "node-1")
        pod(api, with_, "node-1")
        # The second gets its attachment (nobody serves that driver, so it stays unattached)...
        va = api.wait("va", with_.va("node-1"), lambda o: o is not None, timeout=TIMEOUT)
        assert va is not None and not (va.get("status") or {}).get("attached")
        # ...and the first, synced alongside, never does.
        assert stays(lambda: api.get("va", without.va("node-1")) is None, 2.0)
    finally:
        api.delete("csidriver", free)


def test_publish_failure_is_kept_on_the_attachment_and_told_to_the_pod(api: Api, volumes: Callable[..., Volume]) -> None:
    missing = volume_id_for(f"missing-{uuid.uuid4().hex}")
    volume = volumes(handle=missing, driver=OWN_DRIVER)
    name = pod(api, volume, "node-1")
    va = api.wait("va", volume.va("node-1"), lambda o: o is not None and "attachError" in (o.get("status") or {}), timeout=TIMEOUT)
    assert va is not None and not va["status"].get("attached")
    error = va["status"]["attachError"]
    assert "does not exist" in error["message"] and error["time"].endswith("Z")
    wait_for(lambda: "FailedAttachVolume" in reasons(api, "va", volume.va("node-1")), "a Warning on the attachment")
    wait_for(lambda: "FailedAttachVolume" in reasons(api, "pod", name, "default"), "a Warning on the pod")
    (line,) = lines(api, "pod", name, "default")
    assert line["message"].startswith(f'AttachVolume.Attach failed for volume "{volume.pv}" : ')
    # Retries with the same error add nothing to the attachment's history.
    size = len(api.history("va", volume.va("node-1")))
    assert stays(lambda: len(api.history("va", volume.va("node-1"))) == size, 2.0)


# -- crashes --------------------------------------------------------------------


def test_attacher_killed_mid_attach_and_mid_detach_converges(cp: Stack, api: Api, admin: Admin, volumes: Callable[..., Volume]) -> None:
    placed = [(volumes(), "node-1"), (volumes(), "node-2")]
    names = [pod(api, volume, node) for volume, node in placed]
    cp.restart_service("attacher", kill=True)
    for volume, node in placed:
        api.wait("va", volume.va(node), attached, timeout=TIMEOUT)
        assert admin.attachment_events(volume.handle) == [("VolumeAttached", node)]
    for name in names:
        api.delete("pod", name, "default")
    cp.restart_service("attacher", kill=True)
    for volume, node in placed:
        api.wait("va", volume.va(node), lambda o: o is None, timeout=TIMEOUT)
        assert admin.attachment_events(volume.handle) == [("VolumeAttached", node), ("VolumeDetached", node)]
        api.wait("pv", volume.pv, lambda o: o is not None and not o["metadata"].get("finalizers"), timeout=TIMEOUT)
