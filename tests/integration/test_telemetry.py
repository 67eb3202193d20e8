"""One trace per operation across the services, exported over real OTLP/gRPC to a
receiver in the test — a CSI call, a resource API watch, a claim applied and everything
the control loops do for it down to the mount; a collector that is not there, logged
once; Prometheus metrics that move when operations happen."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from devstack.embedded import free_port
from devstack.launcher import Stack
from tests.conftest import Csi, mount_cap, needs_root
from volplane.csi import csi_pb2 as csi
from volplane.csi import resources_pb2 as pb
from volplane.csi import resources_pb2_grpc

TIMEOUT = 60


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span with its service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    self.spans.extend((service, s) for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        with self.lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    rec, port = Receiver(), free_port()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield rec, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced(receiver: tuple[Receiver, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "VOLPLANE_POOL_CAPACITY": "8Gi",
        "VOLPLANE_SHARED_POOL_CAPACITY": "8Gi",
    }
    s = Stack(tmp_path_factory.mktemp("traced"), env=env)
    s.start()
    yield s
    s.stop()


def _parent() -> tuple[bytes, bytes, tuple[tuple[str, str], ...]]:
    """A caller's span: the W3C traceparent a CO would send, and its ids."""
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id.hex()}-{span_id.hex()}-01"),)


def _wait_for(receiver: Receiver, trace_id: bytes, services: set[str], names: set[str]) -> list[tuple[str, trace_pb2.Span]]:
    deadline = time.monotonic() + 20
    while True:
        spans = receiver.trace(trace_id)
        seen_services = {svc for svc, _ in spans}
        seen_names = {s.name for _, s in spans}
        if services <= seen_services and names <= seen_names:
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"trace incomplete: services {sorted(seen_services)}, spans {sorted(seen_names)}")
        time.sleep(0.1)


def _connected(spans: list[tuple[str, trace_pb2.Span]], root: bytes) -> None:
    """Every span hangs off the caller's span or another span of the same trace."""
    orphans = _orphans(spans, root)
    assert orphans == [], f"spans without a parent in the trace: {orphans}"


def _orphans(spans: list[tuple[str, trace_pb2.Span]], root: bytes) -> list[str]:
    ids = {s.span_id for _, s in spans} | {root}
    return [s.name for _, s in spans if s.parent_span_id not in ids]


def test_create_volume_is_one_trace_through_apigw_nats_provisioner_and_the_log(traced: Stack, receiver: tuple[Receiver, int]) -> None:
    trace_id, root, metadata = _parent()
    c = Csi(traced.csi_endpoint)
    try:
        c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"t-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()]), metadata=metadata, timeout=TIMEOUT)
    finally:
        c.close()
    spans = _wait_for(
        receiver[0], trace_id, {"volplane-apigw", "volplane-provisioner"},
        {"csi.v1.Controller/CreateVolume", "vp.cmd.provisioner.create_volume send", "vp.cmd.provisioner.create_volume process", "vp.ev.volume publish"},
    )
    _connected(spans, root)
    server = next(s for _, s in spans if s.name == "csi.v1.Controller/CreateVolume")
    attrs = {a.key: (a.value.string_value or a.value.int_value) for a in server.attributes}
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.service"] == "csi.v1.Controller" and attrs["rpc.method"] == "CreateVolume"
    assert attrs["rpc.grpc.status_code"] == 0
    publishes = [s for _, s in spans if s.name == "vp.ev.volume publish"]
    assert len(publishes) == 2  # intent and result


@needs_root
def test_create_attach_stage_publish_is_one_connected_trace_down_to_the_mount(traced: Stack, receiver: tuple[Receiver, int], tmp_path: Path) -> None:
    trace_id, root, metadata = _parent()
    c = Csi(traced.csi_endpoint)
    staging, target = tmp_path / "staging", tmp_path / "target"
    staging.mkdir()
    cap = mount_cap()
    try:
        vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"t-{uuid.uuid4().hex}", volume_capabilities=[cap]), metadata=metadata, timeout=TIMEOUT).volume
        pub = csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=traced.node_id, volume_capability=cap)
        ctx = c.controller.ControllerPublishVolume(pub, metadata=metadata, timeout=TIMEOUT).publish_context
        c.node.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), volume_capability=cap, publish_context=ctx), metadata=metadata, timeout=TIMEOUT)
        c.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging), target_path=str(target), volume_capability=cap),
            metadata=metadata, timeout=TIMEOUT,
        )
        spans = _wait_for(
            receiver[0], trace_id, {"volplane-apigw", "volplane-provisioner", "volplane-attacher", "volplane-nodeagent"},
            {"csi.v1.Node/NodeStageVolume", "csi.v1.Node/NodePublishVolume", "vp.ev.node publish", "syscall loop-attach", "exec mkfs.ext4", "syscall mount"},
        )
        _connected(spans, root)
    finally:
        c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target)), timeout=TIMEOUT)
        c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)), timeout=TIMEOUT)
        c.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=traced.node_id), timeout=TIMEOUT)
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
        c.close()


