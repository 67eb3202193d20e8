"""Claim expansion on a real two-node stack, as Kubernetes' external-resizer and kubelet do it:
a Bound claim asks for more → ControllerExpandVolume grows the image → the PV's capacity →
FileSystemResizePending → the node's NodeExpandVolume grows the loop device and the
filesystem the pod has mounted (``df`` sees it) → the claim's ``status.capacity``. And the
API's refusals, the driver's, NodeRestriction's, and a controller that dies halfway.

A filesystem in use grows online: xfs always, ext4 only where the node has CAP_SYS_RESOURCE
(some sandboxes drop it even for root), so the online cases use xfs (at least 300 MiB) and
an ext4 volume is grown while no pod has it mounted (or, on such a host, when next mounted)."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from devstack.launcher import Stack
from services.nodeagent.adapters.storage import HostStorage
from tests.conftest import Csi, needs_root
from tests.controlplane.claims import (
    Made,
    MiB,
    capacity,
    claim,
    condition_types,
    device_bytes,
    fs_bytes,
    mounted,
    pod,
    reasons,
    resize,
    status,
    statuses_seen,
    storage_class,
    until,
)
from tests.controlplane.conftest import Api, phase, unique
from tests.controlplane.direct import direct_patch
from volplane.csi import csi_pb2 as csi
from volplane.resources.kinds import Ref, ref, resolve
from volplane.resources.store import ObjectStore

pytestmark = needs_root
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def expandable(api: Api) -> str:
    """A class of csi.volplane.io whose claims may grow (ext4)."""
    name = unique("grow")
    api.apply(storage_class(name, allowVolumeExpansion=True))
    return name


@pytest.fixture(scope="module")
def expandable_xfs(api: Api) -> str:
    """The same with xfs, which grows while mounted on any host."""
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs (xfsprogs) is not installed")
    name = unique("grow-xfs")
    api.apply(storage_class(name, allowVolumeExpansion=True, parameters={"csi.storage.k8s.io/fstype": "xfs"}))
    return name


@pytest.fixture
def made(cp: Stack, api: Api) -> Iterator[Made]:
    m = Made(cp, api)
    yield m
    m.clean()


def bound(made: Made, cls: str, size: str = "64Mi", **kw: Any) -> str:
    name = unique("data")
    made.apply(claim(name, cls, size, **kw))
    made.api.wait("pvc", name, lambda o: phase(o) == "Bound", timeout=60)
    return name


def done(size: str) -> Any:
    """The claim has ``size`` and no resize under way."""
    return lambda o: capacity(o) == size and not status(o).get("allocatedResourceStatuses") and not condition_types(o)


def refusal(api: Api, doc: Obj) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        api.apply(doc)
    return err.value.code(), err.value.details() or ""


def test_a_mounted_filesystem_grows_when_its_claim_asks_for_more(cp: Stack, api: Api, made: Made, expandable_xfs: str) -> None:
    name, app = bound(made, expandable_xfs, "320Mi"), unique("app")
    made.apply(pod(app, name))
    target = mounted(cp, api, app)
    before = fs_bytes(target)
    assert before <= 320 * MiB
    (target / "kept").write_text("data written before the expansion")

    api.apply(resize(name, "512Mi"))
    grown = api.wait("pvc", name, done("512Mi"), timeout=90)
    assert grown is not None
    pv = api.get("pv", grown["spec"]["volumeName"])
    assert pv is not None and pv["spec"]["capacity"]["storage"] == "512Mi"
    assert fs_bytes(target) > before + 180 * MiB  # df of the pod's mount: the filesystem grew in place
    assert (target / "kept").read_text() == "data written before the expansion"

    # The way there, as Kubernetes writes it: the resizer's Resizing with the size it
    # allocated, then the node's turn, then the node at work.
    seen = statuses_seen(api, "pvc", name)
    assert any("Resizing" in [c["type"] for c in s.get("conditions") or []] and s.get("allocatedResources") == {"storage": "512Mi"}
               and s.get("allocatedResourceStatuses") == {"storage": "ControllerResizeInProgress"} for s in seen)
    assert any([c["type"] for c in s.get("conditions") or []] == ["FileSystemResizePending"]
               and s.get("allocatedResourceStatuses") == {"storage": "NodeResizePending"} for s in seen)
    assert any(s.get("allocatedResourceStatuses") == {"storage": "NodeResizeInProgress"} for s in seen)
    lines = reasons(api, "pvc", name)
    for reason in ("ExternalExpanding", "Resizing", "FileSystemResizeRequired", "FileSystemResizeSuccessful"):
        assert reason in lines, lines
    assert lines.index("Resizing") < lines.index("FileSystemResizeRequired") < lines.index("FileSystemResizeSuccessful")
    assert "FileSystemResizeSuccessful" in reasons(api, "pod", app)


def test_a_claim_no_pod_uses_waits_for_one_and_grows_when_it_is_mounted(cp: Stack, api: Api, made: Made, expandable: str) -> None:
    name, app = bound(made, expandable), unique("app")
    api.apply(resize(name, "128Mi"))
    waiting = api.wait("pvc", name, lambda o: "FileSystemResizePending" in condition_types(o), timeout=60)
    assert capacity(waiting) == "64Mi"  # the filesystem has not grown: no node has it
    pending = next(c for c in status(waiting)["conditions"] if c["type"] == "FileSystemResizePending")
    assert pending["message"] == "Waiting for user to (re-)start a pod to finish file system resize of volume on node."

    made.apply(pod(app, name, node="node-2"))
    target = mounted(cp, api, app)
    api.wait("pvc", name, done("128Mi"), timeout=90)
    assert fs_bytes(target) > 110 * MiB


@pytest.mark.skipif(HostStorage.grows_online("ext4"), reason="this host grows a mounted ext4 filesystem online")
def test_an_ext4_filesystem_that_cannot_grow_in_use_grows_when_next_mounted(cp: Stack, api: Api, made: Made, expandable: str) -> None:
    """Without CAP_SYS_RESOURCE the driver refuses to grow a mounted ext4 (FAILED_PRECONDITION):
    the kubelet does not try again while the volume stays staged, and the claim says why;
    the next pod's staging grows it unmounted, and the claim is finished."""
    name, first, second = bound(made, expandable), unique("app"), unique("app")
    made.apply(pod(first, name))
    target = mounted(cp, api, first)
    api.apply(resize(name, "128Mi"))
    refused = api.wait("pvc", name, lambda o: "NodeResizeError" in condition_types(o), timeout=90)
    assert capacity(refused) == "64Mi" and fs_bytes(target) < 64 * MiB
    assert "FileSystemResizeFailed" in reasons(api, "pod", first)
    made.api.delete("pod", first)
    pv = api.get("pv", (api.get("pvc", name) or {})["spec"]["volumeName"])
    assert pv is not None
    unique_name = f"kubernetes.io/csi/csi.volplane.io^{pv['spec']['csi']['volumeHandle']}"
    until(lambda: unique_name not in ((api.get("node", "node-1") or {}).get("status") or {}).get("volumesInUse", []),
          "the volume unstaged from node-1 (UnmountDevice)", timeout=60)
    assert not target.exists()
    made.apply(pod(second, name))
    again = mounted(cp, api, second)
    api.wait("pvc", name, done("128Mi"), timeout=90)
    assert fs_bytes(again) > 110 * MiB


