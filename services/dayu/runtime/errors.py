"""Errors raised by the cores, each naming the gRPC status it maps to.

Cores know nothing of gRPC: they raise these, and the server adapter turns `status` into the
matching `grpc.StatusCode` and `str(error)` into the status details.
"""

from __future__ import annotations

import pydantic


class RemoteError(Exception):
    """A call to another component failed. `code` names its status (UNAVAILABLE, NOT_FOUND, ...), so
    that a core judges failures without knowing the transport (the adapters translate gRPC's)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class DayuError(Exception):
    """Base of the errors a core reports to its caller."""

    status = "INTERNAL"


class InvalidArgument(DayuError):
    """A request field is wrong; the message names the field and what was expected."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: {expected}")
        self.field = field
        self.expected = expected


class NotFound(DayuError):
    status = "NOT_FOUND"


class AlreadyExists(DayuError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(DayuError):
    status = "FAILED_PRECONDITION"


class ResourceExhausted(DayuError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(DayuError):
    status = "UNAVAILABLE"


class Unimplemented(DayuError):
    status = "UNIMPLEMENTED"


def from_validation_error(error: pydantic.ValidationError, prefix: str = "") -> InvalidArgument:
    """The first problem pydantic found, as an InvalidArgument naming the dotted field path."""
    first = error.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    field = ".".join(part for part in (prefix, path) if part) or "request"
    return InvalidArgument(field, first["msg"])
