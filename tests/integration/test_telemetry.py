"""One trace per operation across the services, exported over real OTLP/gRPC to a
receiver in the test; Prometheus metrics that move when operations happen."""

from __future__ import annotations

import secrets
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from devstack.embedded import free_port
from devstack.launcher import Stack
from tests.conftest import Csi, mount_cap, needs_root
from volplane.csi import csi_pb2 as csi

TIMEOUT = 60


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span with its service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    self.spans.extend((service, s) for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[tuple[str, object]]:
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


def _wait_for(receiver: Receiver, trace_id: bytes, services: set[str], names: set[str]) -> list[tuple[str, object]]:
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


def _connected(spans: list[tuple[str, object]], root: bytes) -> None:
    """Every span hangs off the caller's span or another span of the same trace."""
    ids = {s.span_id for _, s in spans} | {root}
    orphans = [s.name for _, s in spans if s.parent_span_id not in ids]
    assert orphans == [], f"spans without a parent in the trace: {orphans}"


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
            {"csi.v1.Node/NodeStageVolume", "csi.v1.Node/NodePublishVolume", "vp.ev.node publish", "exec losetup", "exec mount"},
        )
        _connected(spans, root)
    finally:
        c.node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target)), timeout=TIMEOUT)
        c.node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=str(staging)), timeout=TIMEOUT)
        c.controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=traced.node_id), timeout=TIMEOUT)
        c.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=TIMEOUT)
        c.close()


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