def _attributes(s: trace_pb2.Span) -> dict[str, Any]:
    return {a.key: (a.value.string_value or a.value.int_value) for a in s.attributes}


def _apply(stub: Any, obj: dict[str, Any], metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    reply = stub.Apply(pb.ApplyRequest(json=json.dumps(obj).encode(), field_manager="test"), metadata=metadata, timeout=TIMEOUT)
    return dict(json.loads(reply.json))


def test_a_watch_of_the_resource_api_is_a_server_span_in_the_callers_trace(traced: Stack, receiver: tuple[Receiver, int]) -> None:
    trace_id, root, metadata = _parent()
    name = f"watched-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(traced.api_endpoint) as channel:
        stub = resources_pb2_grpc.ResourcesStub(channel)
        _apply(stub, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name}, "provisioner": "csi.volplane.io"})
        # A short deadline ends the stream on the server's side, and the span with it.
        stream = stub.Watch(pb.WatchRequest(kind="StorageClass", name=name), metadata=metadata, timeout=3)
        first = next(stream)
        assert first.type == "ADDED" and json.loads(first.object.json)["metadata"]["name"] == name
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    spans = _wait_for(receiver[0], trace_id, {"volplane-apigw"}, {"volplane.v1.Resources/Watch"})
    _connected(spans, root)
    watch = next(s for _, s in spans if s.name == "volplane.v1.Resources/Watch")
    assert watch.kind == trace_pb2.Span.SPAN_KIND_SERVER
    attrs = _attributes(watch)
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.service"] == "volplane.v1.Resources" and attrs["rpc.method"] == "Watch"


