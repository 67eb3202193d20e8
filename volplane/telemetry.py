"""Traces and metrics, set up once per process and used through a few helpers.

    setup_telemetry("provisioner")              # OTLP traces only if an OTEL_* endpoint is set
    with span("vp.cmd.provisioner process", kind=SpanKind.CONSUMER, attributes={...}): ...
    headers = inject({})                        # trace context into NATS headers
    ctx = extract(msg.headers)                  # and out again on the other side
    OPERATIONS.labels(service, "create_volume", "ok").observe(seconds)

Tracing is configured only by the standard OTEL_* variables (endpoint, headers, service
name, sampler, batch delays) and is off unless an OTLP endpoint is set; then every
process exports its spans over OTLP/gRPC and the W3C trace context rides on gRPC
metadata, NATS command headers and event headers, so one CSI call is one trace across
apigw, provisioner, attacher and nodeagent. Metrics are Prometheus text on
``/metrics`` at ``VOLPLANE_METRICS_ADDR`` (host:port; unset: no endpoint).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = ["INFLIGHT", "OPERATIONS", "SpanKind", "extract", "gauge", "inject", "setup_telemetry", "span", "tracer"]

log = logging.getLogger(__name__)

OPERATIONS = Histogram(
    "volplane_operations_seconds",
    "Duration of operations by service, operation and result (like csi_sidecar_operations_seconds).",
    ["service", "operation", "result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INFLIGHT = Gauge("volplane_inflight_operations", "Operations being handled right now.", ["service"])
_GAUGES: dict[str, Gauge] = {}
_COUNTERS: dict[str, Counter] = {}


def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
    """One process-wide gauge per name: ``gauge("volplane_pool_bytes", "...", ("pool", "kind"))``."""
    if name not in _GAUGES:
        _GAUGES[name] = Gauge(name, doc, list(labels))
    return _GAUGES[name]


def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
    """One process-wide counter per name, like ``gauge``."""
    if name not in _COUNTERS:
        _COUNTERS[name] = Counter(name, doc, list(labels))
    return _COUNTERS[name]


def tracer() -> trace.Tracer:
    return trace.get_tracer("volplane")


def setup_telemetry(service: str, node: str | None = None) -> None:
    """Configure tracing (if an OTLP endpoint is set) and the /metrics endpoint (if asked)."""
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes: dict[str, Any] = {"service.name": os.environ.get("OTEL_SERVICE_NAME") or f"volplane-{service}"}
        if node:
            attributes["host.name"] = node
        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the exporter reads the
        # endpoint, headers, timeout and TLS settings from OTEL_EXPORTER_OTLP_*.
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        log.info("tracing to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    addr = os.environ.get("VOLPLANE_METRICS_ADDR", "")
    if addr:
        host, _, port = addr.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1")
        log.info("metrics on http://%s/metrics", addr)


def shutdown_telemetry() -> None:
    """Flush spans still buffered (the batch processor exports on a timer)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (W3C traceparent) to ``headers`` and return them."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None, parent: otel_context.Context | None = None) -> Iterator[trace.Span]:
    """A span that records an exception as an error status and re-raises it."""
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False) as s:
        try:
            yield s
        except BaseException as exc:
            s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:256]))
            raise
