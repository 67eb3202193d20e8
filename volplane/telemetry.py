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
apigw, provisioner, attacher and nodeagent. A stored event keeps its trace context
(``carried``), and a control loop woken by it syncs in that trace (``continued``,
``traced_context``: volplane.resources.informer and .controller), so a claim's apply, the
CreateVolume it causes and its pod's mount are one trace too. Metrics are Prometheus text on
``/metrics`` at ``VOLPLANE_METRICS_ADDR`` (host:port; unset: no endpoint).

gRPC is traced by opentelemetry-instrumentation-grpc, on both sides and for streams too
(the resource API's Watch), through the interceptors built here::

    server = grpc.aio.server(interceptors=grpc_server_interceptors())
    channel = grpc.aio.insecure_channel(target, interceptors=grpc_client_interceptors())

Their spans are named as the RPC conventions say (``csi.v1.Node/NodeStageVolume``, without
the instrumentation's leading slash). A collector that is down or missing does not stop
anything: the first failed export is logged once, with the reason, and the next success
once more; the exporter's own per-batch messages are kept out of the logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "INFLIGHT", "OPERATIONS", "SpanKind", "carried", "continued", "extract", "gauge", "grpc_client_interceptors", "grpc_server_interceptors",
    "hot_span", "inject", "setup_telemetry", "span", "traced_context", "tracer",
]

log = logging.getLogger(__name__)

# The scope opentelemetry-instrumentation-grpc names its tracer after.
_GRPC_SCOPE = "opentelemetry.instrumentation.grpc"
# The OTLP exporter logs every failed batch (and every retry) here; _ReportOnce speaks instead.
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
# The batch processor's "Queue full, dropping spans": while the collector is away, a
# consequence of the failure already reported.
_BATCH_LOGGER = "opentelemetry.sdk._shared_internal"
# Set by setup_telemetry when spans go somewhere: without it, gRPC calls are not intercepted
# at all (nothing would be recorded or propagated, and every call would pay for it).
_TRACING: list[str] = []

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
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(_RpcSpanNames())
        provider.add_span_processor(BatchSpanProcessor(_ReportOnce(OTLPSpanExporter(), endpoint)))
        trace.set_tracer_provider(provider)
        _TRACING.append(endpoint)
        log.info("tracing to %s", endpoint)
    addr = os.environ.get("VOLPLANE_METRICS_ADDR", "")
    if addr:
        host, _, port = addr.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1")
        log.info("metrics on http://%s/metrics", addr)


def shutdown_telemetry() -> None:
    """Flush spans still buffered (the batch processor exports on a timer) — unless the
    collector is already known to be away: a stop does not wait out the export timeout."""
    for exporter in _EXPORTERS:
        exporter.stop()
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (W3C traceparent) to ``headers`` and return them."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))


def carried(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """The trace-context fields among a message's ``headers``, to keep with what it carried."""
    if not headers:
        return ()
    fields = propagate.get_global_textmap().fields
    return tuple((k, v) for k, v in headers.items() if k in fields)


@contextmanager
def continued(fields: Iterable[tuple[str, str]]) -> Iterator[None]:
    """Make the trace context in ``fields`` (``carried``) current for the block; no fields,
    no change: ``with continued(record.trace): queue.add(key)``."""
    fields = tuple(fields)
    if not fields:
        yield
        return
    token = otel_context.attach(extract(fields))
    try:
        yield
    finally:
        otel_context.detach(token)


def traced_context() -> otel_context.Context | None:
    """The current context if it belongs to a trace (a span, local or from a message), else None."""
    current = otel_context.get_current()
    return current if trace.get_current_span(current).get_span_context().is_valid else None


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None, parent: otel_context.Context | None = None) -> Iterator[trace.Span]:
    """A span that records an exception as an error status and re-raises it."""
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False) as s:
        try:
            yield s
        except BaseException as exc:
            s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:256]))
            raise


# What ``hot_span`` gives while tracing is off: one shared, reusable no-op.
_NO_SPAN: AbstractContextManager[trace.Span] = nullcontext(trace.INVALID_SPAN)


def hot_span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None,
             parent: otel_context.Context | None = None) -> AbstractContextManager[trace.Span]:
    """``span`` for the hot paths (every bus request, every append): while tracing is off, a
    shared no-op instead of a non-recording span made, made current and detached again —
    nothing is recorded or propagated either way (docs/performance.md, "Controller operations")."""
    if not _TRACING:
        return _NO_SPAN
    return span(name, kind=kind, attributes=attributes, parent=parent)


def grpc_server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """A server span per call, unary or streaming, continuing the caller's W3C trace
    context; grpc.health.v1 is left out (probes every few seconds would each start a trace).
    None while tracing is off."""
    if not _TRACING:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    no_health = filters.negate(filters.service_name("grpc.health.v1.Health"))
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(filter_=no_health)  # type: ignore[no-untyped-call]  # the instrumentation is unannotated
    return [interceptor]


def grpc_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """A client span per call (unary and streaming) that sends the trace context along;
    none while tracing is off."""
    if not _TRACING:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors()  # type: ignore[no-untyped-call]  # the instrumentation is unannotated
    return interceptors


class _RpcSpanNames(SpanProcessor):
    """Names gRPC spans ``csi.v1.Controller/CreateVolume`` as the RPC conventions (and
    this project's dashboards) have them: the instrumentation keeps the path's leading slash."""

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        scope = span.instrumentation_scope
        if scope is not None and scope.name == _GRPC_SCOPE and span.name.startswith("/"):
            span.update_name(span.name[1:])

    def on_end(self, span: ReadableSpan) -> None:
        pass


_EXPORTERS: list[_ReportOnce] = []


class _ReportOnce(SpanExporter, logging.Filter):
    """The OTLP exporter, reporting an unreachable collector once (with the exporter's
    reason) rather than once per batch, and its return once. Spans of a failed batch
    are dropped, as the batch processor does anyway: tracing never holds a service up."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        logging.Filter.__init__(self)
        self._inner = inner
        self._endpoint = endpoint
        self._failing = False
        self._reason = ""
        self._stopping = False
        self._closed = False
        _EXPORTERS.append(self)
        logging.getLogger(_EXPORTER_LOGGER).addFilter(self)
        logging.getLogger(_BATCH_LOGGER).addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the exporter's per-batch lines out of the logs, remembering the last reason."""
        if record.name == _EXPORTER_LOGGER:
            if record.levelno >= logging.WARNING:
                self._reason = record.getMessage()
            return False
        return not (self._failing and "dropping" in record.getMessage())

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._failing and self._stopping:
            return SpanExportResult.FAILURE
        result = self._inner.export(spans)
        if result is SpanExportResult.FAILURE and not self._failing:
            self._failing = True
            log.warning("cannot export traces to %s (%s); going on without them, and not logging this again until it works", self._endpoint, self._reason or "no reason given")
        elif result is SpanExportResult.SUCCESS and self._failing:
            self._failing = False
            log.info("exporting traces to %s again", self._endpoint)
        return result

    def stop(self) -> None:
        """The process is stopping: if the collector is away, give up on it now — this
        also ends an export waiting between its retries — rather than at its timeout."""
        self._stopping = True
        if self._failing:
            self.shutdown()

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