@needs_root
def test_a_claim_applied_is_one_trace_through_the_control_loops_to_create_volume_and_the_pods_mount(traced: Stack, receiver: tuple[Receiver, int]) -> None:
    """The claim's Apply carries a caller's trace context; the PV controller and the
    external provisioner wake in it (through the event's headers), the provisioner's
    CreateVolume goes out through csiclient in it, and so on down to the mount."""
    trace_id, root, metadata = _parent()
    cls, claim, app = f"traced-{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:8]}", f"app-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(traced.api_endpoint) as channel:
        stub = resources_pb2_grpc.ResourcesStub(channel)
        _apply(stub, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": cls}, "provisioner": "csi.volplane.io"})
        spec = {"containers": [{"name": "c", "image": "busybox"}], "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]}
        # The pod first, outside the trace: it waits for its claim, whose binding wakes it.
        _apply(stub, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": app}, "spec": spec})
        _apply(stub, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                      "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": cls}}, metadata)
        try:
            _wait_for(
                receiver[0], trace_id, {"volplane-apigw", "volplane-provisioner"},
                {"volplane.v1.Resources/Apply", "pv-controller-claims sync", "external-provisioner-claims sync", "csi.v1.Controller/CreateVolume",
                 "vp.cmd.provisioner.create_volume process"},
            )
            # A client span (the external provisioner, through csiclient) and apigw's server span under it.
            # Each service exports in its own batches, on its own schedule: either may arrive first.
            def create(svc: str, kind: int) -> list[trace_pb2.Span]:
                return [x for v, x in receiver[0].trace(trace_id) if x.name == "csi.v1.Controller/CreateVolume" and v == svc and x.kind == kind]

            def pair() -> tuple[trace_pb2.Span, trace_pb2.Span] | None:
                clients = {c.span_id: c for c in create("volplane-provisioner", trace_pb2.Span.SPAN_KIND_CLIENT)}
                return next(((clients[s.parent_span_id], s) for s in create("volplane-apigw", trace_pb2.Span.SPAN_KIND_SERVER)
                             if s.parent_span_id in clients), None)

            _until(lambda: pair() is not None, "the provisioner's CreateVolume client span and apigw's server span under it", timeout=20)
            found = pair()
            assert found is not None
            client, _server = found
            assert _attributes(client)["rpc.method"] == "CreateVolume" and _attributes(client)["rpc.grpc.status_code"] == 0
            _wait_for(
                receiver[0], trace_id, {"volplane-apigw", "volplane-provisioner", "volplane-attacher", "volplane-nodeagent"},
                {"csi.v1.Controller/ControllerPublishVolume", "csi.v1.Node/NodeStageVolume", "csi.v1.Node/NodePublishVolume", "syscall mount"},
            )
            # A sync's span ends after the calls it made: wait for the enclosing spans too.
            _until(lambda: _orphans(receiver[0].trace(trace_id), root) == [], "every span's parent in the trace", timeout=20)
        finally:
            # Back, waiting for each step, so that nothing stays mounted after the stack stops.
            stub.Delete(pb.ObjectRef(kind="Pod", namespace="default", name=app), timeout=TIMEOUT)
            _until(lambda: _gone(stub, "Pod", app) and not _mounts_below(traced.run_dir / "kubelet"), "the pod gone and unmounted")
            stub.Delete(pb.ObjectRef(kind="PersistentVolumeClaim", namespace="default", name=claim), timeout=TIMEOUT)
            _until(lambda: not [pv for pv in _list(stub, "PersistentVolume") if (pv["spec"].get("claimRef") or {}).get("name") == claim], "the claim's volume deleted")


def _until(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _gone(stub: Any, kind: str, name: str) -> bool:
    try:
        stub.Get(pb.ObjectRef(kind=kind, namespace="default", name=name), timeout=TIMEOUT)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return True
        raise
    return False


def _list(stub: Any, kind: str) -> list[dict[str, Any]]:
    return [json.loads(o.json) for o in stub.List(pb.ListRequest(kind=kind, all_namespaces=True), timeout=TIMEOUT).items]


def _mounts_below(root: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if line.split()[1].startswith(str(root))]


def test_a_missing_collector_is_logged_once_and_changes_nothing_else(tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "VOLPLANE_POOL_CAPACITY": "8Gi",
        "VOLPLANE_SHARED_POOL_CAPACITY": "8Gi",
    }
    s = Stack(tmp_path / "run", env=env)
    s.start()
    try:
        c = Csi(s.csi_endpoint)
        try:
            for _ in range(4):  # several batches, each failing to export
                vol = c.controller.CreateVolume(csi.CreateVolumeRequest(name=f"t-{uuid.uuid4().hex}", volume_capabilities=[mount_cap()]), timeout=TIMEOUT).volume
                c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
                time.sleep(1.5)
        finally:
            c.close()
        log = (s.run_dir / "logs" / "apigw.log").read_text()
        deadline = time.monotonic() + 10
        while "cannot export traces" not in log and time.monotonic() < deadline:
            time.sleep(0.2)
            log = (s.run_dir / "logs" / "apigw.log").read_text()
    finally:
        s.stop()
    for name in ("apigw", "provisioner"):
        lines = (s.run_dir / "logs" / f"{name}.log").read_text().splitlines()
        failures = [line for line in lines if "export" in line.lower() and "trac" in line.lower() and "tracing to" not in line]
        assert len(failures) == 1, f"{name}: {failures}"
        assert "cannot export traces to http://127.0.0.1:" in failures[0] and '"level": "warning"' in failures[0]


def _scrape(addr: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_operations_by_result_and_report_pools_and_projection_lag(stack: Stack, client: Csi) -> None:
    prov, apigw = stack.metrics["provisioner"], stack.metrics["apigw"]
    ok = 'volplane_operations_seconds_count{operation="create_volume",result="ok",service="provisioner"}'
    bad = 'volplane_operations_seconds_count{operation="CreateVolume",result="ALREADY_EXISTS",service="apigw"}'
    before_ok, before_bad = _scrape(prov).get(ok, 0.0), _scrape(apigw).get(bad, 0.0)
    name = f"m-{uuid.uuid4().hex}"
    vol = client.controller.CreateVolume(csi.CreateVolumeRequest(name=name, volume_capabilities=[mount_cap()]), timeout=TIMEOUT).volume
    try:
        with pytest.raises(grpc.RpcError):
            client.controller.CreateVolume(
                csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=8 * 2**30), volume_capabilities=[mount_cap()]), timeout=TIMEOUT
            )
        assert _scrape(prov)[ok] == before_ok + 1
        assert _scrape(apigw)[bad] == before_bad + 1
        deadline = time.monotonic() + 10
        while True:  # Gauges are sampled every two seconds.
            samples = _scrape(prov)
            volumes = samples.get('volplane_pool_volumes{pool="shared"}', 0)
            if volumes >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert volumes >= 1
        assert samples['volplane_pool_bytes{kind="capacity",pool="shared"}'] == 64 * 2**30
        assert samples['volplane_projection_lag_events{projection="volumes",service="provisioner"}'] == 0
    finally:
        client.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)

