"""VolumeAttributesClass (storage.k8s.io/v1) on a real two-node stack: a claim's class gives
its volume CreateVolume's mutable parameters, and naming another class modifies the volume
live (ControllerModifyVolume) — here the parameters are I/O limits the node writes into the
block I/O controller of its cgroup, so the kernel's own files (and a direct writer's rate)
show that the class really changed. Then the states on the way: Pending for a class that
does not exist, Infeasible for parameters the driver refuses, a resizer that dies
halfway, and volctl's view of it all."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from devstack.launcher import Stack
from services.nodeagent.adapters.iolimits import IoCgroup
from tests.conftest import Csi, needs_root
from tests.controlplane.claims import (
    Made,
    attributes_class,
    claim,
    condition_types,
    image_of,
    loop_device_of,
    mounted,
    pod,
    reasons,
    status,
    storage_class,
    until,
)
from tests.controlplane.conftest import Api, phase, unique
from tests.controlplane.direct import direct_patch
from tests.integration.test_csi_modify_qos import write_iops
from volplane.csi import csi_pb2 as csi

pytestmark = needs_root
Obj = dict[str, Any]
N = 40  # IOPS: low enough that a direct writer of this host does many times more unthrottled


@pytest.fixture
def made(cp: Stack, api: Api) -> Iterator[Made]:
    m = Made(cp, api)
    yield m
    m.clean()


@pytest.fixture(scope="module")
def cls(api: Api) -> str:
    name = unique("qos")
    api.apply(storage_class(name))
    return name


@pytest.fixture(scope="module")
def cgroup(cp: Stack) -> IoCgroup:
    return IoCgroup.detect(cp.env.get("VOLPLANE_IO_CGROUP", "volplane"))


def vac(made: Made, **parameters: str) -> str:
    name = unique("vac")
    made.apply(attributes_class(name, **parameters))
    return name


def attributes_of(api: Api, name: str) -> tuple[str | None, Obj | None, str | None]:
    """(status.currentVolumeAttributesClassName, status.modifyVolumeStatus, the PV's class)."""
    obj = api.get("pvc", name)
    pv = api.get("pv", obj["spec"]["volumeName"]) if obj and obj["spec"].get("volumeName") else None
    return status(obj).get("currentVolumeAttributesClassName"), status(obj).get("modifyVolumeStatus"), ((pv or {}).get("spec") or {}).get("volumeAttributesClassName")


def device_of(cp: Stack, api: Api, name: str) -> str:
    obj = api.get("pvc", name)
    assert obj is not None
    pv = api.get("pv", obj["spec"]["volumeName"])
    assert pv is not None
    return loop_device_of(image_of(cp, pv["spec"]["csi"]["volumeHandle"]))


def switch(api: Api, name: str, target: str | None) -> None:
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": {"volumeAttributesClassName": target}})


def test_a_claims_class_limits_its_volume_and_another_class_changes_the_limit_live(cp: Stack, api: Api, made: Made, cls: str, cgroup: IoCgroup) -> None:
    slow, fast = vac(made, writeIOPS=str(N)), vac(made, writeIOPS=str(4 * N), readBytesPerSecond="8Mi")
    name, app = unique("data"), unique("app")
    made.apply(claim(name, cls, "64Mi", attributes=slow))
    made.apply(pod(app, name))
    target = mounted(cp, api, app)
    assert attributes_of(api, name) == (slow, None, slow)  # created with the class: nothing to modify
    device = device_of(cp, api, name)
    assert cgroup.current(device) == {"writeIOPS": N}
    assert write_iops(cgroup, target / "data", 2 * N) <= 1.6 * N

    switch(api, name, fast)
    until(lambda: attributes_of(api, name) == (fast, None, fast), f"the claim and its volume on {fast}")
    assert cgroup.current(device) == {"writeIOPS": 4 * N, "readBytesPerSecond": 8 * 2**20}
    assert write_iops(cgroup, target / "data", 8 * N) > 2 * N
    modified = api.get("pvc", name)
    assert "ModifyingVolume" not in condition_types(modified) and "ModifyVolumeError" not in condition_types(modified)
    lines = reasons(api, "pvc", name)
    assert lines.index("VolumeModify") < lines.index("VolumeModifySuccessful")
    seen = [(e.get("object") or {}).get("status") or {} for t, e in api.history("pvc", name) if t == "ObjectChanged"]
    assert any(s.get("modifyVolumeStatus") == {"targetVolumeAttributesClassName": fast, "status": "InProgress"}
               and "ModifyingVolume" in [c["type"] for c in s.get("conditions") or []] for s in seen)


def test_a_class_that_does_not_exist_leaves_the_claim_pending_until_it_does(cp: Stack, api: Api, made: Made, cls: str, cgroup: IoCgroup) -> None:
    first = vac(made, readIOPS="70")
    name, app = unique("data"), unique("app")
    made.apply(claim(name, cls, "64Mi", attributes=first))
    made.apply(pod(app, name, node="node-2"))
    mounted(cp, api, app)
    later = unique("vac")
    switch(api, name, later)
    pending = until(lambda: attributes_of(api, name)[1], "the modification pending")
    assert pending == {"targetVolumeAttributesClassName": later, "status": "Pending"}
    assert attributes_of(api, name)[0] == first and cgroup.current(device_of(cp, api, name)) == {"readIOPS": 70}
    made.apply(attributes_class(later, readIOPS="90"))
    until(lambda: attributes_of(api, name) == (later, None, later), "the claim on the class once it exists")
    assert cgroup.current(device_of(cp, api, name)) == {"readIOPS": 90}


def test_parameters_the_driver_refuses_make_the_modification_infeasible(cp: Stack, api: Api, made: Made, cls: str, cgroup: IoCgroup) -> None:
    good, bad = vac(made, writeIOPS="50"), vac(made, iops="10")  # no such limit: INVALID_ARGUMENT
    name, app = unique("data"), unique("app")
    made.apply(claim(name, cls, "64Mi", attributes=good))
    made.apply(pod(app, name))
    mounted(cp, api, app)
    switch(api, name, bad)
    refused = api.wait("pvc", name, lambda o: (status(o).get("modifyVolumeStatus") or {}).get("status") == "Infeasible")
    assert status(refused)["modifyVolumeStatus"]["targetVolumeAttributesClassName"] == bad
    assert status(refused)["currentVolumeAttributesClassName"] == good
    error = next(c for c in status(refused)["conditions"] if c["type"] == "ModifyVolumeError")
    assert error["message"].startswith("ModifyVolume failed with error: ") and "INVALID_ARGUMENT" in error["message"]
    failed = [e for e in api.events("pvc", name) if e["reason"] == "VolumeModifyFailed"]
    assert failed and failed[0]["event_type"] == "Warning"
    assert cgroup.current(device_of(cp, api, name)) == {"writeIOPS": 50}  # the volume kept its limits

    # Naming the class it has again: nothing to modify, and the leftovers go.
    switch(api, name, good)
    back = api.wait("pvc", name, lambda o: not status(o).get("modifyVolumeStatus") and not condition_types(o))
    assert status(back)["currentVolumeAttributesClassName"] == good


def test_a_claim_naming_a_class_that_does_not_exist_yet_is_provisioned_once_it_does(cp: Stack, api: Api, made: Made, cls: str) -> None:
    later, name = unique("vac"), unique("data")
    made.apply(claim(name, cls, "64Mi", attributes=later))
    until(lambda: "ProvisioningFailed" in reasons(api, "pvc", name), "provisioning refused while the class is missing")
    failed = next(e for e in api.events("pvc", name) if e["reason"] == "ProvisioningFailed")
    assert f'volumeattributesclasses.storage.k8s.io "{later}" not found' in failed["message"]
    assert phase(api.get("pvc", name)) == "Pending"
    made.apply(attributes_class(later, writeBytesPerSecond="4M"))
    api.wait("pvc", name, lambda o: phase(o) == "Bound", timeout=60)
    assert attributes_of(api, name) == (later, None, later)


def test_classes_are_immutable_and_a_claims_class_cannot_be_taken_away(api: Api, made: Made, cls: str) -> None:
    gold = vac(made, writeIOPS="100")
    with pytest.raises(grpc.RpcError) as err:
        api.apply(attributes_class(gold, writeIOPS="200"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f'VolumeAttributesClass "{gold}": parameters: field is immutable'
    with pytest.raises(grpc.RpcError) as err:
        api.apply({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass", "metadata": {"name": unique("vac")}, "driverName": "csi.volplane.io"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parameters" in (err.value.details() or "")

    name = unique("data")
    made.apply(claim(name, cls, "64Mi", attributes=gold))
    api.wait("pvc", name, lambda o: status(o).get("currentVolumeAttributesClassName") == gold, timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        switch(api, name, None)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.volumeAttributesClassName: Forbidden: update to nil is forbidden when status.currentVolumeAttributesClassName is not nil" in (err.value.details() or "")


def test_a_modification_whose_answer_was_lost_with_the_resizer_finishes_after_restart(cp: Stack, api: Api, made: Made, cls: str, cgroup: IoCgroup) -> None:
    """Killed between ControllerModifyVolume and the claim's new status: on restart the
    modify controller calls it again (the same parameters: nothing changes twice) and
    writes the PV's and the claim's class."""
    old, new = vac(made, writeIOPS="60"), vac(made, writeIOPS="120")
    name, app = unique("data"), unique("app")
    made.apply(claim(name, cls, "64Mi", attributes=old))
    made.apply(pod(app, name))
    mounted(cp, api, app)
    obj = api.get("pvc", name)
    assert obj is not None
    handle = (api.get("pv", obj["spec"]["volumeName"]) or {})["spec"]["csi"]["volumeHandle"]
    client = Csi(cp.csi_endpoint)
    try:
        # The call the modify controller made before it died.
        client.controller.ControllerModifyVolume(csi.ControllerModifyVolumeRequest(volume_id=handle, mutable_parameters={"writeIOPS": "120"}), timeout=60)
    finally:
        client.close()
    device = device_of(cp, api, name)
    assert cgroup.current(device) == {"writeIOPS": 120}
    cp.stop_service("provisioner", kill=True)
    try:
        switch(api, name, new)
        direct_patch(cp, "pvc", name, {"status": {"modifyVolumeStatus": {"targetVolumeAttributesClassName": new, "status": "InProgress"},
                                                  "conditions": [{"type": "ModifyingVolume", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z",
                                                                  "message": "ModifyVolume operation in progress."}]}},
                     namespace="default", manager="external-resizer")
    finally:
        cp.start_service("provisioner")
        cp.wait_healthy(["provisioner"])
    until(lambda: attributes_of(api, name) == (new, None, new), "the modification finished after the restart")
    assert not condition_types(api.get("pvc", name)) and cgroup.current(device) == {"writeIOPS": 120}


def test_volctl_shows_classes_and_the_claims_class_as_kubectl_does(cp: Stack, api: Api, made: Made, cls: str) -> None:
    gold = vac(made, writeIOPS="100")
    name = unique("data")
    made.apply(claim(name, cls, "64Mi", attributes=gold))
    api.wait("pvc", name, lambda o: status(o).get("currentVolumeAttributesClassName") == gold, timeout=60)
    env = {**cp.env, "VOLPLANE_API_ENDPOINT": cp.api_endpoint}

    def volctl(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "volctl", *args], env=env, capture_output=True, text=True, timeout=90, check=True).stdout

    def cells(out: str, *columns: str) -> list[str]:
        """The cells under ``columns`` in the first row of a table kubectl-style (cells start where their header does)."""
        header, row = out.splitlines()[:2]
        starts = sorted(header.index(c) for c in columns)
        return [row[start:].split("  ")[0].strip() for start in starts]

    vacs = volctl("get", "vac", gold)
    assert vacs.splitlines()[0].split() == ["NAME", "DRIVERNAME", "AGE"]
    assert cells(vacs, "NAME", "DRIVERNAME") == [gold, "csi.volplane.io"]
    claims = volctl("get", "pvc", name)
    volume, klass = cells(claims, "VOLUME", "VOLUMEATTRIBUTESCLASS")
    assert klass == gold
    assert cells(volctl("get", "pv", volume), "VOLUMEATTRIBUTESCLASS") == [gold]
    described = volctl("describe", "pvc", name)
    assert "VolumeAttributesClass:" in described and described.split("VolumeAttributesClass:")[1].split()[0] == gold
