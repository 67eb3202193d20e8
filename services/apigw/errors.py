"""The one table from volplane's errors to gRPC status codes.

    async with grpc_errors(context):
        ...                        # a VolplaneError becomes context.abort(code, message)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from volplane import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.VolplaneError], grpc.StatusCode] = {cls: grpc.StatusCode[code] for cls, code in errors.GRPC_CODES.items()}


def status_of(exc: errors.VolplaneError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


@asynccontextmanager
async def grpc_errors(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except errors.VolplaneError as exc:
        await context.abort(status_of(exc), exc.message)
