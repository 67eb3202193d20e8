"""One error tree for the whole system.

Services raise these; they travel over NATS by class name (see `volplane.bus`), and
apigw maps them to gRPC status codes in exactly one table (`services.apigw.errors`).
Infrastructure failures are translated where they happen, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "GRPC_CODES",
    "Aborted",
    "AlreadyExists",
    "ConcurrencyConflict",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OperationPending",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "VolplaneError",
    "error_from_grpc",
    "error_from_wire",
]


class VolplaneError(Exception):
    """Base of every error volplane raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(VolplaneError):
    """The request is malformed: a field is missing, too long or not allowed."""


class NotFound(VolplaneError):
    """The object the request names does not exist."""


class AlreadyExists(VolplaneError):
    """An object of that name exists with an incompatible shape."""


class OutOfRange(VolplaneError):
    """A size or range cannot be satisfied by this driver."""


class ResourceExhausted(VolplaneError):
    """The pool (or another resource) has no room left for the request."""


class FailedPrecondition(VolplaneError):
    """The object is in a state that forbids the operation."""


class Aborted(VolplaneError):
    """The request cannot go on now (a foreign paging token, a lost race); retry."""


class OperationPending(Aborted):
    """Another operation on the same object is in flight; the caller should retry."""


class ConcurrencyConflict(VolplaneError):
    """An append lost an optimistic-concurrency race; the caller reloads and retries."""


class PermissionDenied(VolplaneError):
    """The caller's identity may not do this (a node writing another node's object, a
    read-only user applying); asking again will not help."""


class Unavailable(VolplaneError):
    """A dependency (NATS, Redis, a service) did not answer."""


class Internal(VolplaneError):
    """A fault of ours or of the host; never used for bad input."""


_BY_NAME: dict[str, type[VolplaneError]] = {
    cls.__name__: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        OutOfRange,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OperationPending,
        ConcurrencyConflict,
        PermissionDenied,
        Unavailable,
        Internal,
    )
}


# The one table between volplane's errors and gRPC status code names: apigw answers with
# it, the CSI client (volplane.csiclient) reads a driver's answers back with it.
GRPC_CODES: dict[type[VolplaneError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    OutOfRange: "OUT_OF_RANGE",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    FailedPrecondition: "FAILED_PRECONDITION",
    Aborted: "ABORTED",
    OperationPending: "ABORTED",
    ConcurrencyConflict: "ABORTED",
    PermissionDenied: "PERMISSION_DENIED",
    Unavailable: "UNAVAILABLE",
    Internal: "INTERNAL",
}
_BY_CODE: dict[str, type[VolplaneError]] = {}
for _cls, _code in GRPC_CODES.items():
    _BY_CODE.setdefault(_code, _cls)
_BY_CODE.update({"DEADLINE_EXCEEDED": Unavailable, "CANCELLED": Unavailable, "UNIMPLEMENTED": FailedPrecondition})


def error_from_grpc(code: str, message: str) -> VolplaneError:
    """A driver's gRPC status as our error: ``error_from_grpc("NOT_FOUND", "...")``."""
    return _BY_CODE.get(code, Internal)(message)


def error_from_wire(kind: str, message: str) -> VolplaneError:
    """Rebuild an error sent by another service: ``error_from_wire("NotFound", "...")``."""
    return _BY_NAME.get(kind, Internal)(message)
