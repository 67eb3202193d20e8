"""A stand-in for Jaeger v2 in tests/deploy/test_image_compose.py (no registry to pull it from):
an OTLP/gRPC trace receiver on :4317 that prints, per export, which service sent how many
spans, and Jaeger's health endpoint on :13133/status for the compose health check.

    python otlp_sink.py            # in the volplane image, which has grpcio and the OTLP protos
    # stdout: "spans volplane-apigw 3"
"""

from __future__ import annotations

import http.server
import signal
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "?")
            print(f"spans {service} {sum(len(ss.spans) for ss in rs.scope_spans)}", flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/status" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # the health check polls: keep stdout for spans
        pass


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    threading.Thread(target=http.server.ThreadingHTTPServer(("0.0.0.0", 13133), Health).serve_forever, daemon=True).start()
    # PID 1 in its container: SIGTERM (compose down) does nothing unless handled.
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    print("otlp sink on :4317, health on :13133/status", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
