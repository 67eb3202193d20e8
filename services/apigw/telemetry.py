"""One server span and one duration sample per CSI call.

The span continues the caller's trace when its gRPC metadata carries a W3C
``traceparent`` (so a CO or a test can tie several calls into one trace), and is named
and attributed per the OpenTelemetry RPC conventions: ``csi.v1.Node/NodeStageVolume``,
``rpc.system=grpc``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from volplane.telemetry import OPERATIONS, SpanKind, extract, span


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method_path = details.method.lstrip("/")
        service, _, method = method_path.partition("/")
        inner = handler.unary_unary

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            with span(method_path, kind=SpanKind.SERVER, parent=extract(metadata), attributes=attributes) as s:
                try:
                    return await inner(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    s.set_attribute("rpc.grpc.status_code", code.value[0])
                    OPERATIONS.labels("apigw", method, code.name).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            traced, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