def test_a_block_device_grows_on_the_node(cp: Stack, api: Api, made: Made, expandable: str) -> None:
    name, app = bound(made, expandable, block=True), unique("app")
    made.apply(pod(app, name, block=True))
    device = mounted(cp, api, app, block=True)
    assert device_bytes(device) == 64 * MiB
    api.apply(resize(name, "96Mi"))
    api.wait("pvc", name, done("96Mi"), timeout=90)
    assert device_bytes(device) == 96 * MiB  # the pod's device file: the loop device itself


def test_shrinking_and_growing_what_may_not_grow_are_refused_in_kubernetes_words(api: Api, made: Made, expandable: str) -> None:
    fixed = unique("fixed")
    made.apply(storage_class(fixed))  # allowVolumeExpansion unset
    name = bound(made, fixed)
    code, message = refusal(api, resize(name, "128Mi"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message == (f'persistentvolumeclaims "{name}" is forbidden: only dynamically provisioned pvc can be resized '
                       "and the storageclass that provisions the pvc must support resize")

    growing = bound(made, expandable)
    code, message = refusal(api, resize(growing, "32Mi"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == f'PersistentVolumeClaim "{growing}": spec.resources.requests.storage: Forbidden: field can not be less than status.capacity'

    pending = unique("pending")
    made.apply(claim(pending, unique("no-such-class"), "64Mi"))
    code, message = refusal(api, resize(pending, "128Mi"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims" in message
    for left in (name, growing):
        assert capacity(api.get("pvc", left)) == "64Mi"


def test_a_size_the_driver_refuses_makes_the_claim_infeasible_until_it_asks_for_another(cp: Stack, api: Api, made: Made, expandable: str) -> None:
    # A volume the driver does not have: ControllerExpandVolume answers NOT_FOUND, a final,
    # infeasible error.
    pv_name, name = unique("ghost"), unique("data")
    made.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
               "spec": {"capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": expandable,
                        "csi": {"driver": "csi.volplane.io", "volumeHandle": "vol-that-is-not-there"}}})
    made.apply({**claim(name, expandable, "64Mi"), "spec": {**claim(name, expandable, "64Mi")["spec"], "volumeName": pv_name}})
    api.wait("pvc", name, lambda o: phase(o) == "Bound", timeout=60)
    api.apply(resize(name, "128Mi"))
    refused = api.wait("pvc", name, lambda o: status(o).get("allocatedResourceStatuses") == {"storage": "ControllerResizeInfeasible"}, timeout=60)
    error = next(c for c in status(refused)["conditions"] if c["type"] == "ControllerResizeError")
    assert error["message"].startswith("failed to expand pvc with ") and "NOT_FOUND" in error["message"]
    failed = [e for e in api.events("pvc", name) if e["reason"] == "VolumeResizeFailed"]
    assert failed and failed[0]["event_type"] == "Warning"
    assert failed[0]["message"].startswith(f'resize volume "{pv_name}" by resizer "csi.volplane.io" failed: ')
    ghost = api.get("pv", pv_name)
    assert capacity(refused) == "64Mi" and ghost is not None and ghost["spec"]["capacity"]["storage"] == "64Mi"

    # A smaller request (still above status.capacity) is allowed to recover, and tried.
    api.apply(resize(name, "96Mi"))
    api.wait("pvc", name, lambda o: status(o).get("allocatedResources") == {"storage": "96Mi"}
             and status(o).get("allocatedResourceStatuses") == {"storage": "ControllerResizeInfeasible"}, timeout=60)


def test_an_expansion_whose_answer_was_lost_with_the_resizer_finishes_after_restart(cp: Stack, api: Api, made: Made, expandable_xfs: str) -> None:
    """Killed between ControllerExpandVolume and the PV's new capacity: the image has grown,
    the objects say nothing of it. On restart the resizer asks again (the same size), the
    driver's answer is the same as the first time — the node must follow — and the
    filesystem grows."""
    name, app = bound(made, expandable_xfs, "320Mi"), unique("app")
    made.apply(pod(app, name))
    target = mounted(cp, api, app)
    before = fs_bytes(target)
    pvc = api.get("pvc", name)
    assert pvc is not None
    pv = api.get("pv", pvc["spec"]["volumeName"])
    assert pv is not None
    handle = pv["spec"]["csi"]["volumeHandle"]
    client = Csi(cp.csi_endpoint)
    try:
        # The call the resizer made before it died.
        request = csi.ControllerExpandVolumeRequest(volume_id=handle, capacity_range=csi.CapacityRange(required_bytes=512 * MiB))
        grown = client.controller.ControllerExpandVolume(request, timeout=60)
        assert grown.capacity_bytes == 512 * MiB and grown.node_expansion_required
        again = client.controller.ControllerExpandVolume(request, timeout=60)  # the answer a retry gets: the same
        assert again.capacity_bytes == 512 * MiB and again.node_expansion_required
    finally:
        client.close()
    cp.stop_service("provisioner", kill=True)
    try:
        # What it had written before the call, and the user's request that led to it.
        api.apply(resize(name, "512Mi"))
        direct_patch(cp, "pvc", name, {"status": {"allocatedResources": {"storage": "512Mi"},
                                                  "allocatedResourceStatuses": {"storage": "ControllerResizeInProgress"},
                                                  "conditions": [{"type": "Resizing", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}},
                     namespace="default", manager="external-resizer")
        assert fs_bytes(target) == before  # the node has not followed
    finally:
        cp.start_service("provisioner")
        cp.wait_healthy(["provisioner"])
    api.wait("pvc", name, done("512Mi"), timeout=90)
    assert fs_bytes(target) > before + 150 * MiB


def test_a_node_agent_killed_while_the_node_has_to_expand_finishes_after_restart(cp: Stack, api: Api, made: Made, expandable_xfs: str) -> None:
    name, app = bound(made, expandable_xfs, "320Mi"), unique("app")
    made.apply(pod(app, name, node="node-2"))
    target = mounted(cp, api, app)
    before = fs_bytes(target)
    cp.stop_service("nodeagent-node-2", kill=True)
    try:
        api.apply(resize(name, "512Mi"))
        api.wait("pvc", name, lambda o: status(o).get("allocatedResourceStatuses") == {"storage": "NodeResizePending"}, timeout=60)
    finally:
        cp.start_service("nodeagent-node-2")
        cp.wait_healthy(["nodeagent-node-2"])
    api.wait("pvc", name, done("512Mi"), timeout=120)
    assert fs_bytes(target) > before + 150 * MiB


# -- NodeRestriction: the status of a claim a pod of the node uses, nothing else -----------


def test_a_node_writes_only_the_resize_status_of_claims_its_pods_use(cp: Stack, api: Api, made: Made, expandable: str) -> None:
    from tests.integration.test_object_authz import as_node, denied

    name, app = bound(made, expandable), unique("app")
    made.apply(pod(app, name, node="node-1"))
    mounted(cp, api, app)
    claim_ref = ref(resolve("pvc"), "default", name)

    # node-2 runs no pod that uses it: nothing of it is node-2's.
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.patch(claim_ref, {"status": {"capacity": {"storage": "1Gi"}}}))
    assert f"may not change PersistentVolumeClaim/default/{name} (no pod bound to it uses the claim)" in message
    message = denied(cp, "node-2", "nodeagent-node-2", lambda o: o.record(claim_ref, "Normal", "FileSystemResizeSuccessful", "lies"))
    assert "record events about PersistentVolumeClaim" in message

    # node-1 runs its pod: the resize status, and only that.
    for patch in ({"status": {"phase": "Lost"}}, {"spec": {"resources": {"requests": {"storage": "1Gi"}}}}, {"metadata": {"annotations": {"x": "y"}}}):
        message = denied(cp, "node-1", "nodeagent", functools.partial(_patch, claim_ref, patch))
        assert "may not change anything but status.capacity, status.conditions, status.allocatedResourceStatuses, status.allocatedResources" in message

    async def allowed(objects: ObjectStore) -> Obj:
        await objects.record(claim_ref, "Normal", "Checked", "a line from the node")
        return await objects.patch(claim_ref, {"status": {"conditions": [{"type": "NodeChecked", "status": "True"}]}}, reason="test")

    written = as_node(cp, "node-1", "nodeagent", allowed)
    assert condition_types(written) == ["NodeChecked"]
    assert phase(api.get("pvc", name)) == "Bound"
    direct_patch(cp, "pvc", name, {"status": {"conditions": None}}, namespace="default", manager="test")


async def _patch(target: Ref, patch: Obj, objects: ObjectStore) -> Obj:
    return await objects.patch(target, patch, reason="test")
