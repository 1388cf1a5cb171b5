"""Exceptions raised by the SDK, one class per gRPC status code.

Every failure of a call is a :class:`HeraldError` (or a subclass) that keeps the
server's status code and message::

    try:
        client.publish("room::bad", "hi")
    except herald.InvalidArgument as e:
        print(e.code, e.message)  # StatusCode.INVALID_ARGUMENT, 'topic "room::bad": ...'
"""

from __future__ import annotations

import grpc


class HeraldError(Exception):
    """Base class of every error the SDK raises for a failed call or message."""

    #: The status code this class stands for (the instance's :attr:`code` may be more precise).
    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        self.code: grpc.StatusCode = code if code is not None else type(self).status_code
        self.message: str = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)


class Cancelled(HeraldError):
    status_code = grpc.StatusCode.CANCELLED


class Unknown(HeraldError):
    status_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(HeraldError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(HeraldError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(HeraldError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(HeraldError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(HeraldError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(HeraldError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(HeraldError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(HeraldError):
    status_code = grpc.StatusCode.ABORTED


class OutOfRange(HeraldError):
    status_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(HeraldError):
    status_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(HeraldError):
    status_code = grpc.StatusCode.INTERNAL


class Unavailable(HeraldError):
    status_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(HeraldError):
    status_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(HeraldError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[HeraldError]] = {
    cls.status_code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}

_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_for_code(code: grpc.StatusCode, message: str) -> HeraldError:
    """The exception for a status code and message."""
    return _BY_CODE.get(code, HeraldError)(message, code)


def error_for_number(number: int, message: str) -> HeraldError:
    """The exception for a numeric status code, as carried by ``herald.v1.Error``."""
    code = _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
    return error_for_code(code, message)


def from_rpc_error(err: grpc.RpcError) -> HeraldError:
    """Translate a grpc (sync or asyncio) error into a :class:`HeraldError`."""
    try:
        code = err.code()
        details = err.details()
    except AttributeError:  # a bare RpcError that is not a Call
        return Unknown(str(err))
    return error_for_code(code if code is not None else grpc.StatusCode.UNKNOWN, details or "")
