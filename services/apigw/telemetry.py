"""One duration sample per CSI call, by method and status code, beside the call's span.

    server = grpc.aio.server(interceptors=[*grpc_server_interceptors(), MetricsInterceptor()])

The span itself comes from opentelemetry-instrumentation-grpc (``volplane.telemetry``),
which continues the caller's W3C ``traceparent`` and follows the RPC conventions:
``csi.v1.Node/NodeStageVolume``, ``rpc.system=grpc``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``. It learns a status from ``context.abort`` (every handler's error
path, ``services.apigw.errors``); a handler that crashes instead aborts nothing, so this
interceptor, running inside that span, records the code gRPC answers with (UNKNOWN).
Streams (the resource API's Watch) are timed by their span alone: how long a watch stays
open says nothing about how fast an operation is.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from volplane.telemetry import OPERATIONS

__all__ = ["MetricsInterceptor"]


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once and keeps the wrapper: a call of a method seen before
    costs a dictionary lookup here, not a handler lookup and a new wrapper (the methods are
    the services' fixed set; an unknown one is not kept)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._observers: dict[tuple[str, str], Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary is None:
            self._wrapped[details.method] = handler
            return handler
        method = details.method.rpartition("/")[2]
        inner = handler.unary_unary
        observers = self._observers

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await inner(request, context)
            except BaseException as exc:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if not isinstance(exc, grpc.aio.AbortError):
                    # Not aborted: the instrumentation saw no status; gRPC answers UNKNOWN.
                    current = trace.get_current_span()
                    current.set_attribute("rpc.grpc.status_code", code.value[0])
                    current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:256]))
                raise
            finally:
                observer = observers.get((method, code.name))
                if observer is None:
                    observer = observers[method, code.name] = OPERATIONS.labels("apigw", method, code.name)
                observer.observe(time.perf_counter() - started)

        wrapped = grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
        self._wrapped[details.method] = wrapped
        return wrapped
